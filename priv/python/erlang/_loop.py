"""`ErlangEventLoop`: an asyncio event loop whose timers and fd readiness come from an
Erlang event process.

The scheduling core (`call_soon`, `call_later`, `call_at`, `time`, `_run_once`, handles)
is native (`_pybeam.LoopCore`); everything else is asyncio's own code for Unix selector
loops (transports, servers, SSL, datagrams, Unix sockets, pipes, executors, DNS), working
through a selector backed by the event process. Child processes are spawned natively and
reaped through pidfds, because the BEAM ignores SIGCHLD.
"""
from __future__ import annotations

import asyncio
from asyncio import unix_events
from typing import Any

from _pybeam import LoopCore

from ._selector import BeamSelector
from . import _subprocess, _transports


class ErlangEventLoop(LoopCore, unix_events._UnixSelectorEventLoop):  # type: ignore[misc]
    """An asyncio event loop driven by an Erlang event process.

    Made from Python code (``ErlangEventLoop()`` or :func:`erlang.new_event_loop`), it gets
    its own event process and runs on the thread that calls ``run_forever``. Each pybeam
    loop's own thread also runs one, for its whole life.
    """

    def __init__(self, *, _link: Any = None) -> None:
        # `_link` was taken by LoopCore.__new__.
        super().__init__(selector=BeamSelector(self))
        # asyncio's C tasks and futures look up `loop.call_soon` for every step and every
        # done callback; found in the instance dict it is returned as is, instead of a new
        # bound method each time (about 8% of a task-heavy loop's time, and garbage for the
        # collector). Bound now, so a subclass's override is the one kept. close() drops it.
        self.__dict__["call_soon"] = self.call_soon

    # The native core wakes the loop; there is no self-pipe.
    def _make_self_pipe(self) -> None:
        pass

    def _close_self_pipe(self) -> None:
        pass

    def _process_self_data(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        super().close()
        # The bound method refers to the loop: dropped so a closed loop is freed at once.
        self.__dict__.pop("call_soon", None)
        self._release_link()

    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:
        """Not available: signals belong to the BEAM, which runs this loop's thread.

        Raises NotImplementedError, as asyncio's loops do where signals are unsupported.
        """
        raise NotImplementedError("signals belong to the BEAM; ErlangEventLoop cannot handle them")

    def remove_signal_handler(self, sig: int) -> bool:
        return False

    # asyncio's transports, reading into a reused buffer instead of a fresh 256 KiB one.
    def _make_socket_transport(self, sock: Any, protocol: asyncio.BaseProtocol, waiter: Any = None, *,
                               extra: Any = None, server: Any = None) -> asyncio.Transport:
        return _transports.make_socket_transport(self, sock, protocol, waiter,
                                                 extra=extra, server=server)

    def _make_datagram_transport(self, sock: Any, protocol: asyncio.BaseProtocol, address: Any = None,
                                 waiter: Any = None, extra: Any = None) -> asyncio.DatagramTransport:
        return _transports.make_datagram_transport(self, sock, protocol, address, waiter, extra)

    async def _make_subprocess_transport(self, protocol: asyncio.BaseProtocol, args: Any, shell: bool,
                                         stdin: Any, stdout: Any, stderr: Any, bufsize: int,
                                         extra: Any = None, **kwargs: Any) -> asyncio.SubprocessTransport:
        return await _subprocess.make_transport(self, protocol, args, shell, stdin, stdout,
                                                stderr, bufsize, extra=extra, **kwargs)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An event loop policy whose loops are `ErlangEventLoop`s."""

    def new_event_loop(self) -> ErlangEventLoop:
        return ErlangEventLoop()


def new_event_loop() -> ErlangEventLoop:
    """A new `ErlangEventLoop`, with its own event process."""
    return ErlangEventLoop()
