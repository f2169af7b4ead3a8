"""Clients that stall, against a real daemon over real sockets: a stream that makes no
progress is aborted (and nothing of it committed) while its connection stays usable, and
stalled connections cannot hold a connection cap against new clients.

Deadlines are configured short (fractions of a second); where a test needs a stall to have
lasted, it waits for that long first, then checks what the daemon did.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from librorum.client.aio import open_client
from librorum.errors import (
    ConnectionClosed,
    ConnectionLimitError,
    NotFoundError,
    TimeoutError_,
    UnauthorizedError,
)
from librorum.protocol.messages import FileRead, FileStat, FileWrite, Ping, PingReply
from librorum.protocol.session import (
    ClientSession,
    ConnectionEnded,
    DataReceived,
    ErrorReceived,
    HelloAccepted,
    ReplyReceived,
)
from librorum.testing import TestDaemon, Transport, open_test_daemon
from librorum.transport import FrameTransport, connect_uds, connect_websocket

TRANSPORTS: list[Transport] = ["uds", "websocket"]


async def raw_connection(
    daemon: TestDaemon, transport: Transport, *, read_window: int = 1 << 20
) -> tuple[FrameTransport, ClientSession]:
    """A connection driven by hand: the sans-I/O client session over a real transport."""
    if transport == "uds":
        channel = await connect_uds(daemon.socket_path)
    else:
        channel = await connect_websocket(daemon.url, token=daemon.token_file.read_text().strip())
    session = ClientSession()
    session.hello(initial_window=read_window)
    await channel.send_frames(session.frames_to_send())
    while True:
        data = await channel.receive_some()
        assert data, "closed during the handshake"
        session.receive_data(data)
        events = list(session.events())
        if any(isinstance(e, HelloAccepted) for e in events):
            return channel, session
        assert not any(isinstance(e, ConnectionEnded) for e in events), events


async def next_events(channel: FrameTransport, session: ClientSession) -> list[object]:
    """The events of the next read (the connection ending, if it ends)."""
    data = await channel.receive_some()
    session.receive_data(data)
    events: list[object] = list(session.events())
    if not data and not any(isinstance(e, ConnectionEnded) for e in events):
        events.append(ConnectionEnded())
    return events


async def until_final(channel: FrameTransport, session: ClientSession, sid: int) -> object:
    """Read until request ``sid`` ends; returns its final event."""
    while True:
        for event in await next_events(channel, session):
            final = isinstance(event, ErrorReceived) or (
                isinstance(event, ReplyReceived) and event.end
            )
            if final and event.session_id == sid:  # type: ignore[union-attr]
                return event
            assert not isinstance(event, ConnectionEnded), event


async def assert_still_serves(channel: FrameTransport, session: ClientSession) -> None:
    ping = session.start_request(Ping(b"still here"))
    await channel.send_frames(session.frames_to_send())
    pong = await until_final(channel, session, ping)
    assert isinstance(pong, ReplyReceived)
    assert pong.message == PingReply(b"still here")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_write_whose_data_never_comes_is_aborted(
    transport: Transport, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        async with open_test_daemon(tmp_path, stream_timeout=0.3) as daemon:
            channel, session = await raw_connection(daemon, transport)
            try:
                sid = session.start_request(FileWrite("/stalled", size=10), end=False)
                await channel.send_frames(session.frames_to_send())
                started = trio.current_time()
                ended = await until_final(channel, session, sid)
                waited = trio.current_time() - started
                assert isinstance(ended, ErrorReceived)
                assert isinstance(ended.exception, TimeoutError_)
                assert "sent no DATA" in str(ended.exception)
                assert 0.3 <= waited < 10
                # Only the request ended: the connection answers on.
                await assert_still_serves(channel, session)
            finally:
                await channel.aclose()
            async with daemon.client() as client:
                with pytest.raises(NotFoundError):
                    await client.stat("/stalled")
            assert daemon.running.server.budget.used == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_read_whose_client_grants_no_credit_is_aborted(
    transport: Transport, tmp_path: Path
) -> None:
    window = 64 << 10
    with trio.fail_after(30):
        async with open_test_daemon(tmp_path, stream_timeout=0.3) as daemon:
            async with daemon.client() as client:
                await client.write("/f", bytes(1 << 20))
            channel, session = await raw_connection(daemon, transport, read_window=window)
            try:
                sid = session.start_request(FileRead("/f"))
                await channel.send_frames(session.frames_to_send())
                received = 0
                # ClientSession grants nothing by itself: the window runs out after 64 KiB.
                while True:
                    events = await next_events(channel, session)
                    received += sum(len(e.data) for e in events if isinstance(e, DataReceived))
                    [final] = [e for e in events if isinstance(e, ErrorReceived)] or [None]
                    if final is not None:
                        break
                    assert not any(isinstance(e, ConnectionEnded) for e in events)
                assert final.session_id == sid
                assert isinstance(final.exception, TimeoutError_)
                assert "granted no credit" in str(final.exception)
                assert received == window
                await assert_still_serves(channel, session)
            finally:
                await channel.aclose()


@contextlib.asynccontextmanager
async def stalled_writers(
    daemon: TestDaemon, count: int
) -> AsyncIterator[list[tuple[FrameTransport, ClientSession]]]:
    """``count`` connections, each with a WRITE whose DATA never comes."""
    connections = []
    try:
        for index in range(count):
            channel, session = await raw_connection(daemon, "uds")
            connections.append((channel, session))
            session.start_request(FileWrite(f"/stalled-{index}", size=10), end=False)
            await channel.send_frames(session.frames_to_send())
        yield connections
    finally:
        for channel, _ in connections:
            await channel.aclose()


async def the_one_closed(
    connections: list[tuple[FrameTransport, ClientSession]],
) -> ConnectionEnded:
    """The end of the one connection among ``connections`` that the daemon closed (each gets
    half a second to show its end; the others stay open)."""
    ends: list[ConnectionEnded] = []

    async def watch(channel: FrameTransport, session: ClientSession) -> None:
        with trio.move_on_after(0.5):
            events = await next_events(channel, session)
            ends.extend(e for e in events if isinstance(e, ConnectionEnded))

    async with trio.open_nursery() as nursery:
        for channel, session in connections:
            nursery.start_soon(watch, channel, session)
    [ended] = ends
    return ended


@pytest.mark.parametrize("cap", ["max_connections_per_uid", "max_connections"])
async def test_stalled_connections_give_way_to_a_new_client(cap: str, tmp_path: Path) -> None:
    settings: dict[str, object] = {cap: 4, "reclaim_after": 0.3}
    with trio.fail_after(30):
        async with (
            open_test_daemon(tmp_path, **settings) as daemon,
            stalled_writers(daemon, 4) as stalled,
        ):
            await trio.sleep(0.4)  # let the stall outlast reclaim_after
            # The cap is full of stalled connections: a new client gets in all the same.
            async with open_client(transport="local", socket_path=daemon.socket_path) as client:
                await client.ping()
            # One stalled connection was closed for it, with the reason.
            ended = await the_one_closed(stalled)
            assert isinstance(ended.error, ConnectionLimitError)
            assert "connection limit" in str(ended.error)
            async with open_client(transport="local", socket_path=daemon.socket_path) as client:
                for index in range(4):
                    with pytest.raises(NotFoundError):
                        await client.stat(f"/stalled-{index}")


async def test_active_connections_keep_the_cap(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            open_test_daemon(tmp_path, max_connections_per_uid=2, reclaim_after=0.3) as daemon,
            open_client(transport="local", socket_path=daemon.socket_path) as one,
            open_client(transport="local", socket_path=daemon.socket_path) as two,
        ):
            # Both keep talking for longer than reclaim_after: neither has stalled.
            end = trio.current_time() + 0.5
            while trio.current_time() < end:
                await one.ping()
                await two.ping()
            # (The client reports the refusal as the connection failing, with its reason.)
            with pytest.raises(ConnectionClosed, match="2 connections"):
                async with open_client(transport="local", socket_path=daemon.socket_path) as third:
                    await third.ping()
            await one.ping()
            await two.ping()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_bytes_out_counts_what_was_sent(transport: Transport, tmp_path: Path) -> None:
    # NODE_STATUS's bytes_out is every byte written to the clients, headers and replies
    # included, as bytes_in is every byte read: here, exactly what this client received.
    with trio.fail_after(30):
        async with open_test_daemon(tmp_path) as daemon:
            async with daemon.client() as client:
                await client.write("/f", bytes(300_000))
            await daemon.running.server.wait_idle()
            stats = daemon.running.server.stats
            before = stats.bytes_out
            channel, session = await raw_connection(daemon, transport)
            received = 0
            try:
                session.start_request(FileStat("/f"))
                session.start_request(FileRead("/f", offset=1000, length=200_000))
                await channel.send_frames(session.frames_to_send())
                while session.in_flight():
                    data = await channel.receive_some()
                    received += len(data)
                    session.receive_data(data)
                    list(session.events())
                # The HELLO exchange came first (what raw_connection read is not counted
                # here), so measure it apart: a second connection's handshake alone.
                await trio.testing.wait_all_tasks_blocked()
                after_requests = stats.bytes_out
            finally:
                await channel.aclose()
            handshake_only, _ = await raw_connection(daemon, transport)
            await trio.testing.wait_all_tasks_blocked()
            hello_reply = stats.bytes_out - after_requests
            await handshake_only.aclose()
            assert hello_reply > 20
            assert after_requests - before == received + hello_reply


async def test_a_refused_client_learns_why(tmp_path: Path) -> None:
    # The daemon refuses a uid it does not allow with ERROR UNAUTHORIZED and closes without
    # reading the client's HELLO; the client's write can then fail (EPIPE) before it reads
    # the ERROR, which it must report all the same. The race is the client's to lose, so
    # both clients try many times.
    from librorum.client.sync import connect

    def sync_attempt(socket_path: Path) -> None:
        with connect(transport="local", socket_path=socket_path) as client:
            client.ping()

    with trio.fail_after(60):
        async with open_test_daemon(tmp_path, allowed_uids=[65533]) as daemon:
            for _ in range(20):
                with pytest.raises(UnauthorizedError, match="not allowed"):
                    async with open_client(
                        transport="local", socket_path=daemon.socket_path
                    ) as client:
                        await client.ping()
                with pytest.raises(UnauthorizedError, match="not allowed"):
                    await trio.to_thread.run_sync(sync_attempt, daemon.socket_path)


@pytest.mark.parametrize("cap", ["max_connections_per_ip", "max_connections"])
async def test_stalled_websockets_give_way_to_a_new_client(cap: str, tmp_path: Path) -> None:
    settings: dict[str, object] = {cap: 3, "reclaim_after": 0.3}
    with trio.fail_after(30):
        async with open_test_daemon(tmp_path, **settings) as daemon:
            stalled = []
            try:
                for index in range(3):
                    channel, session = await raw_connection(daemon, "websocket")
                    session.start_request(FileWrite(f"/stalled-{index}", size=10), end=False)
                    await channel.send_frames(session.frames_to_send())
                    stalled.append((channel, session))
                await trio.sleep(0.4)  # let the stall outlast reclaim_after
                # A peer that cannot log in is let in to its handshake, but never closes
                # anybody's connection...
                with pytest.raises(UnauthorizedError):
                    await connect_websocket(daemon.url, token="wrong")
                # ...one that can, takes the seat of a stalled one.
                async with daemon.client("websocket") as client:
                    await client.ping()
                ended = await the_one_closed(stalled)
                assert isinstance(ended.error, ConnectionLimitError)
            finally:
                for channel, _ in stalled:
                    await channel.aclose()
