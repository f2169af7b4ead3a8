"""Graceful shutdown (spec 5.15): GOAWAY, the requests in flight finish within the shutdown
grace, requests the server reads after GOAWAY are refused with UNAVAILABLE, and each
connection closes when its last request is done, or when the grace runs out."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from librorum.errors import CancelledError, UnavailableError
from librorum.protocol.messages import FileStat, FileWrite, FileWriteReply, Ping
from librorum.protocol.session import (
    ErrorReceived,
    GoAwayReceived,
    ReplyReceived,
)

from .conftest import DEADLINES, TEST_DEADLINE, Peer, ServerUnderTest, at

GRACE = DEADLINES["shutdown_grace"]


async def test_a_request_in_flight_completes_and_new_ones_are_refused(
    server: ServerUnderTest, clock: MockClock
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        peer = await Peer.connect(server)
        content = b"written while the server drains"
        sid = await peer.request(FileWrite("/drained", size=len(content)), end=False)
        peer.session.send_data(sid, content[:10])
        await peer.flush()
        # The server has read the WRITE (and its first DATA) once it answers a later PING.
        await peer.exchange(Ping())

        drained = trio.Event()

        async def shut_down() -> None:
            await server.shut_down()
            drained.set()

        async with trio.open_nursery() as nursery:
            shutdown_started = trio.current_time()
            nursery.start_soon(shut_down)
            await trio.testing.wait_all_tasks_blocked()
            # A client that has not read the GOAWAY yet starts another request: the server
            # reads it after its GOAWAY, so refuses it, with no effect.
            late = await peer.request(FileStat("/drained"))
            events = await peer.next_events()
            goaways = [e for e in events if isinstance(e, GoAwayReceived)]
            assert [g.goaway.grace_ms for g in goaways] == [int(GRACE * 1000)]
            refused = await peer.until_final(late)
            assert isinstance(refused, ErrorReceived)
            assert isinstance(refused.exception, UnavailableError)

            # Well within the grace, the WRITE in flight completes normally...
            await trio.sleep(GRACE / 2)
            peer.session.send_data(sid, content[10:], end=True)
            await peer.flush()
            completed_at = trio.current_time()
            written = await peer.until_final(sid)
            assert isinstance(written, ReplyReceived)
            assert isinstance(written.message, FileWriteReply)
            assert written.message.info.size == len(content)
            # ...and the connection closes with it, not at the end of the grace.
            assert await peer.connection_error() is None
            assert peer.closed_at == at(completed_at)
            assert completed_at < shutdown_started + GRACE
            await drained.wait()
            assert trio.current_time() == at(completed_at)


async def test_requests_still_running_at_the_end_of_the_grace_are_cancelled(
    server: ServerUnderTest, clock: MockClock
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        assert DEADLINES["stream_timeout"] > GRACE  # the stall outlasts the grace
        peer = await Peer.connect(server)
        sid = await peer.request(FileWrite("/never-finished", size=100), end=False)
        await peer.exchange(Ping())
        async with trio.open_nursery() as nursery:
            shutdown_started = trio.current_time()
            nursery.start_soon(server.shut_down)
            ended = await peer.until_final(sid)
            assert isinstance(ended, ErrorReceived)
            assert isinstance(ended.exception, CancelledError)
            assert trio.current_time() == at(shutdown_started + GRACE)
            assert peer.session.goaway_received is not None
            assert await peer.connection_error() is None
            assert peer.closed_at == at(shutdown_started + GRACE)


async def test_an_idle_connection_closes_at_once(server: ServerUnderTest, clock: MockClock) -> None:
    with trio.fail_after(TEST_DEADLINE):
        peer = await Peer.connect(server)
        async with trio.open_nursery() as nursery:
            shutdown_started = trio.current_time()
            nursery.start_soon(server.shut_down)
            events = await peer.until_closed()
            assert any(isinstance(e, GoAwayReceived) for e in events)
            assert peer.closed_at == at(shutdown_started)
