"""The blocking client against the fake server. The server runs in trio; each client runs in
a worker thread (trio.to_thread), as a blocking program would."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from librorum.client import SyncClient, connect
from librorum.errors import (
    AlreadyExistsError,
    ConnectionClosed,
    ConnectionTimeoutError,
    NotFoundError,
    UnauthorizedError,
)
from librorum.protocol.constants import Command, EntryKind, WriteMode
from librorum.protocol.messages import Cancel, FileRead, FileStat, FileWrite
from librorum.protocol.session import ServerLimits

from .conftest import TEST_TIMEOUT, start_server
from .fake_server import Behaviour, FakeServer

MiB = 1 << 20
T = TypeVar("T")


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


def local(path: Path, **kwargs: object) -> SyncClient:
    # A short timeout: a test that goes wrong fails in seconds, not in 30.
    return connect(path, transport="local", timeout=5, **kwargs)  # type: ignore[arg-type]


async def test_basics_over_a_unix_socket(
    nursery: trio.Nursery, socket_path: Path, tmp_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path)
        source = tmp_path / "src.bin"
        await trio.Path(source).write_bytes(os.urandom(2 * MiB + 1))

        def body() -> None:
            with local(socket_path) as client:
                assert client.ping() >= 0
                assert client.mkdir("/d").kind is EntryKind.DIRECTORY
                client.mkdir("/d/e/f", parents=True)
                assert client.write("/d/a", b"hello").size == 5
                assert client.stat("/d/a").size == 5
                for i in range(7):
                    client.write(f"/d/n{i}", bytes([i]) * i)
                names = [e.name for e in client.list("/d", page_size=3)]
                assert names == ["a", "e", *(f"n{i}" for i in range(7))]
                assert client.read("/d/a") == b"hello"
                assert client.read("/d/a", offset=1, length=3) == b"ell"
                assert client.rename("/d/a", "/d/b").path == "/d/b"
                assert client.delete("/d/b") == 1
                assert client.status().node_id == "fake-node"
                assert client.write("/empty", b"").size == 0
                assert client.read("/empty") == b""
                seen: list[int] = []
                client.write("/file", source, progress=lambda d, t: seen.append(d))
                assert seen[-1] == 2 * MiB + 1
                client.write("/iter", iter([b"ab", b"", b"cd" * MiB]))
                assert client.read("/iter") == b"ab" + b"cd" * MiB
                out = tmp_path / "out.bin"
                info = client.read_to_file("/file", out)
                assert info.size == 2 * MiB + 1
                assert out.read_bytes() == source.read_bytes()
                with pytest.raises(NotFoundError):
                    client.stat("/missing")
                with pytest.raises(AlreadyExistsError):
                    client.write("/file", b"x", mode=WriteMode.EXCLUSIVE)
                assert client.server is not None

        await in_thread(body)
        assert server.files["/file"] == await trio.Path(source).read_bytes()
        assert server.connections == 1


async def test_large_transfer_through_small_windows(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    window = 256 << 10
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, limits=ServerLimits(initial_window=window)
        )
        data = os.urandom(20 * MiB)

        def body() -> bytes:
            with local(socket_path, read_window=window) as client:
                client.write("/big", data)
                digest = hashlib.sha256()
                with client.open_read("/big") as stream:
                    for chunk in stream:
                        digest.update(chunk)
                return digest.digest()

        assert await in_thread(body) == hashlib.sha256(data).digest()
        assert server.files["/big"] == data
        assert server.windows_sent >= 20 * MiB // window - 1
        assert server.windows_received >= 20 * MiB // window - 1


async def test_drop_then_reconnect(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(drop_on_once=Command.STAT)
        )
        server.files["/f"] = b"abc"

        def body() -> None:
            with local(socket_path) as client:
                with pytest.raises(ConnectionClosed, match="outcome is unknown"):
                    client.stat("/f")
                assert client.stat("/f").size == 3

        await in_thread(body)
        assert server.connections == 2


async def test_resumable_write(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery,
            socket_path,
            limits=ServerLimits(initial_window=MiB),
            behaviour=Behaviour(drop_after_write_bytes_once=3 * MiB),
        )
        data = os.urandom(7 * MiB)

        def body() -> None:
            with local(socket_path) as client:
                assert client.write("/r", data, resumable=True).size == len(data)

        await in_thread(body)
        assert server.files["/r"] == data
        second = server.requests_of(FileWrite)[1]
        assert isinstance(second, FileWrite)
        assert second.offset == 3 * MiB


async def test_closing_a_read_early_cancels_it(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path)
        server.files["/big"] = os.urandom(16 * MiB)

        def body() -> None:
            with local(socket_path, read_window=MiB) as client:
                with client.open_read("/big") as stream:
                    assert next(stream)
                    with pytest.raises(RuntimeError, match="one request at a time"):
                        client.ping()
                # The stale frames of the READ and the CANCEL reply are discarded.
                for _ in range(3):
                    assert client.stat("/big").size == 16 * MiB

        await in_thread(body)
        await server.wait_for(Command.CANCEL)
        [(_, read_sid, _)] = [r for r in server.received if isinstance(r[2], FileRead)]
        assert server.requests_of(Cancel) == [Cancel(read_sid)]


async def test_receive_timeout_cancels_the_request(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(hold=frozenset({Command.STAT}))
        )

        def body() -> None:
            with connect(socket_path, transport="local", timeout=1.0) as client:
                with pytest.raises(ConnectionTimeoutError):
                    client.stat("/held")
                assert client.ping() >= 0  # same connection, still good

        await in_thread(body)
        [(_, stat_sid, _)] = [r for r in server.received if isinstance(r[2], FileStat)]
        assert server.requests_of(Cancel) == [Cancel(stat_sid)]
        assert server.connections == 1


async def test_goaway_refusal_is_retried(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(goaway_refuse_once=Command.WRITE)
        )

        def body() -> None:
            with local(socket_path) as client:
                assert client.write("/g", b"data").size == 4

        await in_thread(body)
        assert server.connections == 2
        assert server.files["/g"] == b"data"


async def test_websocket_with_a_token(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = FakeServer(behaviour=Behaviour(token="s3cret"))
        port = await nursery.start(server.serve_websocket)
        url = f"ws://127.0.0.1:{port}/lbru"
        data = os.urandom(3 * MiB + 11)

        def body() -> None:
            with connect(url, token="s3cret", timeout=5) as client:
                assert client.ping() >= 0
                client.write("/w", data)
                assert client.read("/w") == data
            with pytest.raises(UnauthorizedError, match="401"):
                connect(url, token="wrong", timeout=5)

        await in_thread(body)
        assert server.files["/w"] == data


async def test_no_daemon(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT), pytest.raises(ConnectionClosed, match="no daemon"):
        await in_thread(lambda: connect(tmp_path / "none.sock", transport="local"))
