"""TLS servers and clients (`ssl=`) and `loop.start_tls`, with a self-signed certificate
for localhost shipped next to this module (localhost.pem, localhost.key)."""
from __future__ import annotations

import asyncio
import os
import ssl
import struct
from typing import Any, Optional

from aio_net import payload, tracked

HERE = os.path.dirname(os.path.abspath(__file__))
CERT = os.path.join(HERE, "localhost.pem")
KEY = os.path.join(HERE, "localhost.key")


def server_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CERT, KEY)
    return ctx


def client_context() -> ssl.SSLContext:
    # Verifies the server against the shipped certificate, hostname included.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(CERT)
    return ctx


async def _tls_echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # TLS has no half-close, so each message carries its length.
    (length,) = struct.unpack("!I", await reader.readexactly(4))
    writer.write(await reader.readexactly(length))
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def tls_echo(clients: int, size: int) -> tuple[list[bytes], list[str], list[Any]]:
    handlers: list[asyncio.Task[Any]] = []
    server = await asyncio.start_server(tracked(_tls_echo_handler, handlers), "127.0.0.1", 0,
                                        ssl=server_context())
    port = server.sockets[0].getsockname()[1]

    async def client(i: int) -> tuple[bytes, str, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(),
                                                       server_hostname="localhost")
        ssl_object = writer.get_extra_info("ssl_object")
        data = payload(i, size)
        writer.write(struct.pack("!I", len(data)) + data)
        echoed = await reader.readexactly(len(data))
        eof = await reader.read()
        writer.close()
        await writer.wait_closed()
        return echoed + eof, ssl_object.version(), ssl_object.getpeercert()["subject"]

    async with server:
        results = await asyncio.gather(*(client(i) for i in range(clients)))
        await asyncio.gather(*handlers)
    return [r[0] for r in results], [r[1] for r in results], [r[2] for r in results]


class Buffered(asyncio.Protocol):
    """Keeps what it receives, for `read_exactly`; `lost` resolves at connection_lost."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.buffer = bytearray()
        self.waiter: Optional[asyncio.Future[None]] = None
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data


class StartTlsServer(Buffered):
    """Plain text until `STARTTLS\\n`, answered `OK\\n`; then TLS, echoing."""

    def __init__(self) -> None:
        super().__init__()
        self.plain: bytes = b""
        self.upgraded: asyncio.Future[asyncio.BaseTransport] = \
            asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.plain:
            self.plain = data
            # No TLS bytes may reach this transport's plain protocol before start_tls
            # takes it over.
            self.transport.pause_reading()  # type: ignore[attr-defined]
            self.transport.write(b"OK\n")  # type: ignore[attr-defined]
            asyncio.ensure_future(self._upgrade())
        elif self.upgraded.done():
            self.upgraded.result().write(data)  # type: ignore[attr-defined]
        else:
            self.buffer += data

    async def _upgrade(self) -> None:
        loop = asyncio.get_running_loop()
        tls = await loop.start_tls(self.transport, self, server_context(),  # type: ignore[arg-type]
                                   server_side=True)
        assert tls is not None
        self.upgraded.set_result(tls)
        if self.buffer:
            tls.write(bytes(self.buffer))  # type: ignore[attr-defined]
            self.buffer.clear()


async def start_tls(size: int) -> tuple[bytes, bytes, str, bytes, str]:
    loop = asyncio.get_running_loop()
    servers: list[StartTlsServer] = []

    def factory() -> StartTlsServer:
        servers.append(StartTlsServer())
        return servers[-1]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        transport, proto = await loop.create_connection(Buffered, "127.0.0.1", port)
        transport.write(b"STARTTLS\n")
        ok = await proto.read_exactly(3)
        tls = await loop.start_tls(transport, proto, client_context(), server_hostname="localhost")
        assert tls is not None
        data = payload(0, size)
        tls.write(data)  # type: ignore[attr-defined]
        echoed = await proto.read_exactly(len(data))
        version = tls.get_extra_info("ssl_object").version()
        server_version = servers[0].upgraded.result().get_extra_info("ssl_object").version()
        tls.close()
        await servers[0].lost
    return ok, echoed, version, servers[0].plain, server_version
