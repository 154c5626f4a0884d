"""`erlang.run`: `asyncio.run` on a new `ErlangEventLoop`."""
from __future__ import annotations

import asyncio
from typing import Any, Coroutine, Optional, TypeVar

from ._loop import new_event_loop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], *, debug: Optional[bool] = None) -> T:
    """Runs a coroutine to completion on a new `ErlangEventLoop` and closes it.

    As `asyncio.run`, it cannot be called while an event loop runs in this thread. A sync
    `py:call` on a loop thread runs outside that thread's own (always running) asyncio
    loop, so `erlang.run` works there too: it blocks that loop thread until the coroutine
    is done, on a fresh loop with its own event process.
    """
    if asyncio.events._get_running_loop() is not None:
        raise RuntimeError("erlang.run() cannot be called from a running event loop")
    runner_cls = getattr(asyncio, "Runner", None)
    if runner_cls is not None:
        with runner_cls(debug=debug, loop_factory=new_event_loop) as runner:
            return runner.run(main)
    return _run_without_runner(main, debug)


def _run_without_runner(main: Coroutine[Any, Any, T], debug: Optional[bool]) -> T:
    # Python 3.10 has no asyncio.Runner: the same steps as asyncio.run.
    if not asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    loop = new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)
    finally:
        try:
            asyncio.runners._cancel_all_tasks(loop)  # type: ignore[attr-defined]
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
