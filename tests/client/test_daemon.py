"""The clients against the real daemon (librorum.testing): the behaviours that depend on the
server's side of the protocol (CANCEL outcomes, UPLOAD_STATUS after a disconnect), which the
fake server only imitates."""

from __future__ import annotations

import hashlib
import os
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio

from librorum.client import Client, connect, open_client
from librorum.client._async_driver import AsyncConnection
from librorum.errors import ConnectionClosed, NotFoundError
from librorum.protocol.constants import DEFAULT_MAX_STREAMS
from librorum.testing import TestDaemon, Transport, open_test_daemon

MiB = 1 << 20
TRANSPORTS: list[Transport] = ["uds", "websocket"]


def current_connection(client: Client) -> AsyncConnection:
    conn = client._conn
    assert conn is not None
    return conn


def small_window_client(
    daemon: TestDaemon, transport: Transport
) -> AbstractAsyncContextManager[Client]:
    # 64 KiB read windows: a 1 MiB READ stays in flight until the client takes its data.
    if transport == "uds":
        return open_client(daemon.socket_path, transport="local", read_window=64 << 10)
    return open_client(daemon.url, token_file=daemon.token_file, read_window=64 << 10)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_abandoned_reads_give_their_streams_back(
    transport: Transport, tmp_path: Path
) -> None:
    """More abandoned READs than the server allows streams: each one's slot must come back
    with its CANCEL reply, or this would wait forever for a free stream."""
    with trio.fail_after(60):
        async with (
            open_test_daemon(tmp_path) as daemon,
            small_window_client(daemon, transport) as client,
        ):
            await client.write("/big", os.urandom(MiB))
            for _ in range(DEFAULT_MAX_STREAMS + 20):
                async with client.open_read("/big") as stream:
                    assert await stream.receive_some()
            assert (await client.stat("/big")).size == MiB


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resumable_upload_survives_a_dropped_connection(
    transport: Transport, tmp_path: Path
) -> None:
    data = os.urandom(12 * MiB + 5)
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon, daemon.client(transport) as client:
            first = current_connection(client)

            def progress(done: int, total: int | None) -> None:
                # Cut the connection under the upload, as a network failure would.
                if done >= 5 * MiB and first.error is None:
                    first.die(ConnectionClosed("cut by the test"))

            info = await client.write("/r", data, resumable=True, progress=progress)
            assert first.error is not None
            assert current_connection(client) is not first
            assert info.size == len(data)
            assert hashlib.sha256(await client.read("/r")).digest() == (
                hashlib.sha256(data).digest()
            )


async def test_an_interrupted_plain_upload_commits_nothing(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon, daemon.client() as client:
            first = current_connection(client)

            def progress(done: int, total: int | None) -> None:
                if done >= 2 * MiB:
                    first.die(ConnectionClosed("cut by the test"))

            with pytest.raises(ConnectionClosed):
                await client.write("/p", os.urandom(6 * MiB), progress=progress)
            with pytest.raises(NotFoundError):
                await client.stat("/p")


async def test_cancelled_upload_leaves_nothing(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon, daemon.client() as client:
            with trio.CancelScope() as scope:

                def progress(done: int, total: int | None) -> None:
                    if done >= 2 * MiB:
                        scope.cancel()

                await client.write("/c", os.urandom(6 * MiB), progress=progress)
            assert scope.cancelled_caught
            with pytest.raises(NotFoundError):
                await client.stat("/c")
            assert await client.ping() >= 0


async def test_sync_client_against_the_daemon(tmp_path: Path) -> None:
    data = os.urandom(5 * MiB + 3)
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:

            def body() -> None:
                for target, options in (
                    (daemon.socket_path, {"transport": "local"}),
                    (daemon.url, {"token_file": daemon.token_file}),
                ):
                    with connect(target, timeout=10, **options) as client:  # type: ignore[arg-type]
                        client.mkdir("/s", parents=True)
                        client.write("/s/f", data)
                        assert client.read("/s/f") == data
                        with client.open_read("/s/f") as stream:
                            assert next(stream)
                        assert [e.name for e in client.list("/s")] == ["f"]
                        assert client.delete("/s", recursive=True) == 2

            await trio.to_thread.run_sync(body)


async def test_sync_resumable_upload_survives_a_dropped_connection(tmp_path: Path) -> None:
    data = os.urandom(9 * MiB + 1)
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:

            def body() -> None:
                with connect(daemon.socket_path, transport="local", timeout=10) as client:
                    first = client._conn
                    assert first is not None

                    def progress(done: int, total: int | None) -> None:
                        if done >= 5 * MiB and first.error is None:
                            first.die(ConnectionClosed("cut by the test"))

                    info = client.write("/r", data, resumable=True, progress=progress)
                    assert info.size == len(data)
                    assert client._conn is not first
                    assert client.read("/r") == data

            await trio.to_thread.run_sync(body)
