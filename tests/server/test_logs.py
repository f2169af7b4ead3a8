"""The log commands (spec 5.19) through a real server over in-memory connections: LOG_GET,
LOG_STATS, LOG_STREAM and its credit, FORBIDDEN for a non-administrator, and the levels the
server logs a request's failure at."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest
import trio
from trio.testing import MockClock

from librorum.errors import ForbiddenError, TimeoutError_
from librorum.protocol.constants import CancelOutcome
from librorum.protocol.converter import decode_log_batches
from librorum.protocol.messages import (
    Cancel,
    CancelReply,
    FileStat,
    LogBatch,
    LogGet,
    LogGetReply,
    LogStats,
    LogStatsReply,
    LogStream,
    LogStreamReply,
)
from librorum.protocol.session import DataReceived, ErrorReceived, ReplyReceived
from librorum.server.app import Server
from librorum.server.context import CLOSING_LINE_BURST, CLOSING_LINE_INTERVAL
from librorum.server.logsetup import log_ring
from librorum.service.logring import LogRing
from librorum.store import open_store
from librorum.testing import memory_transport_pair, test_config
from librorum.transport import LogLimiter
from librorum.transport.base import PeerInfo

from .conftest import DEADLINES, Peer

KIB = 1 << 10

#: The logger the tests log their own records with (below the daemon's, so the ring sees it).
test_log = logging.getLogger("librorum.logtest")


@attrs.define
class LoggingServer:
    server: Server
    nursery: trio.Nursery
    ring: LogRing

    async def connect(self, *, uid: int | None = None, read_window: int = 1 << 20) -> Peer:
        """A connection past HELLO, from ``uid`` (default: ours, an administrator)."""
        peer_info = PeerInfo("uds", uid=os.getuid() if uid is None else uid, authenticated=True)
        server_end, client_end = memory_transport_pair(peer=peer_info)
        self.nursery.start_soon(self.server.handle, server_end)
        peer = Peer(client_end)
        await peer.hello(read_window=read_window)
        return peer


@pytest.fixture
def daemon_logs_at_debug() -> Iterator[None]:
    """The daemon's loggers at DEBUG for the test, as with ``--log-level DEBUG``."""
    logger = logging.getLogger("librorum")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield
    logger.setLevel(level)


@pytest.fixture
async def logging_server(
    tmp_path: Path, clock: MockClock, daemon_logs_at_debug: None
) -> AsyncIterator[LoggingServer]:
    """A server whose log commands read a ring of 50 records fed by the daemon's loggers,
    as ``serve`` installs it."""
    config = test_config(tmp_path, **DEADLINES)
    config.data_dir.mkdir(parents=True, mode=0o700)
    with log_ring(50) as ring:
        async with (
            open_store(config.data_dir / "store", min_free_space=0) as store,
            trio.open_nursery() as nursery,
        ):
            yield LoggingServer(Server(config, store, logs=ring), nursery, ring)
            nursery.cancel_scope.cancel()


def reply_of(event: ReplyReceived | ErrorReceived) -> object:
    assert isinstance(event, ReplyReceived), event
    return event.message


async def test_log_get_pages_with_filters_and_cursors(logging_server: LoggingServer) -> None:
    peer = await logging_server.connect()
    for i in range(5):
        test_log.info("entry %d", i)
    test_log.error("the bad one")
    reply = reply_of(await peer.exchange(LogGet(logger="librorum.logtest", limit=3)))
    assert isinstance(reply, LogGetReply)
    assert [r.message for r in reply.records] == ["entry 0", "entry 1", "entry 2"]
    assert reply.records[0].level == logging.INFO
    assert reply.records[0].logger == "librorum.logtest"
    more = reply_of(await peer.exchange(LogGet(logger="librorum.logtest", cursor=reply.cursor)))
    assert isinstance(more, LogGetReply)
    assert [r.message for r in more.records] == ["entry 3", "entry 4", "the bad one"]
    errors = reply_of(await peer.exchange(LogGet(min_level=logging.ERROR, newest_first=True)))
    assert isinstance(errors, LogGetReply)
    assert [r.message for r in errors.records] == ["the bad one"]
    grep = reply_of(await peer.exchange(LogGet(grep="entry 4")))
    assert isinstance(grep, LogGetReply)
    assert [r.message for r in grep.records] == ["entry 4"]


async def test_a_log_get_reply_fits_one_control_frame(logging_server: LoggingServer) -> None:
    peer = await logging_server.connect()
    for i in range(40):
        test_log.info("%d %s", i, "x" * 2000)
    reply = reply_of(await peer.exchange(LogGet(logger="librorum.logtest", limit=1000)))
    assert isinstance(reply, LogGetReply)
    assert 20 <= len(reply.records) < 40  # 64 KiB hold about 31 of them
    rest = reply_of(
        await peer.exchange(LogGet(logger="librorum.logtest", limit=1000, cursor=reply.cursor))
    )
    assert isinstance(rest, LogGetReply)
    assert len(reply.records) + len(rest.records) == 40


async def test_log_get_says_how_many_records_a_cursor_missed(
    logging_server: LoggingServer,
) -> None:
    peer = await logging_server.connect()
    test_log.info("first")
    reply = reply_of(await peer.exchange(LogGet(logger="librorum.logtest")))
    assert isinstance(reply, LogGetReply)
    for i in range(120):
        test_log.info("flood %d", i)
    later = reply_of(await peer.exchange(LogGet(cursor=reply.cursor, limit=1000)))
    assert isinstance(later, LogGetReply)
    assert later.missed > 0
    assert reply.cursor is not None
    assert later.records[0].seq == reply.cursor + later.missed


async def test_log_stats_counts_levels_loggers_and_minutes(
    logging_server: LoggingServer,
) -> None:
    peer = await logging_server.connect()
    test_log.warning("one")
    test_log.warning("two")
    reply = reply_of(await peer.exchange(LogStats()))
    assert isinstance(reply, LogStatsReply)
    assert reply.levels["WARNING"] >= 2
    assert reply.loggers["librorum.logtest"] == 2
    assert reply.capacity == 50
    assert sum(minute.counts.get("WARNING", 0) for minute in reply.trend) >= 2
    assert reply.next_cursor - reply.first_cursor == reply.held


async def test_the_log_is_forbidden_to_a_peer_of_another_uid(
    logging_server: LoggingServer,
) -> None:
    peer = await logging_server.connect(uid=os.getuid() + 1)
    for message in (LogGet(), LogStats(), LogStream(last=5)):
        event = await peer.exchange(message)
        assert isinstance(event, ErrorReceived), event
        assert isinstance(event.exception, ForbiddenError)
    # The connection stays up for the rest.
    stat = await peer.exchange(FileStat("/"))
    assert isinstance(stat, ReplyReceived)


async def test_a_refused_caller_is_one_warning_per_minute(
    logging_server: LoggingServer, clock: MockClock
) -> None:
    ring = logging_server.ring
    peer = await logging_server.connect(uid=os.getuid() + 1)
    start = ring.next_seq
    for _ in range(3):
        await peer.exchange(LogGet())
    refused = [e for e in ring.read(cursor=start).entries if "refused" in e.message]
    assert [e.level for e in refused] == [logging.WARNING]
    clock.jump(61)
    await peer.exchange(LogGet())
    refused = [e for e in ring.read(cursor=start).entries if "refused" in e.message]
    assert len(refused) == 2
    assert "and 2 more like it" in refused[1].message


async def test_a_not_found_is_logged_at_debug(logging_server: LoggingServer) -> None:
    ring = logging_server.ring
    peer = await logging_server.connect()
    start = ring.next_seq
    await peer.exchange(FileStat("/missing"))
    [failure] = [e for e in ring.read(cursor=start).entries if "failed" in e.message]
    assert failure.level == logging.DEBUG
    assert "/missing" in failure.message


async def test_one_info_line_per_connection_with_its_figures(
    logging_server: LoggingServer,
) -> None:
    ring = logging_server.ring
    start = ring.next_seq
    peer = await logging_server.connect()
    await peer.exchange(FileStat("/"))
    await peer.transport.aclose()
    await logging_server.server.wait_idle()
    server_lines = [e for e in ring.read(cursor=start).entries if e.logger == "librorum.server"]
    infos = [e for e in server_lines if e.level >= logging.INFO]
    assert len(infos) == 1
    assert "closed after" in infos[0].message
    assert "1 requests" in infos[0].message
    assert "bytes out" in infos[0].message


class Follower:
    """A LOG_STREAM driven by hand: its first reply, and its batches as they come, credit
    granted back for each one unless ``grant`` is off."""

    def __init__(self, peer: Peer, sid: int) -> None:
        self.peer = peer
        self.sid = sid
        self.reply: ReplyReceived | None = None
        self.final: ReplyReceived | ErrorReceived | None = None
        self.batches: list[LogBatch] = []
        self.received = 0
        self.grant = True

    @classmethod
    async def start(cls, peer: Peer, message: LogStream) -> Follower:
        follower = cls(peer, await peer.request(message))
        while follower.reply is None:
            await follower.receive()
        return follower

    async def receive(self) -> None:
        """Take the events of one receive."""
        for event in await self.peer.next_events():
            if isinstance(event, DataReceived) and event.session_id == self.sid:
                self.received += len(event.data)
                self.batches.extend(decode_log_batches(bytes(event.data)))
                if self.grant:
                    self.peer.session.grant(self.sid, len(event.data))
                    await self.peer.flush()
            elif isinstance(event, ReplyReceived) and event.session_id == self.sid:
                if event.end:
                    self.final = event
                else:
                    self.reply = event
            elif isinstance(event, ErrorReceived) and event.session_id == self.sid:
                self.final = event

    async def take(self, count: int) -> list[LogBatch]:
        """The next ``count`` batches (waiting for them)."""
        while len(self.batches) < count:
            await self.receive()
        taken, self.batches = self.batches[:count], self.batches[count:]
        return taken


async def test_log_stream_replays_the_last_records_then_follows(
    logging_server: LoggingServer,
) -> None:
    peer = await logging_server.connect()
    for i in range(5):
        test_log.info("before %d", i)
    follower = await Follower.start(peer, LogStream(last=2, logger="librorum.logtest"))
    assert follower.reply is not None
    assert isinstance(follower.reply.message, LogStreamReply)
    [replayed] = await follower.take(1)
    assert [r.message for r in replayed.records] == ["before 3", "before 4"]
    test_log.info("after")
    [followed] = await follower.take(1)
    assert [r.message for r in followed.records] == ["after"]
    assert followed.missed == 0
    # A CANCEL ends it: aborted, nothing to undo.
    cancel_sid = await peer.request(Cancel(sid := follower.sid))
    outcome = None
    while outcome is None:
        for event in await peer.next_events():
            if isinstance(event, ReplyReceived) and event.session_id == cancel_sid:
                assert isinstance(event.message, CancelReply)
                outcome = event.message.outcome
    assert outcome is CancelOutcome.ABORTED
    assert sid not in peer.session._streams


async def test_a_slow_follower_is_told_what_it_missed_and_holds_nothing(
    logging_server: LoggingServer,
) -> None:
    window = 8 * KIB
    peer = await logging_server.connect(read_window=window)
    follower = await Follower.start(peer, LogStream(logger="librorum.logtest"))
    follower.grant = False

    async def stalled() -> None:
        # The autojump clock moves only once every task waits: this reads all the server
        # sends until it waits for credit.
        with trio.move_on_after(1):
            while True:
                await follower.receive()

    for i in range(10):
        test_log.info("%d %s", i, "y" * 1024)
    await stalled()
    # The window holds fewer than 10 of these records: the follower waits for credit.
    assert 0 < follower.received <= window
    sent = sum(len(b.records) for b in follower.batches)
    assert 0 < sent < 10
    # Far more than the ring holds (50) while the follower grants nothing: nothing more
    # comes, and nothing is kept for it.
    for i in range(10, 410):
        test_log.info("%d %s", i, "y" * 1024)
    await stalled()
    assert sum(len(b.records) for b in follower.batches) == sent
    assert follower.received <= window
    # Credit again: the follower resumes at its cursor, and is told what it missed.
    follower.grant = True
    peer.session.grant(follower.sid, 1 << 20)
    await peer.flush()
    while (
        not follower.batches
        or follower.batches[-1].records[-1:] == ()
        or not (follower.batches[-1].records[-1].message.startswith("409 "))
    ):
        await follower.receive()
    resumed = follower.batches[len(follower.batches) - 1]
    missed = sum(b.missed for b in follower.batches)
    seen = sum(len(b.records) for b in follower.batches)
    assert missed > 0
    assert seen + missed == 410
    assert resumed.records[-1].message.startswith("409 ")
    # What came after the gap is the newest the ring still held: at most its 50 records.
    assert seen - sent <= 50


async def test_a_follower_granting_no_credit_times_out(
    logging_server: LoggingServer, clock: MockClock
) -> None:
    peer = await logging_server.connect(read_window=1 * KIB)
    follower = await Follower.start(peer, LogStream(logger="librorum.logtest"))
    start = trio.current_time()
    test_log.info("%s", "z" * 4096)  # does not fit the window
    while follower.final is None:
        await follower.receive()
    assert isinstance(follower.final, ErrorReceived)
    assert isinstance(follower.final.exception, TimeoutError_)
    assert trio.current_time() - start == pytest.approx(DEADLINES["stream_timeout"], abs=1e-3)


async def test_a_shutdown_ends_the_stream_with_its_final_reply(
    logging_server: LoggingServer,
) -> None:
    peer = await logging_server.connect()
    follower = await Follower.start(peer, LogStream())
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(logging_server.server.drain)
        while follower.final is None:
            await follower.receive()
    final = follower.final
    assert isinstance(final, ReplyReceived)
    assert isinstance(final.message, LogStreamReply)
    assert trio.current_time() - start < DEADLINES["shutdown_grace"]


async def test_a_peer_churning_connections_cannot_flood_the_log(
    logging_server: LoggingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Beyond its burst, a peer's closing lines go to DEBUG (one an interval still at INFO,
    counting the others): a loop of connections cannot push the warnings out of the ring."""
    assert (CLOSING_LINE_BURST, CLOSING_LINE_INTERVAL) == (100, 1.0)
    # The same limiter with a small burst and an interval no test outlasts.
    logging_server.server.context.closing_lines = LogLimiter(interval=3600.0, burst=5)
    caplog.set_level(logging.DEBUG, logger="librorum.server")
    for _ in range(12):
        peer = await logging_server.connect(uid=os.getuid())
        await peer.transport.aclose()
        await logging_server.server.wait_idle()
    lines = [r for r in caplog.records if "closed after" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.INFO] * 5 + [logging.DEBUG] * 7
    # Another peer still has its own budget.
    other = await logging_server.connect(uid=os.getuid() + 1)
    await other.transport.aclose()
    await logging_server.server.wait_idle()
    last = [r for r in caplog.records if "closed after" in r.getMessage()][-1]
    assert last.levelno == logging.INFO
    assert f"uid={os.getuid() + 1}" in last.getMessage()
