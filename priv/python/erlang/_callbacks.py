"""Calling Erlang from Python: functions registered with `py:register_function/2`."""
from __future__ import annotations

import asyncio
import functools
from typing import Any, Optional

import _pybeam


def call(name: str, *args: Any, timeout: Optional[float] = None) -> Any:
    """Runs the Erlang function registered as `name` with `args`, and returns its value.

    The function runs in an Erlang worker process, one call at a time (workers are
    reused from call to call), never on this thread. This thread waits without the GIL;
    on a pybeam loop thread, the loop keeps serving its sync requests meanwhile, so the
    function may call back into Python. Raises `erlang.Error` if the function fails or
    does not answer within `timeout` seconds (default 30).
    """
    return _pybeam.call(name, args, timeout)


async def async_call(name: str, *args: Any, timeout: Optional[float] = None) -> Any:
    """As `call`, from a coroutine: the loop goes on running other work meanwhile."""
    loop = asyncio.get_running_loop()
    erlang_call = getattr(loop, "_erlang_call", None)
    if erlang_call is not None:
        return await erlang_call(name, args, timeout)
    # Another kind of loop: wait in an executor thread instead.
    return await loop.run_in_executor(None, functools.partial(_pybeam.call, name, args, timeout))


def send(pid: _pybeam.Pid, term: Any) -> None:
    """Sends `term` to the Erlang process `pid` (as `erlang:send/2`).

    Raises `erlang.ProcessError` if `pid` is not alive or not on this node.
    """
    _pybeam.send(pid, term)


class Function:
    """A registered Erlang function, as `from erlang import name` gives it."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, timeout: Optional[float] = None) -> Any:
        return _pybeam.call(self.name, args, timeout)

    def __repr__(self) -> str:
        return f"<erlang function {self.name}>"


def function(name: str) -> Function:
    """The registered Erlang function `name`; AttributeError if there is none."""
    if name.startswith("_") or not _pybeam.is_registered(name):
        raise AttributeError(f"module 'erlang' has no attribute {name!r} "
                             f"(no Erlang function is registered under that name)")
    return Function(name)
