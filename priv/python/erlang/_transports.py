"""Socket and datagram transports that read into a reused buffer.

asyncio's selector transports read with `sock.recv(max_size)` (256 KiB): every read
allocates a fresh 256 KiB object and shrinks it to what arrived. Above glibc's default
mmap threshold (128 KiB) that is an `mmap`, an `mremap` and, once the data is consumed, a
`munmap`: three system calls and page faults per read, whatever its size. These subclasses
read with `recv_into`/`recvfrom_into` into one buffer per thread and hand the protocol
`bytes` of exactly what arrived, so a read costs one copy of its own size.

Everything else is asyncio's: BufferedProtocol reads (already `recv_into` the protocol's
own buffer), EOF, pause and resume, errors. The read methods below follow asyncio's
line for line except for the read itself.
"""
from __future__ import annotations

import threading
from asyncio import selector_events
from typing import Any

_local = threading.local()


def _buffer(size: int) -> memoryview:
    """A view of this thread's read buffer, at least `size` bytes.

    Per thread, not per transport: a read is copied out before any protocol code runs,
    so every transport (and loop) on a thread can share it, and 100 connections do not
    hold 100 buffers.
    """
    view: memoryview | None = getattr(_local, "view", None)
    if view is None or len(view) < size:
        view = memoryview(bytearray(size))
        _local.view = view
    return view


class SocketTransport(selector_events._SelectorSocketTransport):  # type: ignore[name-defined,misc]
    def _read_ready__data_received(self) -> None:
        if self._conn_lost:
            return
        view = _buffer(self.max_size)
        try:
            nbytes = self._sock.recv_into(view, self.max_size)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, 'Fatal read error on socket transport')
            return

        if not nbytes:
            self._read_ready__on_eof()
            return

        data = bytes(view[:nbytes])
        try:
            self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, 'Fatal error: protocol.data_received() call failed.')


class DatagramTransport(selector_events._SelectorDatagramTransport):  # type: ignore[name-defined,misc]
    def _read_ready(self) -> None:
        if self._conn_lost:
            return
        view = _buffer(self.max_size)
        try:
            nbytes, addr = self._sock.recvfrom_into(view, self.max_size)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, 'Fatal read error on datagram transport')
        else:
            self._protocol.datagram_received(bytes(view[:nbytes]), addr)


def make_socket_transport(loop: Any, sock: Any, protocol: Any, waiter: Any = None, *,
                          extra: Any = None, server: Any = None) -> SocketTransport:
    return SocketTransport(loop, sock, protocol, waiter, extra, server)


def make_datagram_transport(loop: Any, sock: Any, protocol: Any, address: Any = None,
                            waiter: Any = None, extra: Any = None) -> DatagramTransport:
    return DatagramTransport(loop, sock, protocol, address, waiter, extra)
