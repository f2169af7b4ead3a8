"""The async client against the fake server (real ServerSession, real Unix socket)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from librorum.client import Client, WriteMode, open_client
from librorum.errors import (
    AlreadyExistsError,
    ConflictError,
    ConnectionClosed,
    ConnectionTimeoutError,
    CorruptDataError,
    ErrorCode,
    FlowControlError,
    IsADirectoryError_,
    LocalProtocolError,
    NotADirectoryError_,
    NotEmptyError,
    NotFoundError,
    RemoteProtocolError,
    UnauthorizedError,
    UnavailableError,
)
from librorum.protocol.constants import CancelOutcome, Command, EntryKind
from librorum.protocol.messages import Cancel, FileRead, FileStat, FileWrite, UploadStatus
from librorum.protocol.session import ServerLimits

from .conftest import TEST_TIMEOUT, start_server
from .fake_server import Behaviour, FakeServer

MiB = 1 << 20


async def test_unary_methods(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path)
        async with open_client(socket_path, transport="local") as client:
            assert await client.ping() >= 0
            info = await client.mkdir("/a")
            assert info.kind is EntryKind.DIRECTORY
            await client.mkdir("/a/b/c", parents=True)
            written = await client.write("/a/f", b"hello")
            assert written.size == 5
            assert (await client.stat("/a/f")).size == 5
            names = [e.name for e in await client.list("/a")]
            assert names == ["b", "f"]
            moved = await client.rename("/a/f", "/a/g")
            assert moved.path == "/a/g"
            assert await client.delete("/a/g") == 1
            assert await client.delete("/a", recursive=True) == 3
            status = await client.status()
            assert status.node_id == "fake-node"
            assert client.server is not None
            assert client.server.max_streams == server.limits.max_streams


async def test_list_pages_through_cursors(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path)
        server.dirs.add("/d")
        for i in range(10):
            server.files[f"/d/{i:02}"] = b"x" * i
        async with open_client(socket_path, transport="local") as client:
            entries = await client.list("/d", page_size=3)
            assert [e.name for e in entries] == [f"{i:02}" for i in range(10)]
            assert [e.size for e in entries] == list(range(10))
            seen = [e.name async for e in client.iter_list("/d", page_size=4)]
            assert len(seen) == 10
            with pytest.raises(NotADirectoryError_):
                await client.list("/d/01")
        assert server.counts[Command.LIST] == 4 + 3 + 1


async def test_errors_map_to_their_exception_classes(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        await start_server(nursery, socket_path)
        async with open_client(socket_path, transport="local") as client:
            with pytest.raises(NotFoundError) as caught:
                await client.stat("/missing")
            assert caught.value.code is ErrorCode.NOT_FOUND
            assert "/missing" in str(caught.value)
            await client.mkdir("/d")
            with pytest.raises(AlreadyExistsError):
                await client.mkdir("/d")
            await client.write("/d/f", b"1")
            with pytest.raises(NotEmptyError):
                await client.delete("/d")
            with pytest.raises(AlreadyExistsError):
                await client.write("/d/f", b"2", mode=WriteMode.EXCLUSIVE)
            with pytest.raises(NotFoundError):
                await client.write("/d/new", b"2", mode=WriteMode.OVERWRITE)
            with pytest.raises(IsADirectoryError_):
                await client.read("/d")
            # The connection survives request errors.
            assert await client.read("/d/f") == b"1"


async def test_write_and_read_variants(
    nursery: trio.Nursery, socket_path: Path, tmp_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path)
        async with open_client(socket_path, transport="local") as client:
            # Empty file: WRITE with END, READ answered by one reply with END.
            assert (await client.write("/empty", b"")).size == 0
            assert await client.read("/empty") == b""
            # Ranges.
            await client.write("/f", bytearray(b"0123456789"))
            assert await client.read("/f", offset=3, length=4) == b"3456"
            assert await client.read("/f", offset=8) == b"89"
            # From a local file, with progress.
            local = tmp_path / "local.bin"
            local.write_bytes(os.urandom(3 * MiB + 5))
            calls: list[tuple[int, int | None]] = []
            await client.write("/from-file", local, progress=lambda d, t: calls.append((d, t)))
            assert server.files["/from-file"] == local.read_bytes()
            assert calls[-1] == (3 * MiB + 5, 3 * MiB + 5)
            assert [d for d, _ in calls] == sorted(d for d, _ in calls)

            # From an async iterable of unknown size (ends with an empty END frame).
            async def parts() -> AsyncIterator[bytes]:
                for i in range(5):
                    yield bytes([i]) * (MiB // 2 + 7)

            await client.write("/from-iter", parts())
            assert server.files["/from-iter"] == b"".join(
                bytes([i]) * (MiB // 2 + 7) for i in range(5)
            )
            # The same with the size announced up front.
            await client.write("/sized", parts(), size=5 * (MiB // 2 + 7))
            assert server.requests_of(FileWrite)[-1].size == 5 * (MiB // 2 + 7)  # type: ignore[union-attr]
            # Download to a file, with progress; no partial file is left next to it.
            out = tmp_path / "out.bin"
            seen: list[int] = []
            info = await client.read_to_file(
                "/from-file", out, progress=lambda d, t: seen.append(d)
            )
            assert out.read_bytes() == local.read_bytes()
            assert info.size == 3 * MiB + 5
            assert seen[-1] == info.size
            assert sorted(p.name for p in await trio.Path(tmp_path).iterdir()) == [
                "lbru.sock",
                "local.bin",
                "out.bin",
            ]
            with pytest.raises(TypeError):
                await client.write("/x", "text")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="size"):
                await client.write("/x", b"abc", size=4)


async def test_large_write_and_read_through_small_windows(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    """20 MiB each way with 256 KiB windows: dozens of WINDOW round trips each way."""
    window = 256 << 10
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, limits=ServerLimits(initial_window=window)
        )
        data = os.urandom(20 * MiB)
        async with open_client(socket_path, transport="local", read_window=window) as client:
            info = await client.write("/big", data)
            assert info.size == len(data)
            assert hashlib.sha256(server.files["/big"]).digest() == hashlib.sha256(data).digest()
            digest = hashlib.sha256()
            async with client.open_read("/big") as stream:
                assert stream.length == len(data)
                async for chunk in stream:
                    assert len(chunk) <= window
                    digest.update(chunk)
            assert digest.digest() == hashlib.sha256(data).digest()
        # Credit went back and forth: 80 windows' worth each way.
        assert server.windows_sent >= 20 * MiB // window - 1
        assert server.windows_received >= 20 * MiB // window - 1


async def test_many_tasks_share_one_connection_out_of_order(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    tasks = 40
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path, behaviour=Behaviour(reverse_after=tasks))
        for i in range(tasks):
            server.files[f"/f{i}"] = b"x" * i
        results: dict[int, int] = {}
        async with open_client(socket_path, transport="local") as client:

            async def one(i: int) -> None:
                results[i] = (await client.stat(f"/f{i}")).size

            async with trio.open_nursery() as tasks_nursery:
                for i in range(tasks):
                    tasks_nursery.start_soon(one, i)
        assert results == {i: i for i in range(tasks)}
        assert server.connections == 1
        # Every reply went out newest first.
        assert server.reply_order == sorted(server.reply_order, reverse=True)


async def test_stream_limit_from_hello_is_respected(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    limits = ServerLimits(max_streams=4, max_uploads=2, initial_window=64 << 10)
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, limits=limits, behaviour=Behaviour(reverse_after=3)
        )
        async with (
            open_client(socket_path, transport="local") as client,
            trio.open_nursery() as tasks,
        ):
            for _ in range(30):
                tasks.start_soon(client.ping)
            for i in range(6):
                tasks.start_soon(client.write, f"/w{i}", os.urandom(300 << 10))
        # One stream stays free for CANCEL; the server never had to refuse with BUSY.
        assert server.max_in_flight <= 3
        assert len(server.files) == 6


async def test_early_error_stops_an_upload(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        await start_server(nursery, socket_path, limits=ServerLimits(initial_window=64 << 10))
        async with open_client(socket_path, transport="local") as client:
            with pytest.raises(NotFoundError):
                await client.write("/no/such/dir/f", os.urandom(4 * MiB))
            assert await client.ping() >= 0


async def test_dropped_connection_fails_the_request_then_reconnects(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(drop_on_once=Command.STAT)
        )
        server.files["/f"] = b"abc"
        async with open_client(socket_path, transport="local") as client:
            with pytest.raises(ConnectionClosed, match="outcome is unknown"):
                await client.stat("/f")
            assert (await client.stat("/f")).size == 3
        assert server.connections == 2


async def test_no_reconnect_when_disabled(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        await start_server(nursery, socket_path, behaviour=Behaviour(drop_on_once=Command.PING))
        async with open_client(socket_path, transport="local", reconnect=False) as client:
            with pytest.raises(ConnectionClosed):
                await client.ping()
            with pytest.raises(ConnectionClosed, match="reconnect is off"):
                await client.ping()


async def test_connection_level_error_is_raised_as_its_class(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        await start_server(
            nursery,
            socket_path,
            behaviour=Behaviour(fail_connection_once=FlowControlError("window overrun")),
        )
        async with open_client(socket_path, transport="local") as client:
            with pytest.raises(FlowControlError, match="window overrun"):
                await client.ping()
            assert await client.ping() >= 0  # a new connection


async def test_goaway_moves_new_requests_to_a_new_connection(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path, behaviour=Behaviour(goaway_after=2))
        async with open_client(socket_path, transport="local") as client:
            for _ in range(5):
                await client.ping()
        assert server.connections == 3


@pytest.mark.parametrize(
    "command", [Command.STAT, Command.READ, Command.WRITE], ids=lambda c: c.name
)
async def test_request_refused_after_goaway_is_retried_on_a_new_connection(
    nursery: trio.Nursery, socket_path: Path, command: Command
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(goaway_refuse_once=command)
        )
        server.files["/f"] = b"content"
        async with open_client(socket_path, transport="local") as client:
            if command is Command.STAT:
                assert (await client.stat("/f")).size == 7
            elif command is Command.READ:
                assert await client.read("/f") == b"content"
            else:
                assert (await client.write("/f", b"new content")).size == 11
        assert server.connections == 2
        assert server.counts[command] == 2


async def test_error_in_the_middle_of_a_read_discards_its_data(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(corrupt_read_after=2 * MiB)
        )
        server.files["/f"] = os.urandom(5 * MiB)
        async with open_client(socket_path, transport="local") as client:
            with pytest.raises(CorruptDataError):
                await client.read("/f")
            received = 0

            async def consume() -> None:
                nonlocal received
                async with client.open_read("/f") as stream:
                    async for chunk in stream:
                        received += len(chunk)

            with pytest.raises(CorruptDataError):
                await consume()
            assert received <= 2 * MiB
            assert (await client.stat("/f")).size == 5 * MiB


async def test_resumable_write_resumes_after_a_drop(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery,
            socket_path,
            limits=ServerLimits(initial_window=MiB),
            behaviour=Behaviour(drop_after_write_bytes_once=5 * MiB),
        )
        data = os.urandom(12 * MiB + 3)
        async with open_client(socket_path, transport="local") as client:
            info = await client.write("/r", data, resumable=True)
        assert info.size == len(data)
        assert server.files["/r"] == data
        first, second = server.requests_of(FileWrite)
        assert isinstance(first, FileWrite)
        assert isinstance(second, FileWrite)
        assert first.upload_id == second.upload_id
        assert first.upload_id is not None
        assert len(first.upload_id) >= 16
        assert second.offset == 5 * MiB
        assert len(server.requests_of(UploadStatus)) == 1


async def test_write_from_an_iterable_does_not_resume(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        await start_server(
            nursery, socket_path, behaviour=Behaviour(drop_after_write_bytes_once=MiB)
        )

        async def parts() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"z" * MiB

        async with open_client(socket_path, transport="local") as client:
            with pytest.raises(ConnectionClosed):
                await client.write("/i", parts(), resumable=True)


async def test_leaving_a_read_early_sends_cancel(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path)
        server.files["/big"] = os.urandom(16 * MiB)
        async with open_client(socket_path, transport="local", read_window=MiB) as client:
            async with client.open_read("/big") as stream:
                async for _chunk in stream:
                    break
            await server.wait_for(Command.CANCEL)
            [(_, read_sid, _)] = [r for r in server.received if isinstance(r[2], FileRead)]
            [cancel] = server.requests_of(Cancel)
            assert cancel == Cancel(read_sid)
            # The connection is still good, and the READ's slot came back.
            for _ in range(3):
                assert (await client.stat("/big")).size == 16 * MiB


async def test_cancelled_task_sends_cancel_without_waiting(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(hold=frozenset({Command.STAT}))
        )
        async with open_client(socket_path, transport="local") as client:
            with trio.CancelScope() as scope:

                async def cancel_when_seen() -> None:
                    await server.wait_for(Command.STAT)
                    scope.cancel()

                nursery.start_soon(cancel_when_seen)
                await client.stat("/held")
            assert scope.cancelled_caught
            await server.wait_for(Command.CANCEL)
            [(_, stat_sid, _)] = [r for r in server.received if isinstance(r[2], FileStat)]
            assert server.requests_of(Cancel) == [Cancel(stat_sid)]
            assert await client.ping() >= 0


async def test_cancel_outcome_reaches_the_server_for_an_upload(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    """A write cancelled mid-upload: the server aborts it and nothing is stored."""
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path, limits=ServerLimits(initial_window=MiB))
        async with open_client(socket_path, transport="local") as client:
            with trio.CancelScope() as scope:

                def progress(done: int, total: int | None) -> None:
                    if done >= 2 * MiB:
                        scope.cancel()

                await client.write("/partial", os.urandom(8 * MiB), progress=progress)
            await server.wait_for(Command.CANCEL)
            [(_, write_sid, _)] = [r for r in server.received if isinstance(r[2], FileWrite)]
            assert server.requests_of(Cancel) == [Cancel(write_sid)]
            assert await client.ping() >= 0  # the CANCEL reply came before the PING's
            assert server.cancel_outcomes == [CancelOutcome.ABORTED]
            assert "/partial" not in server.files


async def test_auto_uses_the_local_socket(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        await start_server(nursery, socket_path)
        async with open_client(socket_path=socket_path, url="ws://127.0.0.1:9/") as client:
            await client.ping()
            assert str(client.endpoint) == f"unix:{socket_path}"


async def test_no_daemon_raises_connection_closed(tmp_path: Path) -> None:
    with (
        trio.fail_after(TEST_TIMEOUT),
        pytest.raises(ConnectionClosed, match=r"no daemon at .*librorum serve"),
    ):
        async with open_client(tmp_path / "nothing.sock", transport="local"):
            pass  # pragma: no cover


async def test_client_body_exception_is_not_wrapped(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        await start_server(nursery, socket_path)
        with pytest.raises(NotFoundError):
            async with open_client(socket_path, transport="local") as client:
                await client.stat("/nope")


async def test_websocket_with_a_token(nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = FakeServer(behaviour=Behaviour(token="s3cret"))
        port = await nursery.start(server.serve_websocket)
        url = f"ws://127.0.0.1:{port}/"
        data = os.urandom(3 * MiB)
        async with open_client(url, token="s3cret") as client:
            assert await client.ping() >= 0
            await client.write("/w", data)
            assert await client.read("/w") == data
            assert str(client.endpoint) == url
        with pytest.raises(UnauthorizedError):
            async with open_client(url, token="wrong", reconnect=False):
                pass  # pragma: no cover


async def test_token_file_is_read(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = FakeServer(behaviour=Behaviour(token="from-a-file"))
        port = await nursery.start(server.serve_websocket)
        token_file = tmp_path / "token"
        await trio.Path(token_file).write_text("from-a-file\n")
        async with open_client(
            transport="remote", url=f"ws://127.0.0.1:{port}", token_file=token_file
        ) as client:
            await client.ping()


async def test_reconnect_retries_with_backoff(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(drop_on_once=Command.PING)
        )
        async with open_client(socket_path, transport="local") as client:
            with pytest.raises(ConnectionClosed):
                await client.ping()
            # The daemon "restarts": the next three connections close before HELLO.
            server.behaviour.close_first_connections = 3
            start = trio.current_time()
            assert await client.ping() >= 0
            # Immediately, then after 0.05, 0.1 and 0.2 s.
            assert trio.current_time() - start >= 0.05 + 0.1 + 0.2
        assert server.refused == 3
        assert server.connections == 2


async def test_reconnect_gives_up_after_its_attempts(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(drop_on_once=Command.PING)
        )
        async with open_client(socket_path, transport="local", reconnect_attempts=2) as client:
            with pytest.raises(ConnectionClosed):
                await client.ping()
            server.behaviour.close_first_connections = 3
            with pytest.raises(ConnectionClosed, match=r"HELLO with unix:.* failed"):
                await client.ping()
            assert server.refused == 2
            assert await client.ping() >= 0  # the third refusal, then a connection


async def test_unauthorized_local_socket(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        await start_server(nursery, socket_path, behaviour=Behaviour(unauthorized=True))
        with pytest.raises(UnauthorizedError, match="uid not allowed"):
            async with open_client(socket_path, transport="local"):
                pass  # pragma: no cover
        # auto: a local socket we may not use is no reason not to try the remote endpoint.
        remote = FakeServer()
        port = await nursery.start(remote.serve_websocket)
        url = f"ws://127.0.0.1:{port}"
        async with open_client(socket_path=socket_path, url=url) as client:
            await client.ping()
            assert str(client.endpoint) == url


async def stat_until_closed(client: Client) -> None:
    """A STAT the server holds: it fails when the client closes."""
    with pytest.raises(ConnectionClosed, match="the client was closed"):
        await client.stat("/held")


async def test_goaway_without_reconnect_is_unavailable(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        # The held STAT keeps the draining connection open.
        server = await start_server(
            nursery,
            socket_path,
            behaviour=Behaviour(goaway_after=1, hold=frozenset({Command.STAT})),
        )
        async with open_client(socket_path, transport="local", reconnect=False) as client:
            nursery.start_soon(stat_until_closed, client)
            await server.wait_for(Command.STAT)
            await client.ping()  # answered, then GOAWAY "restarting"
            with pytest.raises(UnavailableError, match="going away: restarting, and reconnect"):
                await client.ping()
        assert server.connections == 1


async def test_goaway_with_no_new_connection_possible_is_unavailable(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    """After GOAWAY the client makes one attempt at a new connection, without backoff: the
    server said it is going away, so a failure is reported at once."""
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery,
            socket_path,
            behaviour=Behaviour(goaway_after=1, hold=frozenset({Command.STAT})),
        )
        async with open_client(socket_path, transport="local") as client:
            nursery.start_soon(stat_until_closed, client)
            await server.wait_for(Command.STAT)
            await client.ping()
            server.behaviour.close_first_connections = 1
            with pytest.raises(UnavailableError, match="no new connection could be made"):
                await client.ping()
            assert server.refused == 1
            await client.ping()
        assert server.connections == 2


async def test_a_closed_client_makes_no_requests(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery,
            socket_path,
            limits=ServerLimits(max_streams=2),  # one request at a time, and one for CANCEL
            behaviour=Behaviour(hold=frozenset({Command.STAT})),
        )
        async with open_client(socket_path, transport="local") as client:
            failures: list[Exception] = []

            async def request(call: Callable[[], Awaitable[object]]) -> None:
                try:
                    await call()
                except ConnectionClosed as exc:
                    failures.append(exc)

            async with trio.open_nursery() as tasks:
                tasks.start_soon(request, partial(client.stat, "/held"))
                await server.wait_for(Command.STAT)
                tasks.start_soon(request, client.ping)  # waits for the one request slot
                await trio.testing.wait_all_tasks_blocked()
                await client.aclose()
            with pytest.raises(ConnectionClosed, match="the client is closed"):
                await client.ping()
        assert sorted(str(f) for f in failures) == [
            "connection to unix:" + str(socket_path) + " lost before the STAT reply arrived; "
            "its outcome is unknown (the client was closed)",
            "the client is closed",
        ]
        assert server.counts[Command.PING] == 0


async def test_a_request_the_server_does_not_answer_times_out(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(hold=frozenset({Command.STAT}))
        )
        async with open_client(socket_path, transport="local", timeout=0.2) as client:
            with pytest.raises(ConnectionTimeoutError, match=r"no STAT reply from .* 0.2 s"):
                await client.stat("/held")
            await server.wait_for(Command.CANCEL)
            assert server.cancel_outcomes == [CancelOutcome.NOT_STARTED]
            assert await client.ping() >= 0


async def test_a_request_the_session_refuses_gives_its_slot_back(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path, limits=ServerLimits(max_streams=2))
        async with open_client(socket_path, transport="local") as client:
            for _ in range(3):
                with pytest.raises(LocalProtocolError, match="control frame limit"):
                    await client.stat("/" + "x" * (2 * MiB))
            assert await client.ping() >= 0
        assert server.counts[Command.STAT] == 0


@pytest.mark.parametrize(
    ("behaviour", "words"),
    [
        (Behaviour(wrong_ping_data=True), "does not echo"),
        (Behaviour(stuck_list_cursor=True), "same cursor twice"),
        (Behaviour(short_reads=True), "announced 13 bytes but 3"),
    ],
    ids=["ping", "list", "read"],
)
async def test_replies_that_break_the_protocol_are_refused(
    nursery: trio.Nursery, socket_path: Path, behaviour: Behaviour, words: str
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path, behaviour=behaviour)
        server.files["/f"] = b"abc"
        async with open_client(socket_path, transport="local") as client:
            call: Callable[[], Awaitable[object]] = (
                client.ping
                if behaviour.wrong_ping_data
                else partial(client.list, "/")
                if behaviour.stuck_list_cursor
                else partial(client.read, "/f")
            )
            with pytest.raises(RemoteProtocolError, match=words):
                await call()


async def test_read_streams_report_progress_and_their_errors(
    nursery: trio.Nursery, socket_path: Path, tmp_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(corrupt_read_after=2 * MiB)
        )
        server.files["/big"] = os.urandom(3 * MiB)
        server.files["/small"] = b"abc"
        target = trio.Path(tmp_path / "copy.bin")
        await target.write_bytes(b"the old copy")
        async with open_client(socket_path, transport="local", read_window=MiB) as client:
            seen: list[tuple[int, int | None]] = []
            stream = client.open_read("/small", progress=lambda d, t: seen.append((d, t)))
            with pytest.raises(RuntimeError, match="inside `async with`"):
                await stream.receive_some()
            async with stream:
                assert b"".join([chunk async for chunk in stream]) == b"abc"
            assert seen == [(3, 3)]
            # A READ failing half-way: the old copy stays, and no partial file is left.
            with pytest.raises(CorruptDataError):
                await client.read_to_file("/big", target)
            with pytest.raises(NotFoundError):
                await client.read_to_file("/missing", target)
        assert await target.read_bytes() == b"the old copy"
        assert sorted(p.name for p in await trio.Path(tmp_path).iterdir()) == [
            "copy.bin",
            "lbru.sock",
        ]


async def test_a_refused_write_from_an_iterable_is_not_sent_again(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(goaway_refuse_once=Command.WRITE)
        )

        async def parts() -> AsyncIterator[bytes]:
            yield b"data"

        async with open_client(socket_path, transport="local") as client:
            with pytest.raises(UnavailableError):
                await client.write("/g", parts())
        assert server.counts[Command.WRITE] == 1
        assert "/g" not in server.files


async def test_a_resumable_write_gives_up_after_its_resume_attempts(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery,
            socket_path,
            limits=ServerLimits(initial_window=MiB),
            behaviour=Behaviour(drop_after_write_bytes_once=MiB),
        )
        async with open_client(socket_path, transport="local", resume_attempts=0) as client:
            with pytest.raises(ConnectionClosed):
                await client.write("/r", os.urandom(3 * MiB), resumable=True)
        assert server.counts[Command.WRITE] == 1
        assert "/r" not in server.files


@pytest.mark.parametrize("busy", [Command.WRITE, Command.UPLOAD_STATUS], ids=["write", "status"])
async def test_a_resumed_write_waits_while_the_server_still_holds_the_upload(
    nursery: trio.Nursery, socket_path: Path, busy: Command
) -> None:
    """Until the server notices the broken connection, the upload stays attached to it and a
    resumed WRITE (or the status query before it) gets CONFLICT: the client asks again after
    a pause and resumes from what was committed."""
    with trio.fail_after(TEST_TIMEOUT):
        conflict = ConflictError("the upload is still attached to another stream")
        server = await start_server(
            nursery,
            socket_path,
            limits=ServerLimits(initial_window=MiB),
            # The first WRITE breaks; the CONFLICT goes to the query or to the resumed WRITE.
            behaviour=Behaviour(
                drop_after_write_bytes_once=2 * MiB,
                fail_nth={(busy, 2 if busy is Command.WRITE else 1): conflict},
            ),
        )
        data = os.urandom(5 * MiB)
        async with open_client(socket_path, transport="local") as client:
            assert (await client.write("/r", data, resumable=True)).size == len(data)
        assert server.files["/r"] == data
        assert server.counts[Command.WRITE] == (3 if busy is Command.WRITE else 2)
        assert server.counts[Command.UPLOAD_STATUS] == 2
        resumed = server.requests_of(FileWrite)[-1]
        assert isinstance(resumed, FileWrite)
        assert resumed.offset == 2 * MiB


async def test_a_conflict_before_any_resume_is_the_callers(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        conflict = ConflictError("someone else is writing it")
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(fail_nth={(Command.WRITE, 1): conflict})
        )
        async with open_client(socket_path, transport="local") as client:
            with pytest.raises(ConflictError, match="someone else"):
                await client.write("/c", b"x", resumable=True)
        assert server.counts[Command.WRITE] == 1
        assert server.counts[Command.UPLOAD_STATUS] == 0
