"""Creating, running, stopping and closing `ErlangEventLoop`s, and the event processes
they own. Plain functions: each makes its own loops."""
from __future__ import annotations

import asyncio
import gc
import socket
import threading
import warnings
import weakref
from typing import Any, Callable

import erlang

_open: list[asyncio.AbstractEventLoop] = []


def open_loops(n: int) -> int:
    """Keeps n new loops open across calls, so that Erlang can look at their event processes."""
    _open.extend(erlang.new_event_loop() for _ in range(n))
    return len(_open)


def close_loops() -> list[bool]:
    closed = []
    for loop in _open:
        loop.close()
        closed.append(loop.is_closed())
    _open.clear()
    return closed


def drop_loops() -> int:
    """Forgets the loops open_loops made, without closing them; asyncio closes a loop
    that is collected unclosed (with a ResourceWarning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        _open.clear()
        gc.collect()
    return sum(1 for w in caught if issubclass(w.category, ResourceWarning)
               and str(w.message).startswith("unclosed event loop <ErlangEventLoop"))


def cycles(n: int) -> int:
    """n loops made, used (a timer, an fd) and closed."""
    for _ in range(n):
        loop = erlang.new_event_loop()
        try:
            loop.run_until_complete(_use())
        finally:
            loop.close()
    return n


async def _use() -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.0001)
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        receiving = asyncio.ensure_future(loop.sock_recv(b, 10))
        await asyncio.sleep(0)
        a.send(b"x")
        assert await receiving == b"x"


def _closed_error(fn: Callable[[], Any]) -> str:
    try:
        fn()
        return "no error"
    except RuntimeError as exc:
        return str(exc)


def lifecycle(which: str) -> dict[str, Any]:
    """The same steps on an ErlangEventLoop ("erlang") or asyncio's own loop ("default")."""
    loop = erlang.new_event_loop() if which == "erlang" else asyncio.SelectorEventLoop()
    out: dict[str, Any] = {"new": [loop.is_running(), loop.is_closed()]}

    async def inside() -> list[Any]:
        running = [loop.is_running(), asyncio.get_running_loop() is loop]
        close_error = _closed_error(loop.close)
        coro = asyncio.sleep(0)
        nested = _closed_error(lambda: loop.run_until_complete(coro))
        coro.close()
        forever = _closed_error(loop.run_forever)
        return running + [close_error, nested, forever, loop.is_closed()]

    out["inside"] = loop.run_until_complete(inside())
    out["after_complete"] = [loop.is_running(), loop.is_closed()]

    # stop() ends run_forever after the iteration in which it was called: callbacks
    # queued behind it still run, those they schedule do not.
    order: list[Any] = []
    loop.call_soon(order.append, 1)
    loop.call_soon(loop.stop)
    loop.call_soon(lambda: (order.append(2), loop.call_soon(order.append, 3)))
    loop.run_forever()
    out["stopped"] = list(order)
    # stop() before run_forever: one iteration, which runs what was queued (3).
    loop.stop()
    loop.run_forever()
    out["stop_first"] = list(order)

    # A timer started and the loop stopped from inside run_forever.
    fired: list[str] = []
    loop.call_later(0.01, lambda: (fired.append("timer"), loop.stop()))
    loop.run_forever()
    out["timer_stop"] = fired

    loop.close()
    loop.close()  # closing twice is allowed
    out["closed"] = [loop.is_running(), loop.is_closed()]
    coro = asyncio.sleep(0)
    out["after_close"] = [
        _closed_error(lambda: loop.run_until_complete(coro)),
        _closed_error(loop.run_forever),
        _closed_error(lambda: loop.call_soon(print)),
        _closed_error(lambda: loop.call_later(1, print)),
        _closed_error(lambda: loop.call_soon_threadsafe(print)),
    ]
    coro.close()
    return out


def run_forever_in_another_thread(which: str) -> list[Any]:
    """A loop made here, run by a new thread, used and stopped from here."""
    loop = erlang.new_event_loop() if which == "erlang" else asyncio.SelectorEventLoop()
    started = threading.Event()

    def target() -> None:
        loop.call_soon(started.set)
        loop.run_forever()

    thread = threading.Thread(target=target)
    thread.start()
    try:
        assert started.wait(10)
        running = loop.is_running()

        async def work(n: int) -> tuple[int, bool]:
            await asyncio.sleep(0.001)
            return n * 2, threading.current_thread() is thread

        results = [asyncio.run_coroutine_threadsafe(work(n), loop).result(10) for n in range(3)]
        close_error = _closed_error(loop.close)
        loop.call_soon_threadsafe(loop.stop)
    finally:
        thread.join(10)
    stopped = [thread.is_alive(), loop.is_running()]
    loop.close()
    return [running, results, close_error, stopped, loop.is_closed()]


async def nested_run() -> tuple[str, str]:
    inner = asyncio.sleep(0, result="inner")
    try:
        erlang.run(inner)
        error = "no error"
    except RuntimeError as exc:
        error = str(exc)
    finally:
        inner.close()
    return type(asyncio.get_running_loop()).__name__, error


def policy() -> tuple[str, str, bool, str]:
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(erlang.EventLoopPolicy())
    try:
        async def main() -> str:
            return type(asyncio.get_running_loop()).__name__

        by_run = asyncio.run(main())
        made = asyncio.new_event_loop()
        try:
            by_new = type(made).__name__
        finally:
            made.close()
        return by_run, by_new, isinstance(asyncio.get_event_loop_policy(), erlang.EventLoopPolicy), \
            type(old).__name__
    finally:
        asyncio.set_event_loop_policy(old)


def survivors_without_gc(make: str, n: int) -> int:
    """Runs and closes n loops with the collector off: how many outlive their last
    reference. A cycle would keep a closed loop, and the native loop it holds, until the
    next full collection."""
    new_loop = erlang.new_event_loop if make == "erlang" else asyncio.new_event_loop
    refs = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(n):
            loop = new_loop()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
            refs.append(weakref.ref(loop))
            del loop
        return sum(1 for ref in refs if ref() is not None)
    finally:
        if enabled:
            gc.enable()
