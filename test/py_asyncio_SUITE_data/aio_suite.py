"""How py_asyncio_SUITE runs its scenarios on `ErlangEventLoop`.

A scenario is a coroutine function in one of the `aio_*` modules. `run` runs it with
`erlang.run` on the calling thread (a pybeam loop thread, inside a `py:call`); `in_thread`
runs it on a loop that a new `threading.Thread` makes and closes itself.
"""
from __future__ import annotations

import asyncio
import importlib
import threading
from typing import Any, Callable, Coroutine

import erlang

Scenario = Callable[..., Coroutine[Any, Any, Any]]


def _scenario(module: str, name: str) -> Scenario:
    return getattr(importlib.import_module(module), name)


def run(module: str, name: str, *args: Any) -> Any:
    return erlang.run(_scenario(module, name)(*args))


def in_thread(module: str, name: str, *args: Any) -> Any:
    scenario = _scenario(module, name)

    def run_own_loop() -> Any:
        loop = erlang.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            return loop.run_until_complete(scenario(*args))
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    return _in_new_thread(run_own_loop, f"asuite-{name}")


def on_default_loop(module: str, name: str, *args: Any) -> Any:
    """The same scenario on asyncio's own selector loop (epoll), in a new thread: what
    ErlangEventLoop's results are compared with."""
    scenario = _scenario(module, name)

    def run_selector() -> Any:
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            return runner.run(scenario(*args))

    return _in_new_thread(run_selector, f"asuite-default-{name}")


def call_in_thread(module: str, name: str, *args: Any) -> Any:
    """A plain function (not a coroutine) called in a new thread."""
    fn = getattr(importlib.import_module(module), name)
    return _in_new_thread(lambda: fn(*args), f"asuite-{name}")


def _in_new_thread(fn: Callable[[], Any], thread_name: str) -> Any:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=thread_name)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
