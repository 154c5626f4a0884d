"""Exceptions raised when Python calls into Erlang."""
from __future__ import annotations

from typing import Any


class Error(Exception):
    """An Erlang function called from Python failed, or did not answer in time.

    `reason` is the Erlang reason, converted to Python: `('error', 'badarith')` for an
    exception of class `error`, `'timeout'` when the call timed out,
    `('unknown_function', 'name')` when nothing is registered under that name.
    """

    def __init__(self, reason: Any) -> None:
        super().__init__(reason)
        self.reason = reason


class ProcessError(Error):
    """`erlang.send` to a process that is not alive, or not on this node."""

    def __init__(self, reason: Any, pid: Any = None) -> None:
        super().__init__(reason)
        self.pid = pid


# Raised to Python code as erlang.Error and erlang.ProcessError.
Error.__module__ = "erlang"
ProcessError.__module__ = "erlang"
