"""The `erlang` package: Python's view of the BEAM that embeds it.

Importable only inside an interpreter embedded by pybeam (it needs the native `_pybeam`).
"""

from _pybeam import Atom, CallTimeout, Pid, Ref

from ._loop import ErlangEventLoop, EventLoopPolicy, new_event_loop
from ._run import run

__all__ = [
    "Atom",
    "CallTimeout",
    "ErlangEventLoop",
    "EventLoopPolicy",
    "Pid",
    "Ref",
    "new_event_loop",
    "run",
]
