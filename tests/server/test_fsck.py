"""FSCK (spec 5.20) through the server: progress replies while the check runs, then the
report; CANCEL and a vanished client stop it; one at a time (BUSY); administrators only
(FORBIDDEN).

A check of a test store takes no virtual time (the clock stands still while worker threads
run), so the tests hold it at a gate: the first chunk verification waits for an event the
test sets, the real verification then runs."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import trio
from trio.testing import MockClock

from librorum.errors import BusyError, CancelledError, ForbiddenError, TimeoutError_
from librorum.protocol.constants import CancelOutcome
from librorum.protocol.messages import Fsck, FsckReply, NodeStatus, NodeStatusReply
from librorum.protocol.session import ErrorReceived, ReplyReceived
from librorum.store.objects import LocalChunkStore
from librorum.transport.base import PeerInfo

from .conftest import DEADLINES, TEST_DEADLINE, Peer, ServerUnderTest
from .test_cancel import cancel

KIB = 1 << 10


@pytest.fixture
async def gate(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[trio.Event, trio.Event]]:
    """(reached, opened): a chunk verification sets ``reached`` and waits for ``opened``."""
    reached, opened = trio.Event(), trio.Event()
    check = LocalChunkStore.check

    async def gated(self: LocalChunkStore, key: bytes, length: int, also: object = None) -> None:
        reached.set()
        await opened.wait()
        await check(self, key, length, also)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalChunkStore, "check", gated)
    yield reached, opened
    opened.set()


async def stored(server: ServerUnderTest) -> Peer:
    peer = await Peer.connect(server)
    for name in ("a", "b"):
        event = await peer.write(f"/{name}", os.urandom(64 * KIB))
        assert isinstance(event, ReplyReceived), event
    return peer


async def test_progress_replies_then_the_report(
    server: ServerUnderTest, gate: tuple[trio.Event, trio.Event], clock: MockClock
) -> None:
    reached, opened = gate
    peer = await stored(server)
    sid = await peer.request(Fsck())
    await reached.wait()
    progress: list[FsckReply] = []
    while len(progress) < 3:
        for event in await peer.next_events():
            assert isinstance(event, ReplyReceived), event
            assert not event.end
            assert isinstance(event.message, FsckReply)
            progress.append(event.message)
    assert {p.phase for p in progress} == {"chunks"}
    assert progress[-1].chunks_total == 2
    assert progress[-1].chunks_done == 0
    # NODE_STATUS shows the running check to anyone.
    other = await Peer.connect(server)
    status = await other.exchange(NodeStatus())
    assert isinstance(status, ReplyReceived)
    assert isinstance(status.message, NodeStatusReply)
    assert (status.message.fsck_phase, status.message.fsck_chunks_total) == ("chunks", 2)
    opened.set()
    final = await peer.until_final(sid)
    assert isinstance(final, ReplyReceived)
    report = final.message
    assert isinstance(report, FsckReply)
    assert report.phase == "done"
    assert report.ok
    assert (report.chunks_done, report.files) == (2, 2)
    status = await other.exchange(NodeStatus())
    assert isinstance(status, ReplyReceived)
    assert isinstance(status.message, NodeStatusReply)
    assert status.message.fsck_phase == ""
    assert status.message.last_fsck_ms > 0
    assert status.message.last_fsck_ok


async def test_cancel_stops_a_check_and_frees_it(
    server: ServerUnderTest, gate: tuple[trio.Event, trio.Event], clock: MockClock
) -> None:
    reached, opened = gate
    peer = await stored(server)
    sid = await peer.request(Fsck())
    await reached.wait()
    events, outcome = await cancel(peer, sid)
    assert outcome is CancelOutcome.ABORTED
    [final] = [e for e in events if isinstance(e, ErrorReceived) and e.session_id == sid]
    assert isinstance(final.exception, CancelledError)
    opened.set()
    again = await peer.exchange(Fsck())
    assert isinstance(again, ReplyReceived), again
    assert isinstance(again.message, FsckReply)
    assert again.message.ok


async def test_a_client_leaving_stops_its_check(
    server: ServerUnderTest, gate: tuple[trio.Event, trio.Event], clock: MockClock
) -> None:
    reached, opened = gate
    peer = await stored(server)
    await peer.request(Fsck())
    await reached.wait()
    await peer.transport.aclose()
    await server.wait_closed()
    opened.set()
    other = await Peer.connect(server)
    again = await other.exchange(Fsck())
    assert isinstance(again, ReplyReceived), again


async def test_a_second_check_is_busy(
    server: ServerUnderTest, gate: tuple[trio.Event, trio.Event], clock: MockClock
) -> None:
    reached, opened = gate
    peer = await stored(server)
    sid = await peer.request(Fsck())
    await reached.wait()
    other = await Peer.connect(server)
    refused = await other.exchange(Fsck(repair=True))
    assert isinstance(refused, ErrorReceived)
    assert isinstance(refused.exception, BusyError)
    opened.set()
    final = await peer.until_final(sid)
    assert isinstance(final, ReplyReceived)


async def test_only_administrators(server: ServerUnderTest) -> None:
    stranger = PeerInfo("uds", uid=os.getuid() + 1, authenticated=True)
    peer = await Peer.connect(server, peer=stranger)
    for repair in (False, True):
        refused = await peer.exchange(Fsck(repair=repair))
        assert isinstance(refused, ErrorReceived)
        assert isinstance(refused.exception, ForbiddenError)
        assert "administrators" in str(refused.exception)


async def test_a_client_reading_nothing_times_the_check_out(
    server: ServerUnderTest, gate: tuple[trio.Event, trio.Event], clock: MockClock
) -> None:
    reached, opened = gate
    writer = await stored(server)
    # Room for a few progress replies only: then the server's writes wait for the client.
    peer = await Peer.connect(server, capacity_to_client=512)
    sid = await peer.request(Fsck())
    await reached.wait()
    # The check is held at its gate: only the client's silence can end it. The client
    # reads nothing for longer than the stream deadline, then reads.
    await trio.sleep(DEADLINES["stream_timeout"] + 10)
    with trio.fail_after(TEST_DEADLINE):
        final = await peer.until_final(sid)
    assert isinstance(final, ErrorReceived), final
    assert isinstance(final.exception, TimeoutError_)
    assert "progress replies" in str(final.exception)
    # The check was stopped: another one runs at once.
    opened.set()
    again = await writer.exchange(Fsck())
    assert isinstance(again, ReplyReceived), again
