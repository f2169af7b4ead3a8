"""Both clients against servers that break down: one that stops speaking LBRU after the
handshake (the request in flight fails with the protocol error, and the client tells the
server why, an ERROR on session 0, spec 7.3, before it closes), one that never answers
HELLO, and one that stops reading in the middle of an upload (the client's timeouts bound
both)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from librorum.client import connect, open_client
from librorum.errors import BadMagicError, ConnectionClosed, ConnectionTimeoutError
from librorum.protocol.session import (
    ConnectionEnded,
    HelloReceived,
    RequestReceived,
    ServerLimits,
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


async def unix_listener(path: Path) -> trio.socket.SocketType:
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(8)
    return listener


async def test_a_server_that_never_answers_hello(tmp_path: Path) -> None:
    """The connection lands in the listen queue and HELLO is sent; no reply ever comes."""
    path = tmp_path / "s.sock"
    with trio.fail_after(TEST_TIMEOUT), await unix_listener(path):
        with pytest.raises(ConnectionClosed, match=r"connecting to unix:.* took more than 0.3 s"):
            async with open_client(path, transport="local", connect_timeout=0.3):
                pass  # pragma: no cover
        with pytest.raises(ConnectionClosed, match=r"receive from unix:.*: nothing for 0.3 s"):
            await trio.to_thread.run_sync(
                lambda: connect(path, transport="local", connect_timeout=0.3)
            )


async def stop_reading_after_hello(listener: trio.socket.SocketType) -> None:
    """Answer HELLO with a large window, then read nothing more (until cancelled)."""
    connection, _ = await listener.accept()
    session = ServerSession(ServerLimits(initial_window=64 << 20))
    with connection:
        hello: list[HelloReceived] = []
        while not hello:
            session.receive_data(await connection.recv(65536))
            hello = [e for e in session.events() if isinstance(e, HelloReceived)]
        session.accept_hello(hello[0].hello)
        [(header, payload)] = session.frames_to_send()
        assert isinstance(payload, bytes | bytearray | memoryview)
        await connection.send(header + bytes(payload))
        await trio.sleep_forever()


async def test_a_server_that_stops_reading_mid_upload(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Sends are bounded by ``timeout``: the connection is then closed (a frame may have
    been cut in half) and the upload fails with ConnectionTimeoutError."""
    path = tmp_path / "s.sock"
    data = b"x" * (64 << 20)
    with trio.fail_after(TEST_TIMEOUT), await unix_listener(path) as listener:
        nursery.start_soon(stop_reading_after_hello, listener)
        async with open_client(path, transport="local", timeout=0.3, reconnect=False) as client:
            with pytest.raises(ConnectionTimeoutError, match=r"took more than 0\.3 s"):
                await client.write("/big", data)
            with pytest.raises(ConnectionClosed, match="reconnect is off"):
                await client.ping()
        nursery.start_soon(stop_reading_after_hello, listener)

        def sync_upload() -> None:
            with connect(path, transport="local", timeout=0.3, reconnect=False) as client:
                with pytest.raises(ConnectionTimeoutError, match=r"nothing for 0\.3 s"):
                    client.write("/big", data)
                with pytest.raises(ConnectionClosed, match="reconnect is off"):
                    client.ping()

        await trio.to_thread.run_sync(sync_upload)
