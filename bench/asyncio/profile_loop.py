"""Where a loop's time goes on the asyncio group's two hottest paths. Not part of `make bench`.

    run(loop_name, "tcp_hops")   TCP echo, 1 connection: the time of each hop of a round
                                 trip (client write -> server data_received -> client
                                 data_received), and loop iterations per round trip
    run(loop_name, "call_soon")  call_soon: scheduling alone, then running alone

From the BEAM (loop "erlang"), as bench/pybeam_bench_asyncio.erl calls workloads.py; from a
shell (loops "asyncio", "uvloop"): `python profile_loop.py LOOP WHAT`.
"""
from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from typing import Any, Callable, Optional, cast

import workloads

Metrics = dict[str, float]

HOP_ROUNDS = 20_000


class _HopServer(asyncio.Protocol):
    transport: asyncio.Transport

    def __init__(self, stamps: list[float]) -> None:
        self.stamps = stamps

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.stamps.append(time.perf_counter())
        self.transport.write(data)


class _HopClient(asyncio.Protocol):
    transport: asyncio.Transport

    def __init__(self, rounds: int, sent: list[float], back: list[float],
                 done: asyncio.Future[None]) -> None:
        self.left = rounds
        self.sent = sent
        self.back = back
        self.done = done
        self.pending = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def start(self) -> None:
        self.pending = len(workloads.ECHO_MESSAGE)
        self.sent.append(time.perf_counter())
        self.transport.write(workloads.ECHO_MESSAGE)

    def data_received(self, data: bytes) -> None:
        self.pending -= len(data)
        if self.pending > 0:
            return
        self.back.append(time.perf_counter())
        self.left -= 1
        if self.left == 0:
            self.done.set_result(None)
        else:
            self.start()


def _us(values: list[float]) -> float:
    return statistics.median(values) * 1e6


async def tcp_hops() -> Metrics:
    loop = asyncio.get_running_loop()
    sent: list[float] = []
    at_server: list[float] = []
    back: list[float] = []
    done: asyncio.Future[None] = loop.create_future()
    server = await loop.create_server(lambda: _HopServer(at_server), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, client = await loop.create_connection(
        lambda: _HopClient(HOP_ROUNDS, sent, back, done), "127.0.0.1", port)
    iterations_before = getattr(loop, "iterations", 0)
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    client.start()
    await done
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    iterations = getattr(loop, "iterations", 0) - iterations_before
    transport.close()
    server.close()
    await server.wait_closed()
    hops = sorted([s - c for c, s in zip(sent, at_server)] + [b - s for s, b in zip(at_server, back)])
    return {
        "round_trip_us": wall / HOP_ROUNDS * 1e6,
        "client_write_to_server_read_us": _us([s - c for c, s in zip(sent, at_server)]),
        "server_write_to_client_read_us": _us([b - s for s, b in zip(at_server, back)]),
        "hop_p10_us": workloads._percentile(hops, 0.10) * 1e6,
        "hop_p90_us": workloads._percentile(hops, 0.90) * 1e6,
        "hop_p99_us": workloads._percentile(hops, 0.99) * 1e6,
        "hop_mean_us": statistics.fmean(hops) * 1e6,
        "loop_thread_cpu_share": cpu / wall,
        "iterations_per_round_trip": iterations / HOP_ROUNDS,
    }


async def call_soon() -> Metrics:
    loop = asyncio.get_running_loop()
    n = workloads.CALL_SOON_CHUNK
    schedule = 0.0
    total = 0.0
    chunks = workloads.CALL_SOON_TOTAL // n
    iterations_before = getattr(loop, "iterations", 0)
    collections_before = [g["collections"] for g in gc.get_stats()]
    for _ in range(chunks):
        done: asyncio.Future[None] = loop.create_future()
        t0 = time.perf_counter()
        for _ in range(n):
            loop.call_soon(workloads._noop)
        t1 = time.perf_counter()
        loop.call_soon(done.set_result, None)
        await done
        t2 = time.perf_counter()
        schedule += t1 - t0
        total += t2 - t0
    iterations = getattr(loop, "iterations", 0) - iterations_before
    collections = [g["collections"] - c for g, c in zip(gc.get_stats(), collections_before)]
    return {
        "gc_gen0": float(collections[0]),
        "gc_gen1": float(collections[1]),
        "gc_gen2": float(collections[2]),
        "ns_per_callback": total / (chunks * n) * 1e9,
        "schedule_ns": schedule / (chunks * n) * 1e9,
        "run_ns": (total - schedule) / (chunks * n) * 1e9,
        "callbacks_per_iteration": chunks * (n + 1) / max(1, iterations),
    }


async def call_soon_without_gc() -> Metrics:
    """call_soon with the cyclic garbage collector off: what the collector costs it."""
    gc.disable()
    try:
        return await call_soon()
    finally:
        gc.enable()


async def gc_cost() -> Metrics:
    """One full collection of this interpreter's heap, and how many objects it tracks."""
    t0 = time.perf_counter()
    gc.collect()
    return {"full_collection_ms": (time.perf_counter() - t0) * 1e3,
            "tracked_objects": float(len(gc.get_objects()))}


async def floor() -> Metrics:
    """What a callback cannot cost less than, from Python: the calls it is made of (GC off)."""
    import contextvars
    loop = asyncio.get_running_loop()
    n = 1_000_000
    noop = workloads._noop

    def per_call(body: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        body()
        return (time.perf_counter() - t0) / n * 1e9

    def empty() -> None:
        for _ in range(n):
            pass

    def call_noop() -> None:
        for _ in range(n):
            noop()

    def call_time() -> None:
        for _ in range(n):
            loop.time()

    def copy_context() -> None:
        for _ in range(n):
            contextvars.copy_context()

    gc.disable()
    try:
        base = per_call(empty)
        return {"loop_ns": base,
                "python_noop_call_ns": per_call(call_noop) - base,
                "loop_time_call_ns": per_call(call_time) - base,
                "copy_context_ns": per_call(copy_context) - base}
    finally:
        gc.enable()


_WHAT: dict[str, Callable[[], Any]] = {"floor": floor, "tcp_hops": tcp_hops, "call_soon": call_soon,
                                       "call_soon_without_gc": call_soon_without_gc,
                                       "gc_cost": gc_cost}


def _counting(factory: Callable[[], asyncio.AbstractEventLoop]) -> Callable[[], asyncio.AbstractEventLoop]:
    """Loops whose `_run_once` is Python-visible (asyncio's, ours) count their iterations."""
    probe = factory()
    cls = type(probe)
    probe.close()
    if not hasattr(cls, "_run_once"):
        return factory

    def _run_once(self: Any) -> None:
        self.iterations += 1
        cls._run_once(self)

    counting = type("Counting" + cls.__name__, (cls,), {"_run_once": _run_once, "iterations": 0})
    return cast(Callable[[], asyncio.AbstractEventLoop], counting)


def run(loop_name: str, what: str) -> Metrics:
    factory = _counting(workloads._loop_factory(loop_name))
    loop: Optional[asyncio.AbstractEventLoop] = factory()
    assert loop is not None
    try:
        asyncio.set_event_loop(loop)
        return cast(Metrics, loop.run_until_complete(_WHAT[what]()))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


if __name__ == "__main__":
    for name, value in run(sys.argv[1], sys.argv[2]).items():
        print(f"{name} {value:.3f}")
