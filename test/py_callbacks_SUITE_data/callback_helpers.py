"""Python side of py_callbacks_SUITE: code that calls back into Erlang."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import erlang

# How many times `suspends` ran the code before its await (it must be once per call).
before_await: list[int] = [0]


def call(name: str, *args: Any) -> Any:
    return erlang.call(name, *args)


def call_with_timeout(name: str, timeout: float, *args: Any) -> Any:
    return erlang.call(name, *args, timeout=timeout)


def error_of(name: str, *args: Any, timeout: float | None = None) -> Any:
    """The reason of the erlang.Error that the call raises (its type name if another)."""
    try:
        erlang.call(name, *args, timeout=timeout)
    except erlang.Error as e:
        return ["erlang.Error", e.reason]
    except Exception as e:  # noqa: BLE001 - the test wants to see anything else
        return [type(e).__name__, str(e)]
    return "no error"


def send(pid: erlang.Pid, term: Any) -> None:
    erlang.send(pid, term)


def send_error(pid: Any, term: Any) -> Any:
    try:
        erlang.send(pid, term)
    except erlang.ProcessError as e:
        return ["erlang.ProcessError", str(e.reason), isinstance(e, erlang.Error)]
    except Exception as e:  # noqa: BLE001
        return [type(e).__name__, str(e)]
    return "no error"


def nest(depth: int) -> int:
    """Python -> Erlang (`reenter`) -> Python -> ... `depth` levels deep, sync."""
    if depth == 0:
        return 0
    return 1 + erlang.call("reenter", depth - 1)


async def anest(depth: int) -> int:
    """The same through `await erlang.async_call` on the loop's own asyncio loop."""
    if depth == 0:
        return 0
    return 1 + await erlang.async_call("areenter", depth - 1)


async def suspends(name: str, *args: Any) -> Any:
    before_await[0] += 1
    result = await erlang.async_call(name, *args)
    return [before_await[0], result]


def imported(name: str, *args: Any) -> Any:
    module: dict[str, Any] = {}
    exec(f"from erlang import {name} as f", module)
    return module["f"](*args)


def import_error(name: str) -> str:
    try:
        exec(f"from erlang import {name}", {})
    except ImportError as e:
        return type(e).__name__
    return "imported"


def threads(n_threads: int, calls: int) -> list[Any]:
    """`n_threads` threads, each making `calls` erlang.calls at once; the wrong answers."""
    wrong: list[Any] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n_threads)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(calls):
            got = erlang.call("ident", t, i)
            if got != (t, i):
                with lock:
                    wrong.append([t, i, got])

    workers = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [wrong, n_threads * calls / (time.monotonic() - t0)]


async def in_executor(name: str, *args: Any) -> Any:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(2) as pool:
        return await loop.run_in_executor(pool, lambda: erlang.call(name, *args))


def on_other_loop(name: str, *args: Any) -> Any:
    """`erlang.async_call` on a loop made by Python code (erlang.run)."""
    return erlang.run(erlang.async_call(name, *args))


def on_asyncio_loop(name: str, *args: Any) -> Any:
    """`erlang.async_call` on asyncio's own loop, in a thread of its own."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(erlang.async_call(name, *args))))
    thread.start()
    thread.join()
    return result[0]
