"""The asyncio group's workloads: one code path for every event loop compared.

`make bench BENCH=asyncio` runs each workload on asyncio's default loop and on uvloop (in
separate OS processes, through the command line below) and on `erlang.ErlangEventLoop`
inside the BEAM (through `py:call(workloads, run, [Loop, Workload])`). Nothing here knows
which loop it runs on, so the loops differ only by the factory that makes them.

Every workload returns its metrics as `{name: number}`; `rate` is operations per second.
Servers and clients share one loop (as a single-process benchmark must): a TCP or UDP round
trip therefore costs the loop two readiness events, one per side.

    python workloads.py asyncio|uvloop WORKLOAD    prints "name value" lines
"""
from __future__ import annotations

import asyncio
import functools
import gc
import sys
import time
from typing import Any, Awaitable, Callable, Optional, cast

Metrics = dict[str, float]

CALL_SOON_TOTAL = 1_000_000
# Scheduled between two awaits: a loop drains its ready queue without a million handles
# alive at once, which would measure the allocator more than the loop.
CALL_SOON_CHUNK = 10_000
TIMERS = 10_000
TIMER_SPREAD = 0.1
GATHER = 10_000
ECHO_MESSAGE = b"x" * 64
TCP_SINGLE_ROUNDS = 100_000
TCP_MANY_CONNECTIONS = 100
TCP_MANY_ROUNDS = 1_000
UDP_ROUNDS = 100_000
SPAWNS = 200
# uvloop's `when()` and `time()` are the same whole milliseconds, divided and summed in
# floats, so an on-time firing can look about 1e-12 s early; no clock compared here resolves
# less than 1 ns, so anything closer than that is on time.
EARLY_TOLERANCE = 1e-9
# Long enough for the slowest loop; a workload that takes longer is broken, not slow.
DEADLINE = 300.0


def _percentile(sorted_values: list[float], q: float) -> float:
    # Nearest rank, as the Erlang harness computes its own percentiles.
    n = len(sorted_values)
    return sorted_values[max(0, min(n - 1, round(n * q) - 1))]


def _noop() -> None:
    pass


async def call_soon() -> Metrics:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for _ in range(CALL_SOON_TOTAL // CALL_SOON_CHUNK):
        done: asyncio.Future[None] = loop.create_future()
        for _ in range(CALL_SOON_CHUNK):
            loop.call_soon(_noop)
        loop.call_soon(done.set_result, None)
        await done
    elapsed = time.perf_counter() - start
    return {"rate": CALL_SOON_TOTAL / elapsed, "seconds": elapsed}


async def timers() -> Metrics:
    """10,000 `call_later` timers, delays spread evenly over 0-100 ms in shuffled order.

    Lateness is each loop's own `loop.time()` at the callback minus the handle's `when()`:
    the clock the loop promises its timers against. Negative lateness is an early firing.
    uvloop rounds delays to milliseconds and turns one that rounds to 0 into `call_soon`,
    whose handle has no `when()`: its deadline is then the moment it was scheduled.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    deadlines: list[float] = [0.0] * TIMERS
    lateness: list[float] = []

    def fired(i: int) -> None:
        now = loop.time()
        lateness.append(now - deadlines[i])
        if len(lateness) == TIMERS:
            done.set_result(None)

    start = time.perf_counter()
    for i in range(TIMERS):
        # A stride coprime with TIMERS visits every slot once, out of order, so that
        # the heap is not fed sorted deadlines.
        slot = (i * 7919) % TIMERS
        scheduled_at = loop.time()
        handle = loop.call_later(TIMER_SPREAD * slot / TIMERS, fired, i)
        when = getattr(handle, "when", None)
        deadlines[i] = when() if when is not None else scheduled_at
    await done
    elapsed = time.perf_counter() - start
    lateness.sort()
    return {
        "rate": TIMERS / elapsed,
        "seconds": elapsed,
        "p50_us": _percentile(lateness, 0.50) * 1e6,
        "p99_us": _percentile(lateness, 0.99) * 1e6,
        "max_us": lateness[-1] * 1e6,
        "min_us": lateness[0] * 1e6,
        "early": float(sum(1 for v in lateness if v < -EARLY_TOLERANCE)),
    }


async def _child(i: int) -> int:
    # Each coroutine suspends once, as a coroutine doing I/O would at least.
    await asyncio.sleep(0)
    return i


async def gather() -> Metrics:
    start = time.perf_counter()
    results = await asyncio.gather(*(_child(i) for i in range(GATHER)))
    elapsed = time.perf_counter() - start
    assert len(results) == GATHER
    return {"rate": GATHER / elapsed, "seconds": elapsed}


class _EchoServer(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _EchoClient(asyncio.Protocol):
    """Sends one message, waits for all of it to come back, and again, `rounds` times."""

    transport: asyncio.Transport

    def __init__(self, rounds: int, done: asyncio.Future[None]) -> None:
        self.left = rounds
        self.pending = 0
        self.done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def start(self) -> None:
        self.pending = len(ECHO_MESSAGE)
        self.transport.write(ECHO_MESSAGE)

    def data_received(self, data: bytes) -> None:
        self.pending -= len(data)
        if self.pending > 0:
            return
        self.left -= 1
        if self.left == 0:
            self.done.set_result(None)
        else:
            self.start()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("echo connection closed early"))


async def _tcp_echo(connections: int, rounds: int) -> Metrics:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_EchoServer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients: list[tuple[asyncio.Transport, _EchoClient]] = []
    try:
        for _ in range(connections):
            done: asyncio.Future[None] = loop.create_future()
            transport, client = await loop.create_connection(
                functools.partial(_EchoClient, rounds, done), "127.0.0.1", port)
            clients.append((transport, client))
        start = time.perf_counter()
        for _, client in clients:
            client.start()
        await asyncio.wait_for(asyncio.gather(*(c.done for _, c in clients)), DEADLINE)
        elapsed = time.perf_counter() - start
    finally:
        for transport, _ in clients:
            transport.close()
        server.close()
        await server.wait_closed()
    total = connections * rounds
    return {"rate": total / elapsed, "seconds": elapsed}


async def tcp_echo_1() -> Metrics:
    return await _tcp_echo(1, TCP_SINGLE_ROUNDS)


async def tcp_echo_100() -> Metrics:
    return await _tcp_echo(TCP_MANY_CONNECTIONS, TCP_MANY_ROUNDS)


class _UdpEchoServer(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's own datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


class _UdpEchoClient(asyncio.DatagramProtocol):
    """One datagram in flight at a time; on loopback none is lost, and a lost one would
    stop the run at the deadline rather than skew it."""

    transport: asyncio.DatagramTransport

    def __init__(self, rounds: int, done: asyncio.Future[None]) -> None:
        self.left = rounds
        self.done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's own datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set_result(None)
        else:
            self.transport.sendto(ECHO_MESSAGE)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def udp_echo() -> Metrics:
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(_UdpEchoServer, local_addr=("127.0.0.1", 0))
    address = server.get_extra_info("sockname")
    done: asyncio.Future[None] = loop.create_future()
    client, _ = await loop.create_datagram_endpoint(
        lambda: _UdpEchoClient(UDP_ROUNDS, done), remote_addr=address)
    try:
        start = time.perf_counter()
        client.sendto(ECHO_MESSAGE)
        await asyncio.wait_for(done, DEADLINE)
        elapsed = time.perf_counter() - start
    finally:
        client.close()
        server.close()
    return {"rate": UDP_ROUNDS / elapsed, "seconds": elapsed}


async def subprocess_spawn() -> Metrics:
    """Spawns one child at a time and waits for its exit: spawn plus exit notification."""
    start = time.perf_counter()
    for _ in range(SPAWNS):
        proc = await asyncio.create_subprocess_exec("/bin/true")
        code = await proc.wait()
        if code != 0:
            raise RuntimeError(f"/bin/true exited with {code}")
    elapsed = time.perf_counter() - start
    return {"rate": SPAWNS / elapsed, "seconds": elapsed}


WORKLOADS: dict[str, Callable[[], Awaitable[Metrics]]] = {
    "call_soon": call_soon,
    "timers": timers,
    "gather": gather,
    "tcp_echo_1": tcp_echo_1,
    "tcp_echo_100": tcp_echo_100,
    "udp_echo": udp_echo,
    "subprocess": subprocess_spawn,
}


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop
    if name == "erlang":
        import erlang
        return erlang.new_event_loop
    raise ValueError(f"unknown loop {name!r}")


def run(loop_name: str, workload: str) -> Metrics:
    """Runs one workload on a new loop of the given kind, and closes the loop."""
    factory = _loop_factory(loop_name)
    coroutine_function = WORKLOADS[workload]
    # Garbage left by an earlier measurement in the same interpreter is not this one's.
    gc.collect()
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coroutine_function())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    for name, value in run(argv[1], argv[2]).items():
        print(f"{name} {value!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
