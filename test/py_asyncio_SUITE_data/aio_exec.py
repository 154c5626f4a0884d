"""Executors, async generator shutdown and DNS."""
from __future__ import annotations

import asyncio
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator


async def default_executor() -> tuple[bool, int, bool, str]:
    loop = asyncio.get_running_loop()
    here = threading.get_ident()
    ident, value = await loop.run_in_executor(None, lambda: (threading.get_ident(), 6 * 7))
    # A job still running when shutdown starts: shutdown waits for it.
    release = threading.Event()
    finished: list[bool] = []

    def job() -> None:
        release.wait(10)
        finished.append(True)

    running = loop.run_in_executor(None, job)
    shutdown = asyncio.ensure_future(loop.shutdown_default_executor())
    await asyncio.sleep(0)
    release.set()
    await shutdown
    await running
    try:
        await loop.run_in_executor(None, int)
        refused = "no error"
    except RuntimeError as exc:
        refused = str(exc)
    return ident != here, value, finished == [True], refused


async def custom_executor() -> tuple[str, list[str], str]:
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asuite")
    loop.set_default_executor(executor)
    first = await loop.run_in_executor(None, lambda: threading.current_thread().name)
    names = await asyncio.gather(*(loop.run_in_executor(None, lambda: threading.current_thread().name)
                                   for _ in range(3)))
    await loop.shutdown_default_executor()
    try:
        executor.submit(int)
        refused = "no error"
    except RuntimeError as exc:
        refused = str(exc)
    return first, list(names), refused


async def asyncgens() -> tuple[int, list[str], list[str]]:
    loop = asyncio.get_running_loop()
    log: list[str] = []

    async def gen(tag: str) -> AsyncIterator[int]:
        try:
            log.append(f"{tag} start")
            yield 1
            yield 2
        finally:
            log.append(f"{tag} finally")

    suspended = gen("a")
    first = await suspended.__anext__()
    finished = gen("b")
    async for _ in finished:
        pass
    before = list(log)
    await loop.shutdown_asyncgens()
    return first, before, log


async def dns() -> tuple[list[Any], bool, tuple[str, str], bool]:
    loop = asyncio.get_running_loop()
    v4 = await loop.getaddrinfo("localhost", 80, family=socket.AF_INET, type=socket.SOCK_STREAM)
    every = await loop.getaddrinfo("localhost", 80)
    numeric = await loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
    named = await loop.getnameinfo(("127.0.0.1", 80))
    return ([(int(f), int(t), p, c, a) for f, t, p, c, a in v4],
            every == socket.getaddrinfo("localhost", 80),
            numeric,
            named == socket.getnameinfo(("127.0.0.1", 80), 0))
