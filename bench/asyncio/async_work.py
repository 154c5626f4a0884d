"""The `async` group's Python side: what py:async_call and py:async_gather run, the
erlang.call loops, and the pure-Python gather baseline.

    python async_work.py uvloop|asyncio gather N ROUNDS     prints "name value" lines
"""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import workloads


async def echo(x: Any) -> Any:
    return x


def sync_echo(x: Any) -> Any:
    return x


# The gathered coroutine: the same as the asyncio group's (it suspends once).
child = workloads._child


def erlang_calls(n: int) -> float:
    """`n` sequential erlang.call round trips from this thread; calls/s."""
    import erlang

    start = time.perf_counter()
    for i in range(n):
        erlang.call("bench_echo", i)
    return n / (time.perf_counter() - start)


def erlang_calls_threads(threads: int, n: int) -> float:
    """`threads` Python threads, each making `n` erlang.calls at once; calls/s overall."""
    import erlang

    def work() -> None:
        for i in range(n):
            erlang.call("bench_echo", i)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return threads * n / (time.perf_counter() - start)


async def _gather_rounds(n: int, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        results = await asyncio.gather(*(child(i) for i in range(n)))
        assert len(results) == n
    return n * rounds / (time.perf_counter() - start)


def main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[2] != "gather":
        print(__doc__, file=sys.stderr)
        return 2
    loop = workloads._loop_factory(argv[1])()
    try:
        rate = loop.run_until_complete(_gather_rounds(int(argv[3]), int(argv[4])))
    finally:
        loop.close()
    print(f"rate {rate!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
