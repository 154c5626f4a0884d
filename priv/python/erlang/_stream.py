"""Drives the iterator behind `py:async_stream` as an asyncio task.

Items leave one at a time through `emit`, each only once credit allows: the event process
grants credit as the consumer keeps up, so a fast producer cannot run ahead of a slow
consumer. Cancelling the task (the consumer gave up or died) closes the iterator, so its
`finally` blocks run.
"""
from __future__ import annotations

import asyncio
import inspect
from typing import Any, Callable

# A plain iterator runs inside the loop's thread; between this many items it yields to the
# loop so that other tasks and requests are served.
_YIELD_EVERY = 64


class Credit:
    """How many more items may leave before the event process grants more."""

    def __init__(self, loop: asyncio.AbstractEventLoop, initial: int) -> None:
        self._loop = loop
        self._left = initial
        self._waiter: asyncio.Future[None] | None = None

    def grant(self, n: int) -> None:
        self._left += n
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> None:
        while self._left <= 0:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._left -= 1


async def drive(source: Any, emit: Callable[[Any], None], credit: Credit) -> None:
    if inspect.isawaitable(source) and not hasattr(source, "__aiter__"):
        # A coroutine function that returns an iterable: stream what it returns.
        source = await source
    if hasattr(source, "__aiter__"):
        await _drive_async(source.__aiter__(), emit, credit)
    else:
        await _drive_sync(iter(source), emit, credit)


async def _drive_async(it: Any, emit: Callable[[Any], None], credit: Credit) -> None:
    try:
        while True:
            # Credit first: the producer does not make an item nobody can take yet.
            await credit.take()
            try:
                item = await it.__anext__()
            except StopAsyncIteration:
                return
            emit(item)
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()


async def _drive_sync(it: Any, emit: Callable[[Any], None], credit: Credit) -> None:
    sent = 0
    try:
        while True:
            await credit.take()
            try:
                item = next(it)
            except StopIteration:
                return
            emit(item)
            sent += 1
            if sent % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
