"""Downloads end to end over real sockets: Unix sockets send DATA from the chunk files
(os.sendfile), WebSocket from the reader's buffers. Exact bytes, verification before any
byte is sent, cancellation, and a daemon whose memory does not follow the client's window.
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import blake3
import pytest
import trio

from librorum.client.sync import connect
from librorum.errors import CorruptDataError
from librorum.protocol.messages import FileRead, Ping
from librorum.protocol.session import (
    ClientSession,
    DataReceived,
    ErrorReceived,
    HelloAccepted,
    ReplyReceived,
)
from librorum.store import DEFAULT_CHUNK_SIZE
from librorum.testing import Transport, open_test_daemon
from librorum.transport import FrameTransport, connect_uds

CS = DEFAULT_CHUNK_SIZE
MIB = 1 << 20
SIZE = 2 * CS + 12345


def content(size: int = SIZE) -> bytes:
    """Bytes that differ in every chunk (so that no chunk is stored twice)."""
    block = os.urandom(MIB)
    return b"".join(bytes([index]) + block[1:] for index in range(-(-size // MIB)))[:size]


def chunk_file(data_dir: Path, chunk: bytes) -> Path:
    digest = blake3.blake3(chunk).hexdigest()
    [path] = data_dir.rglob(digest)
    return path


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def raw_connection(
    socket_path: Path, read_window: int = 4 * MIB
) -> tuple[FrameTransport, ClientSession]:
    """A connection driven by hand (the sans-I/O session over a real Unix socket) whose READs
    start with ``read_window`` of credit."""
    transport = await connect_uds(socket_path)
    session = ClientSession()
    session.hello(initial_window=read_window)
    await transport.send_frames(session.frames_to_send())
    while True:
        session.receive_data(await transport.receive_some())
        if any(isinstance(e, HelloAccepted) for e in session.events()):
            return transport, session


RANGES = [
    (0, None),
    (0, CS),
    (CS, CS),
    (CS - 10, 20),
    (CS - 1, 1),
    (CS, None),
    (2 * CS - 3, 3 + 12345),
    (SIZE, None),
    (SIZE - 1, None),
    (123, 3 * MIB + 7),
]


@pytest.mark.parametrize("transport", ["uds", "websocket"])
async def test_whole_files_and_ranges_arrive_exactly(transport: Transport, tmp_path: Path) -> None:
    data = content()
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon, daemon.client(transport) as client:
            await client.write("/f", data)
            await client.write("/empty", b"")
            for offset, length in RANGES:
                got = await client.read("/f", offset=offset, length=length)
                end = SIZE if length is None else offset + length
                assert got == data[offset:end], (offset, length)
            assert await client.read("/empty") == b""


async def test_sync_client_downloads_exactly(tmp_path: Path) -> None:
    data = content()

    def read_all(socket_path: Path) -> list[bytes]:
        with connect(transport="local", socket_path=socket_path) as client:
            client.write("/f", data)
            return [client.read("/f", offset=o, length=n) for o, n in RANGES]

    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            results = await trio.to_thread.run_sync(read_all, daemon.socket_path)
    for (offset, length), got in zip(RANGES, results, strict=True):
        end = SIZE if length is None else offset + length
        assert got == data[offset:end], (offset, length)


@pytest.mark.parametrize("transport", ["uds", "websocket"])
async def test_a_corrupt_chunk_is_never_sent(transport: Transport, tmp_path: Path) -> None:
    data = content()
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            async with daemon.client(transport) as client:
                await client.write("/f", data)
                path = chunk_file(daemon.config.data_dir, data[CS : 2 * CS])
                raw = bytearray(path.read_bytes())
                raw[CS // 2] ^= 0x01
                path.write_bytes(raw)
                with pytest.raises(CorruptDataError):
                    await client.read("/f")
                # Reads that avoid the corrupt chunk still work, on the same connection.
                assert await client.read("/f", length=CS) == data[:CS]
                assert await client.read("/f", offset=2 * CS) == data[2 * CS :]
            if transport != "uds":
                return
            # On the wire: every DATA byte before the ERROR is a byte of the file, and none
            # comes from the corrupt chunk (a client with a window larger than the file).
            connection, session = await raw_connection(daemon.socket_path, 64 * MIB)
            try:
                sid = session.start_request(FileRead("/f"))
                await connection.send_frames(session.frames_to_send())
                received = bytearray()
                error: ErrorReceived | None = None
                while error is None:
                    session.receive_data(await connection.receive_some())
                    for event in session.events():
                        if isinstance(event, DataReceived) and event.session_id == sid:
                            received += event.data
                        elif isinstance(event, ErrorReceived) and event.session_id == sid:
                            error = event
            finally:
                await connection.aclose()
            assert isinstance(error.exception, CorruptDataError)
            assert len(received) <= CS
            assert received == data[: len(received)]


@pytest.mark.parametrize("transport", ["uds", "websocket"])
async def test_cancelling_mid_download(transport: Transport, tmp_path: Path) -> None:
    data = content(6 * CS)
    before = open_fds()
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon, daemon.client(transport) as client:
            await client.write("/f", data)
            # Leave a read after its first chunk: the read is cancelled on the server.
            async with client.open_read("/f") as stream:
                first = await stream.receive_some()
                assert first == data[: len(first)]
            # Cancel a read while it waits for data.
            with trio.CancelScope() as scope:
                async with client.open_read("/f") as stream:
                    await stream.receive_some()
                    scope.cancel()
                    await stream.receive_some()
            assert scope.cancelled_caught
            # The connection still serves, exact bytes.
            assert await client.read("/f") == data
            await client.ping()
    # Every descriptor the reads opened (verified ahead, or being sent) was closed.
    assert open_fds() == before


async def test_a_slow_reader_keeps_the_daemon_memory_bounded(tmp_path: Path) -> None:
    data = content(8 * CS)
    with trio.fail_after(120):
        async with open_test_daemon(tmp_path) as daemon:
            async with daemon.client() as client:
                await client.write("/f", data)
            # A window as large as the file: only the daemon's own bounds limit what it buffers.
            connection, session = await raw_connection(daemon.socket_path, len(data))
            tracemalloc.start()
            try:
                sid = session.start_request(FileRead("/f"))
                await connection.send_frames(session.frames_to_send())
                digest = blake3.blake3()
                received = 0
                done = False
                while not done:
                    # Small reads: the daemon is always far ahead of this reader.
                    session.receive_data(await connection.receive_some(64 << 10))
                    for event in session.events():
                        if isinstance(event, DataReceived) and event.session_id == sid:
                            digest.update(event.data)
                            received += len(event.data)
                            done = event.end
                        elif isinstance(event, ErrorReceived):
                            raise event.exception
                _current, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
                await connection.aclose()
            assert received == len(data)
            assert digest.digest() == blake3.blake3(data).digest()
            # The file is 32 MiB and the window as large; the daemon (this process, with the
            # reader's 1 MiB frames) holds far less: no chunk is copied into memory at all.
            assert peak < 8 * MIB


async def test_pings_are_answered_during_a_download(tmp_path: Path) -> None:
    data = content(4 * CS)
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            async with daemon.client() as client:
                await client.write("/f", data)
            connection, session = await raw_connection(daemon.socket_path)
            try:
                read = session.start_request(FileRead("/f"))
                ping = session.start_request(Ping())
                await connection.send_frames(session.frames_to_send())
                received = bytearray()
                pong_after: int | None = None  # bytes of the file received before the pong
                while session.in_flight():
                    session.receive_data(await connection.receive_some())
                    for event in session.events():
                        if isinstance(event, DataReceived) and event.session_id == read:
                            received += event.data
                            session.grant(read, len(event.data))
                        elif isinstance(event, ReplyReceived) and event.session_id == ping:
                            pong_after = len(received)
                    await connection.send_frames(session.frames_to_send())
            finally:
                await connection.aclose()
            assert pong_after is not None
            assert pong_after < len(data)  # answered while the download was under way
            assert received == data
