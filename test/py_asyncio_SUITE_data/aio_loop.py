"""The loop's own API: cross-thread wake-ups, exception handlers, debug mode, timers, fd
callbacks, signals, the task factory and contexts."""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import os
import re
import signal
import socket
import threading
import time
import weakref
from typing import Any, Iterator

import erlang


def _thread_state(native_id: int) -> str:
    with open(f"/proc/self/task/{native_id}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2]


def _wait_until_asleep(native_id: int) -> None:
    """Returns once the thread has been asleep for three looks in a row, 1 ms apart.

    The kernel's view is the only sign that a loop is parked in its wait (no Python code
    runs there); one look could catch it waiting for the GIL instead.
    """
    deadline = time.monotonic() + 5
    asleep = 0
    while asleep < 3:
        if time.monotonic() > deadline:
            raise AssertionError("the loop's thread never went idle")
        asleep = asleep + 1 if _thread_state(native_id) == "S" else 0
        time.sleep(0.001)


async def threadsafe_wakeup(rounds: int) -> list[Any]:
    """`call_soon_threadsafe` from a plain thread must wake a loop that waits for nothing
    else: each round gives True if the callback ran within 0.5 s. A lost wake-up is
    rescued by a write to a pipe two seconds later, so it fails the round instead of
    hanging the suite."""
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_native_id()
    rescue_r, rescue_w = os.pipe()
    os.set_blocking(rescue_r, False)
    results: list[Any] = []
    try:
        for i in range(rounds):
            # Odd rounds wait with a deadline (a timer a minute away), even ones without.
            far = loop.call_later(60, lambda: None) if i % 2 else None
            fut: asyncio.Future[Any] = loop.create_future()
            woken = threading.Event()

            def rescued() -> None:
                os.read(rescue_r, 1)
                if not fut.done():
                    fut.set_result("rescued")

            loop.add_reader(rescue_r, rescued)

            def worker() -> None:
                _wait_until_asleep(loop_thread)
                t0 = time.monotonic()

                def wake() -> None:
                    woken.set()
                    if not fut.done():
                        fut.set_result(time.monotonic() - t0)

                loop.call_soon_threadsafe(wake)
                if not woken.wait(2):
                    os.write(rescue_w, b"x")

            thread = threading.Thread(target=worker)
            thread.start()
            result = await fut
            if far is not None:
                far.cancel()
            loop.remove_reader(rescue_r)
            thread.join()
            results.append(result < 0.5 if isinstance(result, float) else result)
    finally:
        os.close(rescue_r)
        os.close(rescue_w)
    return results


@contextlib.contextmanager
def captured_asyncio_log() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("asyncio")
    handler = Keep(logging.DEBUG)
    propagate, level = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        logger.setLevel(level)


async def exception_handler() -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {"initial": loop.get_exception_handler()}
    seen: list[tuple[bool, list[str], dict[str, Any]]] = []

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        summary = {}
        for key, value in context.items():
            if key == "message":
                summary[key] = value.split(" at ")[0]
            elif key == "exception":
                summary[key] = repr(value)
            elif key == "handle":
                summary[key] = repr(value).split(" at ")[0]
            elif key in ("future", "task"):
                summary[key] = type(value).__name__
            else:
                summary[key] = value
        seen.append((lp is loop, sorted(context), summary))

    loop.set_exception_handler(handler)
    out["installed"] = loop.get_exception_handler() is handler

    def boom() -> None:
        raise ValueError("boom")

    done = loop.create_future()
    loop.call_soon(boom)
    loop.call_soon(done.set_result, None)
    await done

    loop.call_exception_handler({"message": "custom", "detail": 7})

    never_retrieved = loop.create_future()
    never_retrieved.set_exception(KeyError("lost"))
    del never_retrieved
    gc.collect()
    out["seen"] = seen

    # Back to the default: it logs, with the exception's traceback.
    loop.set_exception_handler(None)
    out["reset"] = loop.get_exception_handler()
    with captured_asyncio_log() as records:
        loop.call_exception_handler({"message": "to the default", "exception": KeyError("k")})
        loop.default_exception_handler({"message": "called directly"})
    out["logged"] = [(r.levelname, r.getMessage(), bool(r.exc_info) and r.exc_info[0] is KeyError)
                     for r in records]

    try:
        loop.set_exception_handler("not callable")  # type: ignore[arg-type]
    except TypeError as exc:
        out["refused"] = str(exc)

    # A handler that raises is logged by the loop, not propagated.
    def broken(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        raise RuntimeError("handler failed")

    loop.set_exception_handler(broken)
    with captured_asyncio_log() as records:
        loop.call_exception_handler({"message": "to a broken handler"})
    loop.set_exception_handler(None)
    out["broken"] = [(r.levelname, r.getMessage()) for r in records]
    return out


def _normalise(message: str) -> str:
    message = re.sub(r" at \S+:\d+", " at FILE", message)
    return re.sub(r"took \d+\.\d{3} seconds", "took N seconds", message)


async def slow_callback() -> tuple[bool, float, list[str], bool, list[str]]:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    done = loop.create_future()

    def blocker() -> None:
        time.sleep(0.1)  # the slow callback under test, not a wait

    def quick() -> None:
        pass

    def boom() -> None:
        raise ValueError("boom")

    # In debug mode a failing callback's context also says where it was scheduled.
    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda lp, context: contexts.append(context))
    with captured_asyncio_log() as records:
        loop.call_soon(blocker)
        loop.call_soon(quick)
        loop.call_soon(boom)
        loop.call_soon(done.set_result, None)
        await done
    loop.set_exception_handler(None)
    debug = loop.get_debug()
    loop.set_debug(False)
    # Only the blocker is certain to be slow; on a busy machine other handles may be too.
    warnings = [r.getMessage() for r in records
                if r.levelno == logging.WARNING and r.getMessage().startswith("Executing")
                and "blocker" in r.getMessage()]
    took = [float(m) for w in warnings for m in re.findall(r"took (\d+\.\d+) seconds", w)]
    return debug, loop.slow_callback_duration, [_normalise(w) for w in warnings], \
        len(took) == 1 and 0.1 <= took[0] < 1.0, [key for c in contexts for key in sorted(c)]


async def timer_order() -> tuple[list[int], list[int]]:
    loop = asyncio.get_running_loop()
    delays = [0.05, 0.01, 0.03, 0.0, 0.02, 0.04, 0.01]
    fired: list[tuple[int, float]] = []
    handles: list[asyncio.TimerHandle] = []
    done = loop.create_future()

    def fire(i: int) -> None:
        fired.append((i, loop.time()))
        if len(fired) == len(delays):
            done.set_result(None)

    t0 = loop.time()
    for i, delay in enumerate(delays):
        # call_at for odd i, call_later for even: the same clock.
        if i % 2:
            handles.append(loop.call_at(t0 + delay, fire, i))
        else:
            handles.append(loop.call_later(delay, fire, i))
    await done
    early = [i for i, at in fired if at < handles[i].when()]
    return [i for i, _ in fired], early


async def many_timers(n: int) -> tuple[bool, list[int], int]:
    """n timers at pseudo-random delays up to 50 ms: they run in deadline order and none
    before its time. (asyncio does not order timers with equal deadlines.)"""
    loop = asyncio.get_running_loop()
    fired: list[tuple[int, float]] = []
    done = loop.create_future()
    handles: list[asyncio.TimerHandle] = []

    def fire(i: int) -> None:
        fired.append((i, loop.time()))
        if len(fired) == n:
            done.set_result(None)

    base = loop.time() + 0.005
    for i in range(n):
        handles.append(loop.call_at(base + (i * 7919 % 50) / 1000, fire, i))
    await done
    whens = [handles[i].when() for i, _ in fired]
    early = [i for i, at in fired if at < handles[i].when()]
    return whens == sorted(whens), early, len(fired)


async def cancelled_timers(n: int) -> tuple[list[int], bool]:
    loop = asyncio.get_running_loop()
    ran: list[int] = []
    done = loop.create_future()
    handles = [loop.call_later(0.001 * (i % 20), ran.append, i) for i in range(n)]
    # Cancel two in three: enough for the loop to sweep them all out of its heap.
    for i, h in enumerate(handles):
        if i % 3:
            h.cancel()
    # Cancelled by a timer due a microsecond before it: both are due in the same
    # iteration, so the victim is cancelled after it was moved to the ready queue.
    t = loop.time() + 0.03
    victim: list[asyncio.TimerHandle] = []
    loop.call_at(t, lambda: victim[0].cancel())
    victim.append(loop.call_at(t + 1e-6, ran.append, -1))
    loop.call_later(0.05, done.set_result, None)
    await done
    # Scheduled for now and cancelled before the loop gets to it.
    soon = loop.call_soon(ran.append, -2)
    soon.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return sorted(ran), all(h.cancelled() for i, h in enumerate(handles) if i % 3) \
        and victim[0].cancelled() and soon.cancelled()


async def clock(samples: int) -> tuple[bool, bool, bool, bool]:
    loop = asyncio.get_running_loop()
    seq = [loop.time() for _ in range(samples)]
    monotonic = all(a <= b for a, b in zip(seq, seq[1:]))
    a = time.monotonic()
    b = loop.time()
    c = time.monotonic()
    t0 = loop.time()
    await asyncio.sleep(0.02)
    elapsed = loop.time() - t0
    return monotonic, a <= b <= c, 0.02 <= elapsed < 1.0, \
        time.get_clock_info("monotonic").implementation == "clock_gettime(CLOCK_MONOTONIC)"


async def fd_callbacks() -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {}
    r, w = os.pipe()
    probe_r, probe_w = os.pipe()
    a, b = socket.socketpair()
    for fd in (r, w, probe_r, probe_w):
        os.set_blocking(fd, False)
    a.setblocking(False)
    b.setblocking(False)
    try:
        # Level-triggered: one byte per callback, called until the pipe is drained.
        got: list[bytes] = []
        drained = loop.create_future()

        def on_read() -> None:
            got.append(os.read(r, 1))
            if len(got) == 5:
                drained.set_result(None)

        loop.add_reader(r, on_read)
        os.write(w, b"abcde")
        await drained
        out["removed"] = loop.remove_reader(r)
        out["removed_again"] = loop.remove_reader(r)
        # Written after the removal, and before a probe the loop must see afterwards:
        # readiness arrives in order, so a reader still registered would have run first.
        os.write(w, b"f")
        probed = loop.create_future()

        def on_probe() -> None:
            os.read(probe_r, 1)
            loop.remove_reader(probe_r)
            probed.set_result(None)

        loop.add_reader(probe_r, on_probe)
        os.write(probe_w, b"p")
        await probed
        for _ in range(5):
            await asyncio.sleep(0)
        out["pipe_reads"] = got
        out["left_in_pipe"] = os.read(r, 10)

        # Replacing a reader: only the newer callback runs.
        replaced: list[str] = []
        second = loop.create_future()
        loop.add_reader(r, lambda: replaced.append("first"))
        loop.add_reader(r, lambda: (replaced.append("second"), os.read(r, 10),
                                    loop.remove_reader(r), second.set_result(None)))
        os.write(w, b"g")
        await second
        out["replaced"] = replaced

        # Writers: the pipe's write end and a socket are writable at once.
        wrote = loop.create_future()

        def on_pipe_writable() -> None:
            os.write(w, b"via writer")
            out["writer_removed"] = loop.remove_writer(w)
            wrote.set_result(None)

        loop.add_writer(w, on_pipe_writable)
        await wrote
        out["writer_removed_again"] = loop.remove_writer(w)
        out["via_writer"] = os.read(r, 100)

        received = loop.create_future()

        def on_sock_writable() -> None:
            a.send(b"ping")
            loop.remove_writer(a)

        def on_sock_readable() -> None:
            data = b.recv(100)
            loop.remove_reader(b)
            received.set_result(data)

        loop.add_reader(b, on_sock_readable)
        loop.add_writer(a, on_sock_writable)
        out["socketpair"] = await received
        ours = (r, w, probe_r, probe_w, a.fileno(), b.fileno())
        out["still_registered"] = [fd for fd in ours
                                   if fd in loop._selector.get_map()]  # type: ignore[attr-defined]
    finally:
        for fd in (r, w, probe_r, probe_w):
            os.close(fd)
        a.close()
        b.close()
    return out


def closed_fds(which: str) -> list[Any]:
    """What registering a closed fd does on an ErlangEventLoop ("erlang") or on asyncio's
    own loop ("default"): the suite expects the same."""
    loop = erlang.new_event_loop() if which == "erlang" else asyncio.SelectorEventLoop()
    try:
        r, w = os.pipe()
        # Closed at a number far above any the process uses, so that nothing reopens it
        # meanwhile (fds are allocated lowest first).
        closed = os.dup2(r, 1000)
        os.close(closed)
        os.close(r)
        os.close(w)
        sock = socket.socket()
        sock.close()
        results: list[Any] = []
        for register in (loop.add_reader, loop.add_writer):
            for target in (closed, sock):
                try:
                    register(target, lambda: None)
                    results.append("registered")
                except (OSError, ValueError) as exc:
                    results.append((type(exc).__name__, str(exc)))
        results.append(closed in loop._selector.get_map())  # type: ignore[attr-defined]
        results.append(loop.remove_reader(closed))
        # Regular files and directories cannot be polled: epoll refuses them.
        with open(__file__, "rb") as regular:
            dir_fd = os.open(os.path.dirname(__file__), os.O_RDONLY)
            try:
                for target in (regular.fileno(), dir_fd):
                    try:
                        loop.add_reader(target, lambda: None)
                        results.append("registered")
                    except OSError as exc:
                        results.append((type(exc).__name__, str(exc)))
            finally:
                os.close(dir_fd)
        return results
    finally:
        loop.close()


async def signals() -> tuple[str, str, bool]:
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        added = "added"
    except NotImplementedError as exc:
        added = type(exc).__name__
    return added, type(loop).__name__, loop.remove_signal_handler(signal.SIGUSR1)


async def task_factory() -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    out: dict[str, Any] = {"initial": loop.get_task_factory()}
    made: list[str] = []

    def factory(lp: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> "asyncio.Task[Any]":
        task = asyncio.Task(coro, loop=lp, **kwargs)
        made.append(f"task{len(made)}")
        return task

    async def value(n: int) -> int:
        await asyncio.sleep(0)
        return n

    loop.set_task_factory(factory)
    out["installed"] = loop.get_task_factory() is factory
    out["results"] = [await loop.create_task(value(1)),
                      await asyncio.create_task(value(2), name="named"),
                      await asyncio.ensure_future(value(3))]
    out["made"] = list(made)
    loop.set_task_factory(None)
    out["reset"] = loop.get_task_factory()
    await loop.create_task(value(4))
    out["made_after_reset"] = len(made)
    try:
        loop.set_task_factory("not callable")  # type: ignore[arg-type]
    except TypeError as exc:
        out["refused"] = str(exc)

    fut = loop.create_future()
    loop.call_soon(fut.set_result, "set by callback")
    out["future"] = [type(fut) is asyncio.Future, fut.get_loop() is loop, await fut]
    return out


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("asuite_var", default="unset")


async def contexts() -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    VAR.set("outer")
    seen: dict[str, str] = {}
    expected = ["call_soon", "explicit", "call_later", "call_at", "threadsafe",
                "threadsafe_explicit", "changed", "after_change", "task"]
    done = loop.create_future()

    def note(key: str) -> None:
        seen[key] = VAR.get()
        if len(seen) == len(expected) and not done.done():
            done.set_result(None)

    explicit = contextvars.copy_context()
    explicit.run(VAR.set, "explicit")
    loop.call_soon(note, "call_soon")
    loop.call_soon(note, "explicit", context=explicit)
    loop.call_later(0.001, note, "call_later")
    loop.call_at(loop.time() + 0.002, note, "call_at")

    def change() -> None:
        VAR.set("changed in a callback")
        note("changed")

    loop.call_soon(change)
    loop.call_later(0.003, note, "after_change")

    def from_thread() -> None:
        # This thread's context has no value: the handle copies the caller's context.
        loop.call_soon_threadsafe(note, "threadsafe")
        loop.call_soon_threadsafe(note, "threadsafe_explicit", context=explicit)

    thread = threading.Thread(target=from_thread)
    thread.start()

    async def in_task() -> None:
        note("task")
        VAR.set("changed in a task")

    await asyncio.create_task(in_task())
    await done
    thread.join()
    return {"seen": seen, "outer_after": VAR.get(), "explicit_after": explicit[VAR]}


SELF: contextvars.ContextVar[Any] = contextvars.ContextVar("asuite_self")


def _contexts_tracked() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is contextvars.Context)


async def context_copies() -> dict[str, Any]:
    """The context a handle copies stays out of the collector while only the handle
    holds it; one handed out (`_context`, or `get_context()` as in Python 3.12) is tracked, so a cycle through it is
    collected; cancelled and never-run handles free their copies."""
    loop = asyncio.get_running_loop()
    before = _contexts_tracked()
    handles = [loop.call_soon(_noop) for _ in range(1000)]
    while_queued = _contexts_tracked() - before
    for h in handles[::2]:
        h.cancel()
    del handles
    await asyncio.sleep(0)

    holder: dict[str, Any] = {}

    def keep_own_context() -> None:
        SELF.set(holder)  # the context now refers to a dict that refers to it

    handle = loop.call_soon(keep_own_context)
    ctx = handle._context
    holder["ctx"] = ctx
    escaped_tracked = gc.is_tracked(ctx)
    same = handle._context is ctx and getattr(handle, "get_context", lambda: ctx)() is ctx
    await asyncio.sleep(0)
    ran = ctx.get(SELF) is holder
    ref = weakref.ref(ctx)
    del ctx, handle, holder
    gc.collect()
    return {"tracked_while_queued": while_queued, "escaped_tracked": escaped_tracked,
            "same_object": same, "ran_in_it": ran, "cycle_collected": ref() is None}


async def reentrant_release() -> dict[str, Any]:
    """Cancelling a handle releases its callback; a callback whose release (`__del__`)
    looks at the handle again (repr, cancel, its attributes) must find it usable."""
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {}

    class Callback:
        handle: Any = None

        def __call__(self) -> None:
            seen["ran"] = True

        def __del__(self) -> None:
            h = Callback.handle
            seen["repr"] = repr(h).startswith("<Handle cancelled")
            h.cancel()
            seen["callback_after_release"] = h._callback
            seen["cancelled"] = h.cancelled()

    Callback.handle = loop.call_soon(Callback())
    Callback.handle.cancel()
    await asyncio.sleep(0)
    seen.setdefault("ran", False)
    return seen


async def spent_handles() -> dict[str, Any]:
    """A handle that nothing else holds lets go of its callback, arguments and context as
    soon as it has run or been skipped (cancelled), as a freed one does; a handle that is
    still held, or weakly referenced, is never reused for another callback."""
    loop = asyncio.get_running_loop()

    class Arg:
        pass

    ran, skipped = Arg(), Arg()
    ran_ref, skipped_ref = weakref.ref(ran), weakref.ref(skipped)
    loop.call_soon(_record, ran)
    loop.call_soon(_record, skipped).cancel()
    del ran, skipped
    kept = loop.call_soon(_record, 1)
    watched = loop.call_soon(_record, 2)
    watched_ref = weakref.ref(watched)
    del watched
    await asyncio.sleep(0)
    later = [loop.call_soon(_record, i) for i in range(100)]
    await asyncio.sleep(0)
    return {"ran_args_released": ran_ref() is None,
            "skipped_args_released": skipped_ref() is None,
            "held_handle_intact": (kept._callback is _record, kept._args, kept.cancelled()),
            "held_handle_not_reused": all(h is not kept for h in later),
            "weakly_referenced_handle_freed": watched_ref() is None}


def _record(value: Any) -> None:
    pass


async def spare_handles() -> dict[str, Any]:
    """ErlangEventLoop keeps the handles spent while it is busy, up to a bound, and gives
    all but a few back once it waits."""
    loop = asyncio.get_running_loop()
    counts: dict[str, int] = {}

    def count(name: str) -> None:
        counts[name] = loop._spare_handles

    for _ in range(20_000):
        loop.call_soon(_record, None)
    loop.call_soon(count, "busy")
    await asyncio.sleep(0)
    await asyncio.sleep(0.01)  # the loop waits for the timer
    count("after_wait")
    # The wake-up that resumed this coroutine may have taken one of the 64 back.
    return {"busy": counts["busy"], "after_wait_at_most_64": counts["after_wait"] <= 64}


_CANARY: contextvars.ContextVar[Any] = contextvars.ContextVar("canary")


async def reentrant_timer_release() -> dict[str, Any]:
    """Timer handles are released when cancelled ones are swept from the heap and when a
    closing loop clears it; a release may run Python code (here: a value only the handle's
    context holds) that uses the loop's timers again."""
    loop = asyncio.get_running_loop()
    scheduled_in_release: list[asyncio.TimerHandle] = []

    class Canary:
        def __del__(self) -> None:
            scheduled_in_release.append(loop.call_later(3600, _noop))

    handles = []
    for _ in range(200):  # enough for the loop to sweep its cancelled timers at once
        token = _CANARY.set(Canary())
        handles.append(loop.call_later(3600, _noop))
        _CANARY.reset(token)
    for h in handles:
        h.cancel()
    del handles, h
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    swept = len(scheduled_in_release)
    for h in scheduled_in_release:
        h.cancel()

    other = type(loop)()
    lengths: list[int] = []

    class Witness:
        def __del__(self) -> None:
            lengths.append(len(other._scheduled))

    token = _CANARY.set(Witness())
    other.call_later(3600, _noop)
    _CANARY.reset(token)
    other.close()
    return {"released_by_sweep": swept, "heap_seen_while_closing": lengths}


def _noop() -> None:
    pass
