"""The `erlang` package: Python's view of the BEAM that embeds it.

Importable only inside an interpreter embedded by pybeam (it needs the native `_pybeam`).
Erlang functions registered with `py:register_function/2` are attributes of this module:
`from erlang import my_func`.
"""
from typing import Any

from _pybeam import Atom, CallTimeout, Pid, Ref

from ._callbacks import async_call, call, send
from ._errors import Error, ProcessError
from ._loop import ErlangEventLoop, EventLoopPolicy, new_event_loop
from ._run import run

__all__ = [
    "Atom",
    "CallTimeout",
    "ErlangEventLoop",
    "Error",
    "EventLoopPolicy",
    "Pid",
    "ProcessError",
    "Ref",
    "async_call",
    "call",
    "new_event_loop",
    "run",
    "send",
]


def __getattr__(name: str) -> Any:
    from ._callbacks import function

    return function(name)
