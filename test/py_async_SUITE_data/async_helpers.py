"""Python side of py_async_SUITE: coroutines, generators and workloads it drives."""
from __future__ import annotations

import asyncio
import mmap
import os
import struct
import time
from typing import Any, AsyncIterator, Iterator

# Tags of tasks that started, that saw CancelledError, and of generators whose `finally` ran.
started: list[str] = []
cancelled: list[str] = []
closed: list[str] = []
# Items each stream has produced so far, by tag.
produced: dict[str, int] = {}


async def double(x: int, delay: float = 0.0) -> int:
    await asyncio.sleep(delay)
    return 2 * x


def plain(x: int) -> int:
    return x + 1


def returns_awaitable(x: int) -> Any:
    return asyncio.sleep(0, x)


async def fail(message: str) -> None:
    await asyncio.sleep(0)
    raise ValueError(message)


async def sleep_tagged(tag: str, delay: float) -> str:
    started.append(tag)
    try:
        await asyncio.sleep(delay)
        return tag
    except asyncio.CancelledError:
        cancelled.append(tag)
        raise


async def running_loop_is_the_threads() -> bool:
    # An async call runs on the loop thread's own, always-running loop.
    loop = asyncio.get_running_loop()
    return type(loop).__name__ == "ErlangEventLoop" and loop.is_running()


async def task_name() -> str:
    task = asyncio.current_task()
    assert task is not None
    return task.get_name()


async def task_names(n: int) -> AsyncIterator[str]:
    for _ in range(n):
        yield await task_name()


async def agen(n: int, tag: str) -> AsyncIterator[int]:
    try:
        for i in range(n):
            produced[tag] = produced.get(tag, 0) + 1
            yield i
            await asyncio.sleep(0)
    finally:
        closed.append(tag)


def gen(n: int, tag: str) -> Iterator[int]:
    try:
        for i in range(n):
            produced[tag] = produced.get(tag, 0) + 1
            yield i * 10
    finally:
        closed.append(tag)


async def agen_fails_after(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i
    raise RuntimeError("stream broke")


async def returns_list() -> list[int]:
    await asyncio.sleep(0)
    return [1, 2, 3]


def produced_count(tag: str) -> int:
    return produced.get(tag, 0)


spins: list[int] = [0]


def busy_callbacks(count: int, each_us: int, counter_path: str) -> None:
    """Fills the loop's ready queue: `count` callbacks that each spin for `each_us` µs.

    Each also writes how many have run into `counter_path` (through a shared mapping), so
    that Erlang can read the count without going through the busy loop."""
    loop = asyncio.get_running_loop()
    spins[0] = 0
    fd = os.open(counter_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, 8)
        counter = mmap.mmap(fd, 8)
    finally:
        os.close(fd)

    def spin() -> None:
        end = time.perf_counter() + each_us / 1e6
        while time.perf_counter() < end:
            pass
        spins[0] += 1
        struct.pack_into("<Q", counter, 0, spins[0])

    for _ in range(count):
        loop.call_soon(spin)


def spins_done() -> int:
    return spins[0]
