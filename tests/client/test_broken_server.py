"""Both clients against a server that stops speaking LBRU after the handshake: the request
in flight fails with the protocol error, and the client tells the server why (an ERROR on
session 0, spec 7.3) before it closes the connection."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from librorum.client import connect, open_client
from librorum.errors import BadMagicError
from librorum.protocol.session import (
    ConnectionEnded,
    HelloReceived,
    RequestReceived,
    ServerSession,
)

from .conftest import TEST_TIMEOUT

GARBAGE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class GarbageServer:
    """Answers HELLO, then answers the first request with an HTTP response."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        #: How the client ended the connection.
        self.ended: ConnectionEnded | None = None
        self.done = trio.Event()

    async def listen(self) -> None:
        await self.listener.bind(str(self.path))
        self.listener.listen(1)

    async def serve_one(self) -> None:
        with self.listener:
            connection, _ = await self.listener.accept()
        session = ServerSession()
        with connection:
            while self.ended is None:
                data = await connection.recv(65536)
                assert data, "the client closed without a word"
                session.receive_data(data)
                for event in session.events():
                    if isinstance(event, HelloReceived):
                        session.accept_hello(event.hello)
                    elif isinstance(event, RequestReceived):
                        await connection.send(GARBAGE)
                    elif isinstance(event, ConnectionEnded):
                        self.ended = event
                for header, payload in session.frames_to_send():
                    assert isinstance(payload, bytes | bytearray | memoryview)
                    await connection.send(header + bytes(payload))
        self.done.set()


async def test_async_client(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = GarbageServer(tmp_path / "s.sock")
    with trio.fail_after(TEST_TIMEOUT):
        await server.listen()
        nursery.start_soon(server.serve_one)
        async with open_client(server.path, transport="local", reconnect=False) as client:
            with pytest.raises(BadMagicError, match="not an LBRU frame"):
                await client.ping()
        await server.done.wait()
    assert server.ended is not None
    assert isinstance(server.ended.error, BadMagicError)


async def test_sync_client(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = GarbageServer(tmp_path / "s.sock")

    def body() -> None:
        client = connect(server.path, transport="local", reconnect=False, timeout=5)
        with client, pytest.raises(BadMagicError, match="not an LBRU frame"):
            client.ping()

    with trio.fail_after(TEST_TIMEOUT):
        await server.listen()
        nursery.start_soon(server.serve_one)
        await trio.to_thread.run_sync(body)
        await server.done.wait()
    assert server.ended is not None
    assert isinstance(server.ended.error, BadMagicError)
