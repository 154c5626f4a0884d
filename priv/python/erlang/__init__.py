"""The `erlang` package: Python's view of the BEAM that embeds it.

Importable only inside an interpreter embedded by pybeam (it needs the native `_pybeam`).
"""

from _pybeam import Atom, CallTimeout, Pid, Ref

__all__ = ["Atom", "CallTimeout", "Pid", "Ref"]
