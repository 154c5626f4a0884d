"""TCP, Unix and UDP transports, servers and the low-level `sock_*` coroutines."""
from __future__ import annotations

import asyncio
import os
import socket
import struct
import tempfile
from typing import Any, Optional

PATTERN = bytes(range(256))


def payload(i: int, size: int) -> bytes:
    """What client `i` sends; py_asyncio_SUITE builds the same bytes to compare."""
    return b"%d:" % i + PATTERN * (size // 256)


class EchoServer(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> Optional[bool]:
        # Returning false closes the transport once the echo is flushed.
        return None


class Collect(asyncio.Protocol):
    """Keeps what it receives; `done` is the whole of it once the peer closes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.done.done():
            self.done.set_result(bytes(self.data))


async def _echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def _stream_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    echoed = await reader.read()
    writer.close()
    await writer.wait_closed()
    return echoed


def tracked(handler: Any, tasks: list["asyncio.Task[Any]"]) -> Any:
    """A stream handler whose tasks are kept, so that a scenario can wait for the server
    side to finish: a task still closing when the loop closes would be cancelled."""
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        await handler(reader, writer)
    return run


async def tcp_streams(clients: int, size: int) -> list[bytes]:
    handlers: list[asyncio.Task[Any]] = []
    server = await asyncio.start_server(tracked(_echo_stream, handlers), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def client(i: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return await _stream_client(reader, writer, payload(i, size))

    async with server:
        echoes = list(await asyncio.gather(*(client(i) for i in range(clients))))
        await asyncio.gather(*handlers)
    return echoes


def _listen_backlog(sock: Any) -> int:
    # For a listening socket Linux reports its accept-queue limit as tcpi_sacked.
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("8B6I", info)[13]


async def tcp_protocols(clients: int, size: int) -> tuple[int, int, bool, list[bytes]]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoServer, "127.0.0.1", 0, reuse_port=True, backlog=5)
    sock = server.sockets[0]
    port = sock.getsockname()[1]
    reuse_port = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    backlog = _listen_backlog(sock)
    # What SO_REUSEPORT is for: a second listener on the same port.
    twin = await loop.create_server(EchoServer, "127.0.0.1", port, reuse_port=True)
    twin_port = twin.sockets[0].getsockname()[1]
    twin.close()
    await twin.wait_closed()

    async def client(i: int) -> bytes:
        transport, proto = await loop.create_connection(Collect, "127.0.0.1", port)
        transport.write(payload(i, size))
        transport.write_eof()
        return await proto.done

    async with server:
        echoes = list(await asyncio.gather(*(client(i) for i in range(clients))))
    return reuse_port, backlog, twin_port == port, echoes


async def unix_sockets(size: int) -> tuple[bool, bytes, bytes]:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "echo.sock")
        server = await loop.create_unix_server(EchoServer, path)
        async with server:
            bound = server.sockets[0].getsockname() == path
            transport, proto = await loop.create_unix_connection(Collect, path)
            transport.write(payload(0, size))
            transport.write_eof()
            by_protocol = await proto.done
            reader, writer = await asyncio.open_unix_connection(path)
            by_stream = await _stream_client(reader, writer, payload(1, size))
    return bound, by_protocol, by_stream


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(b"echo:" + data, addr)


class UdpCollect(asyncio.DatagramProtocol):
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received: list[bytes] = []
        self.done: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        if len(self.received) == self.expected:
            self.done.set_result(self.received)


async def udp_echo(count: int) -> tuple[list[bytes], list[tuple[bytes, bool]]]:
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
    addr = server.get_extra_info("sockname")
    try:
        client, proto = await loop.create_datagram_endpoint(lambda: UdpCollect(count),
                                                            remote_addr=addr)
        for i in range(count):
            client.sendto(b"%d:" % i + PATTERN[: i * 10])
        by_protocol = await proto.done
        client.close()

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        low_level = []
        try:
            for i in range(count):
                await loop.sock_sendto(sock, b"raw %d" % i, addr)
                data, source = await loop.sock_recvfrom(sock, 65536)
                low_level.append((data, source == addr))
        finally:
            sock.close()
    finally:
        server.close()
    return by_protocol, low_level


async def sock_udp_waits() -> tuple[bool, bytes, bool, int, bytes]:
    """sock_recvfrom and sock_recvfrom_into that must wait for the datagram."""
    loop = asyncio.get_running_loop()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in (rx, tx):
            s.setblocking(False)
            s.bind(("127.0.0.1", 0))
        pending = asyncio.ensure_future(loop.sock_recvfrom(rx, 100))
        await asyncio.sleep(0)  # one step of the task: it now waits for readiness
        waiting = rx.fileno() in loop._selector.get_map()  # type: ignore[attr-defined]
        await loop.sock_sendto(tx, b"first", rx.getsockname())
        data, source = await pending
        buf = bytearray(100)
        pending_into = asyncio.ensure_future(loop.sock_recvfrom_into(rx, buf))
        await asyncio.sleep(0)
        await loop.sock_sendto(tx, b"second", rx.getsockname())
        n, _ = await pending_into
        return waiting, data, source == tx.getsockname(), n, bytes(buf[:n])
    finally:
        rx.close()
        tx.close()


async def sock_tcp(size: int) -> tuple[bool, bool, bytes, bytes, bytes]:
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    client = socket.socket()
    try:
        listener.setblocking(False)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client.setblocking(False)
        accepting = asyncio.ensure_future(loop.sock_accept(listener))
        await asyncio.sleep(0)  # sock_accept now waits for the connection
        await loop.sock_connect(client, listener.getsockname())
        conn, addr = await accepting
        with conn:
            data = payload(0, size)
            # Large enough that sock_sendall must wait for the reader to make room.
            sending = asyncio.ensure_future(loop.sock_sendall(client, data))
            await asyncio.sleep(0)
            sendall_waits = client.fileno() in loop._selector.get_map()  # type: ignore[attr-defined]
            got = bytearray()
            while len(got) < len(data) // 2:
                got += await loop.sock_recv(conn, 65536)
            buf = bytearray(65536)
            while len(got) < len(data):
                n = await loop.sock_recv_into(conn, buf)
                got += buf[:n]
            await sending
            await loop.sock_sendall(conn, b"reply")
            reply = bytearray(16)
            n = await loop.sock_recv_into(client, reply)
            client.shutdown(socket.SHUT_WR)
            eof = await loop.sock_recv(conn, 16)
        return addr == client.getsockname(), sendall_waits, bytes(got), bytes(reply[:n]), eof
    finally:
        listener.close()
        client.close()
