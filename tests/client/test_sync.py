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
    ConflictError,
    ConnectionClosed,
    ConnectionTimeoutError,
    CorruptDataError,
    NotFoundError,
    RemoteProtocolError,
    UnauthorizedError,
    UnavailableError,
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


async def test_a_download_into_a_fifo_writes_into_it(
    nursery: trio.Nursery, socket_path: Path, tmp_path: Path
) -> None:
    """A FIFO (like a device such as /dev/null) cannot be replaced by a temporary file: the
    content goes into it, and it is still a FIFO afterwards."""
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path)
        content = os.urandom(MiB + 7)
        server.files["/f"] = content
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        # Another name for the FIFO: if the download replaced it, this unblocks the reader.
        os.link(fifo, tmp_path / "pipe-link")
        received: list[bytes] = []

        def drain() -> None:
            with open(fifo, "rb") as pipe:
                received.append(pipe.read())

        def body() -> None:
            with local(socket_path) as client:
                assert client.read_to_file("/f", fifo).size == len(content)

        def unblock_if_replaced() -> None:
            if not fifo.is_fifo():
                with open(tmp_path / "pipe-link", "wb"):
                    pass

        async with trio.open_nursery() as inner:
            inner.start_soon(in_thread, drain)
            try:
                await in_thread(body)
            finally:
                await in_thread(unblock_if_replaced)
        assert received == [content]
        assert await trio.Path(fifo).is_fifo()
        assert not list(await trio.Path(tmp_path).glob("*.part"))


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


@pytest.mark.parametrize(
    ("raised", "connections"),
    [
        # An error of the caller's: the WRITE is cancelled, the connection stays.
        (ValueError, 1),
        # An interruption may have cut a frame in half: the connection is closed, and the
        # next request opens a new one.
        (KeyboardInterrupt, 2),
    ],
)
async def test_what_leaves_a_request_decides_whether_the_connection_survives(
    nursery: trio.Nursery, socket_path: Path, raised: type[BaseException], connections: int
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path)

        def progress(done: int, total: int | None) -> None:
            raise raised

        def body() -> None:
            with local(socket_path) as client:
                with pytest.raises(raised):
                    client.write("/p", b"x" * 3 * MiB, progress=progress)
                assert client.ping() >= 0

        await in_thread(body)
        assert server.connections == connections
        assert "/p" not in server.files
        if raised is ValueError:
            [(_, write_sid, _)] = [r for r in server.received if isinstance(r[2], FileWrite)]
            assert Cancel(write_sid) in server.requests_of(Cancel)


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


async def test_goaway_moves_the_next_request_to_a_new_connection(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path, behaviour=Behaviour(goaway_after=1))

        def body() -> None:
            with local(socket_path) as client:
                first = client.ping()  # answered, then GOAWAY
                assert client.ping() >= 0 <= first
            with local(socket_path, reconnect=False) as client:
                client.ping()
                # The server's reason, as the async client reports it.
                with pytest.raises(
                    UnavailableError, match="going away: restarting, and reconnect is off"
                ):
                    client.ping()

        await in_thread(body)
        assert server.connections == 3


async def test_no_reconnect_when_disabled(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(drop_on_once=Command.STAT)
        )

        def body() -> None:
            with local(socket_path, reconnect=False) as client:
                with pytest.raises(ConnectionClosed, match="outcome is unknown"):
                    client.stat("/f")
                with pytest.raises(ConnectionClosed, match="reconnect is off"):
                    client.ping()

        await in_thread(body)
        assert server.connections == 1


async def test_a_closed_client_makes_no_requests(nursery: trio.Nursery, socket_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path)

        def body() -> None:
            client = local(socket_path)
            assert str(client.endpoint) == f"unix:{socket_path}"
            client.close()
            client.close()
            with pytest.raises(ConnectionClosed, match="the client is closed"):
                client.ping()

        await in_thread(body)
        assert server.counts[Command.PING] == 0


@pytest.mark.parametrize(
    ("behaviour", "error", "words"),
    [
        (Behaviour(unauthorized=True), UnauthorizedError, "uid not allowed"),
        (Behaviour(close_first_connections=1), ConnectionClosed, "HELLO with unix:"),
    ],
)
async def test_a_refused_handshake_says_why(
    nursery: trio.Nursery,
    socket_path: Path,
    behaviour: Behaviour,
    error: type[Exception],
    words: str,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path, behaviour=behaviour)
        with pytest.raises(error, match=words):
            await in_thread(lambda: local(socket_path))
        assert server.refused == 1


async def test_read_streams_report_progress_and_their_errors(
    nursery: trio.Nursery, socket_path: Path, tmp_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(corrupt_read_after=2 * MiB)
        )
        content = os.urandom(3 * MiB)
        server.files["/big"] = content
        server.files["/small"] = b"abc"
        target = tmp_path / "copy.bin"
        target.write_bytes(b"the old copy")

        def body() -> None:
            with local(socket_path, read_window=MiB) as client:
                seen: list[tuple[int, int | None]] = []
                stream = client.open_read("/small", progress=lambda d, t: seen.append((d, t)))
                with pytest.raises(RuntimeError, match="inside `with`"):
                    stream.receive_some()
                with stream:
                    assert b"".join(stream) == b"abc"
                assert seen == [(3, 3)]
                # A READ that fails half-way: what arrived is discarded, the old copy stays,
                # and no partial file is left behind.
                with pytest.raises(CorruptDataError):
                    client.read_to_file("/big", target)
                with pytest.raises(NotFoundError):
                    client.read_to_file("/missing", target)
            assert target.read_bytes() == b"the old copy"
            assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.bin", "lbru.sock"]

        await in_thread(body)


@pytest.mark.parametrize(
    ("behaviour", "call", "words"),
    [
        (Behaviour(wrong_ping_data=True), lambda c: c.ping(), "does not echo"),
        (Behaviour(stuck_list_cursor=True), lambda c: c.list("/"), "same cursor twice"),
        (Behaviour(short_reads=True), lambda c: c.read("/f"), "announced 13 bytes but 3"),
    ],
)
async def test_replies_that_break_the_protocol_are_refused(
    nursery: trio.Nursery,
    socket_path: Path,
    behaviour: Behaviour,
    call: Callable[[SyncClient], object],
    words: str,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(nursery, socket_path, behaviour=behaviour)
        server.files["/f"] = b"abc"

        def body() -> None:
            with local(socket_path) as client, pytest.raises(RemoteProtocolError, match=words):
                call(client)

        await in_thread(body)


async def test_a_refused_write_from_an_iterable_is_not_sent_again(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(goaway_refuse_once=Command.WRITE)
        )

        def body() -> None:
            with local(socket_path) as client, pytest.raises(UnavailableError):
                client.write("/g", iter([b"data"]))

        await in_thread(body)
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

        def body() -> None:
            with local(socket_path, resume_attempts=0) as client, pytest.raises(ConnectionClosed):
                client.write("/r", os.urandom(3 * MiB), resumable=True)

        await in_thread(body)
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

        def body() -> None:
            with local(socket_path) as client:
                assert client.write("/r", data, resumable=True).size == len(data)

        await in_thread(body)
        assert server.files["/r"] == data
        assert server.counts[Command.WRITE] == (3 if busy is Command.WRITE else 2)
        assert server.counts[Command.UPLOAD_STATUS] == 2
        resumed = server.requests_of(FileWrite)[-1]
        assert isinstance(resumed, FileWrite)
        assert resumed.offset == 2 * MiB


async def test_a_conflict_without_a_resume_is_the_callers(
    nursery: trio.Nursery, socket_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        conflict = ConflictError("someone else is writing it")
        server = await start_server(
            nursery, socket_path, behaviour=Behaviour(fail_nth={(Command.WRITE, 1): conflict})
        )

        def body() -> None:
            with local(socket_path) as client, pytest.raises(ConflictError, match="someone else"):
                client.write("/c", b"x", resumable=True)

        await in_thread(body)
        assert server.counts[Command.WRITE] == 1
