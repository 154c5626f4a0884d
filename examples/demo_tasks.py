"""Coroutines that `make demo` runs from Erlang and Elixir with py:async_gather."""
import asyncio


async def square_later(n: int) -> int:
    await asyncio.sleep(0.1)
    return n * n
