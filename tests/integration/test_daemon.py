"""End to end: a real daemon (librorum.testing) and real clients over real sockets.

Unix sockets live in tmp_path; WebSocket listens on 127.0.0.1 with an ephemeral port. Every
test runs under a deadline; nothing waits on a sleep.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from librorum.client.aio import open_client
from librorum.errors import (
    AlreadyExistsError,
    CancelledError,
    ConnectionClosed,
    ConnectionTimeoutError,
    LibrorumError,
    NotFoundError,
    UnauthorizedError,
    UnavailableError,
)
from librorum.protocol.constants import CancelOutcome, Command, Flags, WriteMode
from librorum.protocol.header import HEADER
from librorum.protocol.messages import (
    Cancel,
    CancelReply,
    FileList,
    FileListReply,
    FileRead,
    FileStat,
    FileStatReply,
    FileWrite,
    Ping,
    PingReply,
)
from librorum.protocol.session import (
    ClientSession,
    ConnectionEnded,
    ErrorReceived,
    HelloAccepted,
    ReplyReceived,
)
from librorum.server.app import serve
from librorum.server.connection import MAX_READER_QUEUED_FRAMES
from librorum.testing import Transport, open_test_daemon, test_config
from librorum.transport import AlreadyRunningError, FrameTransport, connect_uds

TRANSPORTS: list[Transport] = ["uds", "websocket"]
MIB = 1 << 20


def pattern(index: int) -> bytes:
    """1 MiB of data that differs per index (so dedup does not hide anything)."""
    seed = hashlib.blake2b(index.to_bytes(8, "big")).digest()
    return seed * (MIB // len(seed))


async def stream(count: int) -> AsyncIterator[bytes]:
    for index in range(count):
        yield pattern(index)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_200_mib_streamed_upload_and_download(transport: Transport, tmp_path: Path) -> None:
    expected = hashlib.sha256()
    for index in range(200):
        expected.update(pattern(index))
    with trio.fail_after(120):
        async with open_test_daemon(tmp_path) as daemon, daemon.client(transport) as client:
            info = await client.write("/big.bin", stream(200), size=200 * MIB)
            assert info.size == 200 * MIB
            got = hashlib.sha256()
            async with client.open_read("/big.bin") as reader:
                async for chunk in reader:
                    got.update(chunk)
            assert got.hexdigest() == expected.hexdigest()


async def test_many_concurrent_clients(tmp_path: Path) -> None:
    # 100 clients at once, half on each transport, each with its own connection.
    overrides = {"max_connections_per_uid": 128, "max_connections_per_ip": 128}
    results: list[bytes] = []

    async def one(index: int) -> None:
        transport: Transport = "uds" if index % 2 else "websocket"
        async with daemon.client(transport) as client:
            body = f"client {index}".encode() * 100
            await client.write(f"/c/{index}", body)
            assert (await client.stat(f"/c/{index}")).size == len(body)
            results.append(await client.read(f"/c/{index}"))

    with trio.fail_after(120):
        async with open_test_daemon(tmp_path, **overrides) as daemon:
            async with daemon.client() as client:
                await client.mkdir("/c")
            async with trio.open_nursery() as nursery:
                for index in range(100):
                    nursery.start_soon(one, index)
            async with daemon.client() as client:
                assert len(await client.list("/c")) == 100
    assert sorted(results) == sorted(f"client {i}".encode() * 100 for i in range(100))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_requests_complete_out_of_order_on_one_connection(
    transport: Transport, tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon, daemon.client(transport) as client:
            await client.write("/big", stream(16))
            await client.write("/small", b"x")
            async with client.open_read("/big") as reader:
                first = await reader.receive_some()
                assert first
                # The READ is still in flight (we stopped consuming); later requests on the
                # same connection complete meanwhile.
                assert (await client.stat("/small")).size == 1
                assert await client.read("/small") == b"x"
                rest = len(first)
                async for chunk in reader:
                    rest += len(chunk)
            assert rest == 16 * MIB


async def count_replies(transport: FrameTransport, expected: int, command: Command) -> int:
    """Read until ``expected`` final replies to ``command`` arrived (headers only); returns
    how many came."""
    replies = 0
    buffered = bytearray()
    while replies < expected:
        data = await transport.receive_some()
        assert data
        buffered += data
        while len(buffered) >= HEADER.size:
            _, _, got, flags, size, _sid = HEADER.unpack_from(buffered)
            if len(buffered) < HEADER.size + size:
                break
            del buffered[: HEADER.size + size]
            assert (got, flags) == (command, Flags.REPLY | Flags.END)
            replies += 1
    return replies


async def raw_connection(socket_path: Path) -> tuple[FrameTransport, ClientSession]:
    """A connection driven by hand: the sans-I/O session over a real Unix socket."""
    transport = await connect_uds(socket_path)
    session = ClientSession()
    session.hello()
    await transport.send_frames(session.frames_to_send())
    while True:
        session.receive_data(await transport.receive_some())
        if any(isinstance(e, HelloAccepted) for e in session.events()):
            return transport, session


async def test_disconnect_mid_upload_leaves_nothing_visible(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            transport, session = await raw_connection(daemon.socket_path)
            sid = session.start_request(FileWrite("/partial", size=3 * MIB), end=False)
            # All the initial window allows, in two frames.
            half = session.send_window(sid) // 2
            session.send_data(sid, pattern(0)[:half])
            session.send_data(sid, pattern(1)[:half])
            await transport.send_frames(session.frames_to_send())
            await transport.aclose()  # gone before the rest and END
            async with daemon.client() as client:
                with pytest.raises(NotFoundError):
                    await client.stat("/partial")
                assert (await client.status()).store.files == 0
                # The daemon still serves.
                await client.write("/after", b"ok")
                assert await client.read("/after") == b"ok"


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_websocket_refuses_a_missing_or_wrong_token(
    token: str | None, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        async with open_test_daemon(tmp_path) as daemon:
            with pytest.raises(UnauthorizedError):
                async with open_client(
                    transport="remote", url=daemon.url, token=token, reconnect=False
                ) as client:
                    await client.ping()


async def test_second_daemon_on_the_same_data_dir_refuses(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_test_daemon(tmp_path) as daemon:
            # Same data directory, a different socket: the instance lock must refuse.
            other = test_config(tmp_path, socket_path=tmp_path / "other" / "s.sock")
            assert other.data_dir == daemon.config.data_dir
            with pytest.raises(AlreadyRunningError):
                await serve(other, handle_signals=False)
            async with daemon.client() as client:
                await client.ping()


async def test_graceful_shutdown_lets_a_request_in_flight_finish(tmp_path: Path) -> None:
    halfway = trio.Event()
    resume = trio.Event()

    async def slow_source() -> AsyncIterator[bytes]:
        yield pattern(0)
        halfway.set()
        await resume.wait()
        yield pattern(1)

    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            async with daemon.client() as client, trio.open_nursery() as nursery:
                result: list[int] = []

                async def upload() -> None:
                    info = await client.write("/in-flight", slow_source(), size=2 * MIB)
                    result.append(info.size)

                nursery.start_soon(upload)
                await halfway.wait()
                daemon.shutdown()  # GOAWAY: the upload may finish, nothing new may start
                # Shutdown is asynchronous: ping until the daemon refuses new requests (GOAWAY
                # on this connection, and no listener left to reconnect to).
                refused: LibrorumError | None = None
                for _ in range(10_000):
                    try:
                        await client.ping()
                    except (UnavailableError, ConnectionClosed) as exc:
                        refused = exc
                        break
                assert refused is not None, "the daemon kept accepting requests"
                resume.set()
            assert result == [2 * MIB]
    # The daemon has stopped; a new one on the same directory sees the committed file.
    async with open_test_daemon(tmp_path) as daemon, daemon.client() as client:
        assert (await client.stat("/in-flight")).size == 2 * MIB


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_write_modes_and_resumable_status(transport: Transport, tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon, daemon.client(transport) as client:
            await client.write("/f", b"one", mode=WriteMode.EXCLUSIVE)
            with pytest.raises(AlreadyExistsError):
                await client.write("/f", b"two", mode=WriteMode.EXCLUSIVE)
            info = await client.write("/f", stream(3), resumable=True)
            assert info.size == 3 * MIB
            with pytest.raises(NotFoundError):
                await client.upload_status("no-such-upload-0000")


async def test_data_after_a_refused_upload_is_discarded(tmp_path: Path) -> None:
    # DATA for an upload the server already ended is dropped, not an error (spec 3.3): the
    # connection stays up and answers the next request.
    with trio.fail_after(30):
        async with open_test_daemon(tmp_path) as daemon:
            transport, session = await raw_connection(daemon.socket_path)
            try:
                sid = session.start_request(FileWrite("/no/such/dir/file", size=9), end=False)
                session.send_data(sid, b"late data", end=True)
                ping = session.start_request(Ping())
                await transport.send_frames(session.frames_to_send())
                # Both answers come, in either order (replies complete independently).
                events: list[object] = []
                while session.in_flight():
                    session.receive_data(await transport.receive_some())
                    events += list(session.events())
            finally:
                await transport.aclose()
            [refused] = [e for e in events if isinstance(e, ErrorReceived)]
            assert refused.session_id == sid
            assert isinstance(refused.exception, NotFoundError)
            [pong] = [e for e in events if isinstance(e, ReplyReceived)]
            assert pong.session_id == ping


async def drain_until(
    transport: FrameTransport, session: ClientSession, done: Callable[[list[object]], bool]
) -> list[object]:
    events: list[object] = []
    while not done(events):
        data = await transport.receive_some()
        session.receive_data(data)
        events += list(session.events())
        if not data:
            break
    return events


async def test_cancel_has_a_definite_outcome(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            async with daemon.client() as client:
                await client.write("/big", stream(8))
            transport, session = await raw_connection(daemon.socket_path)
            try:
                # A READ the client never grants credit for stalls after its first window.
                read = session.start_request(FileRead("/big"))
                await transport.send_frames(session.frames_to_send())
                await drain_until(
                    transport, session, lambda ev: any(isinstance(e, ReplyReceived) for e in ev)
                )
                cancel = session.start_request(Cancel(read))
                unknown = session.start_request(Cancel(999_999))
                await transport.send_frames(session.frames_to_send())
                events = await drain_until(transport, session, lambda ev: not session.in_flight())
            finally:
                await transport.aclose()
            ends = [e for e in events if isinstance(e, (ErrorReceived, ReplyReceived))]
            # The target's own final frame comes first, then the CANCEL's answer.
            order = [e.session_id for e in ends]
            assert order.index(read) < order.index(cancel)
            [target_end] = [e for e in ends if e.session_id == read]
            assert isinstance(target_end, ErrorReceived)
            assert isinstance(target_end.exception, CancelledError)
            outcomes = {
                e.session_id: e.message.outcome
                for e in ends
                if isinstance(e, ReplyReceived) and isinstance(e.message, CancelReply)
            }
            assert outcomes == {cancel: CancelOutcome.ABORTED, unknown: CancelOutcome.UNKNOWN}


async def test_handshake_and_idle_deadlines_close_the_connection(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_test_daemon(
            tmp_path, handshake_timeout=0.3, idle_timeout_uds=0.3
        ) as daemon:
            # Connected but silent: no HELLO within the handshake deadline.
            silent = await connect_uds(daemon.socket_path)
            session = ClientSession()
            events = await drain_until(silent, session, lambda ev: bool(ev))
            await silent.aclose()
            [ended] = events
            assert isinstance(ended, ConnectionEnded)
            assert isinstance(ended.error, ConnectionTimeoutError)
            # After HELLO, nothing in flight and nothing sent: closed when idle.
            transport, session = await raw_connection(daemon.socket_path)
            events = await drain_until(transport, session, lambda ev: bool(ev))
            await transport.aclose()
            [ended] = events
            assert isinstance(ended, ConnectionEnded)
            assert isinstance(ended.error, ConnectionTimeoutError)
            assert "idle" in str(ended.error)


async def test_cheap_requests_answer_in_order_and_cancel_finds_them_finished(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            async with daemon.client() as client:
                await client.write("/f", b"abc")
            transport, session = await raw_connection(daemon.socket_path)
            try:
                # One write: the STATs are answered before the next frame is read, so the
                # CANCEL behind them finds them finished (spec 5.14: unknown).
                stat = session.start_request(FileStat("/f"))
                missing = session.start_request(FileStat("/nothing"))
                listing = session.start_request(FileList("/", limit=100))
                cancel = session.start_request(Cancel(stat))
                ping = session.start_request(Ping(b"p"))
                await transport.send_frames(session.frames_to_send())
                events = await drain_until(transport, session, lambda ev: not session.in_flight())
            finally:
                await transport.aclose()
            ends = [e for e in events if isinstance(e, (ErrorReceived, ReplyReceived))]
            assert [e.session_id for e in ends] == [stat, missing, listing, cancel, ping]
            stat_end, missing_end, listing_end, cancel_end, ping_end = ends
            assert isinstance(stat_end, ReplyReceived)
            assert isinstance(stat_end.message, FileStatReply)
            assert stat_end.message.info.size == 3
            assert isinstance(missing_end, ErrorReceived)
            assert isinstance(missing_end.exception, NotFoundError)
            assert isinstance(listing_end, ReplyReceived)
            assert isinstance(listing_end.message, FileListReply)
            assert [e.name for e in listing_end.message.entries] == ["f"]
            assert isinstance(cancel_end, ReplyReceived)
            assert cancel_end.message == CancelReply(CancelOutcome.UNKNOWN)
            assert isinstance(ping_end, ReplyReceived)
            assert ping_end.message == PingReply(b"p")


async def test_a_client_that_does_not_read_its_replies_gets_bounded_buffering(
    tmp_path: Path,
) -> None:
    requests = 4000
    with trio.fail_after(120):
        async with open_test_daemon(tmp_path) as daemon:
            async with daemon.client() as client:
                await client.mkdir("/d")
                for index in range(40):
                    await client.mkdir(f"/d/{index:03d}-{'n' * 200}")
            stats = daemon.running.server.stats
            transport, session = await raw_connection(daemon.socket_path)
            before = stats.requests
            try:
                # ~40-byte requests for ~10 KiB replies, all in one write: the socket buffers
                # hold a few hundred replies, far fewer than asked for, and this side reads
                # none of them yet.
                for _ in range(requests):
                    # Forgotten at once (the replies are counted below, not routed), so this
                    # side's cap on requests in flight does not apply.
                    session.forget(session.start_request(FileList("/d", limit=100)))
                await transport.send_frames(session.frames_to_send())
                await trio.testing.wait_all_tasks_blocked()
                [connection] = daemon.running.server.connections
                # The server stopped taking requests rather than hold every reply: one read
                # (64 KiB) holds ~1600 requests, and it took no more than its cap of them.
                assert connection.session.queued_frames <= MAX_READER_QUEUED_FRAMES + 1
                assert stats.requests - before <= MAX_READER_QUEUED_FRAMES + 1
                # Once this side reads, every request is answered (count the reply headers).
                replies = await count_replies(transport, requests, Command.LIST)
            finally:
                await transport.aclose()
            assert replies == requests


async def test_a_long_burst_of_cheap_requests_does_not_hold_up_other_connections(
    tmp_path: Path,
) -> None:
    burst = 1000
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            async with daemon.client() as client:
                await client.write("/f", b"abc")
            stats = daemon.running.server.stats
            busy, busy_session = await raw_connection(daemon.socket_path)
            other, other_session = await raw_connection(daemon.socket_path)
            try:
                before = stats.requests
                # One write of many STATs (~40 KiB: one read for the server), then one PING
                # on another connection.
                for _ in range(burst):
                    busy_session.forget(busy_session.start_request(FileStat("/f")))
                await busy.send_frames(busy_session.frames_to_send())
                ping = other_session.start_request(Ping(b"p"))
                await other.send_frames(other_session.frames_to_send())
                events = await drain_until(
                    other, other_session, lambda ev: any(isinstance(e, ReplyReceived) for e in ev)
                )
                # The PING was answered while the burst was still being worked through.
                taken = stats.requests - before
                assert [e.session_id for e in events if isinstance(e, ReplyReceived)] == [ping]
                assert taken < burst + 1
                # And the burst is answered in full.
                replies = await count_replies(busy, burst, Command.STAT)
            finally:
                await busy.aclose()
                await other.aclose()
            assert replies == burst
