"""CANCEL (spec 5.14): the target ends with its final frame first, then the CANCEL reply
gives the definite outcome, and the store agrees with it."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from librorum.errors import CancelledError, NotFoundError
from librorum.protocol.constants import CancelOutcome
from librorum.protocol.messages import (
    Cancel,
    CancelReply,
    FileRead,
    FileStat,
    FileWrite,
    Ping,
    UploadStatus,
    UploadStatusReply,
)
from librorum.protocol.session import (
    DataReceived,
    ErrorReceived,
    Event,
    ReplyReceived,
    WindowGranted,
)

from .conftest import TEST_DEADLINE, Peer, ServerUnderTest

KIB = 1 << 10
MIB = 1 << 20


async def cancel(peer: Peer, target: int) -> tuple[list[Event], CancelOutcome]:
    """Send CANCEL for ``target``; the events up to its reply, and the outcome."""
    sid = await peer.request(Cancel(target))
    events: list[Event] = []
    while True:
        for event in await peer.next_events():
            events.append(event)
            if isinstance(event, ReplyReceived) and event.session_id == sid:
                assert isinstance(event.message, CancelReply)
                return events, event.message.outcome
            assert not (isinstance(event, ErrorReceived) and event.session_id == sid), event


def final_of(events: list[Event], sid: int) -> list[Event]:
    """The final frames of request ``sid`` among ``events``."""
    return [
        e
        for e in events
        if (isinstance(e, ErrorReceived) and e.session_id == sid)
        or (isinstance(e, ReplyReceived) and e.session_id == sid and e.end)
    ]


async def test_cancelling_a_running_read_aborts_it(
    server: ServerUnderTest, clock: MockClock
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        peer = await Peer.connect(server, read_window=64 * KIB)
        assert isinstance(await peer.write("/f", bytes(256 * KIB)), ReplyReceived)
        sid = await peer.request(FileRead("/f"))
        received = 0
        while received < 64 * KIB:
            events = await peer.next_events()
            received += sum(len(e.data) for e in events if isinstance(e, DataReceived))
        # The READ is under way, waiting for credit.
        events, outcome = await cancel(peer, sid)
        assert outcome is CancelOutcome.ABORTED
        # Its final frame came first: ERROR CANCELLED, before the CANCEL reply.
        [ended] = final_of(events, sid)
        assert isinstance(ended, ErrorReceived)
        assert isinstance(ended.exception, CancelledError)
        assert events.index(ended) < len(events) - 1
        pong = await peer.exchange(Ping())
        assert isinstance(pong, ReplyReceived)


async def test_cancelling_a_running_write_stores_nothing(
    server: ServerUnderTest, clock: MockClock
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        peer = await Peer.connect(server)
        sid = await peer.request(FileWrite("/cancelled", size=MIB), end=False)
        await send_until_granted(peer, sid)
        events, outcome = await cancel(peer, sid)
        assert outcome is CancelOutcome.ABORTED
        [ended] = final_of(events, sid)
        assert isinstance(ended, ErrorReceived)
        assert isinstance(ended.exception, CancelledError)
        # An aborted WRITE had no effect.
        missing = await peer.exchange(FileStat("/cancelled"))
        assert isinstance(missing, ErrorReceived)
        assert isinstance(missing.exception, NotFoundError)


async def test_cancelling_a_resumable_write_keeps_its_prefix_resumable(
    server: ServerUnderTest, clock: MockClock
) -> None:
    upload_id = "cancelled-upload-0123456789"
    with trio.fail_after(TEST_DEADLINE):
        peer = await Peer.connect(server)
        write = FileWrite("/resumable", size=MIB, upload_id=upload_id)
        sid = await peer.request(write, end=False)
        sent = await send_until_granted(peer, sid)
        _, outcome = await cancel(peer, sid)
        assert outcome is CancelOutcome.ABORTED
        missing = await peer.exchange(FileStat("/resumable"))
        assert isinstance(missing, ErrorReceived)
        assert isinstance(missing.exception, NotFoundError)
        # The upload is still there to resume, from what the store holds of it.
        status = await peer.exchange(UploadStatus(upload_id))
        assert isinstance(status, ReplyReceived)
        assert isinstance(status.message, UploadStatusReply)
        assert status.message.path == "/resumable"
        assert 0 <= status.message.offset <= sent


async def test_cancelling_an_unknown_or_finished_request_answers_unknown(
    server: ServerUnderTest, clock: MockClock
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        peer = await Peer.connect(server)
        finished = await peer.request(Ping())
        await peer.until_final(finished)
        for target in (finished, 12345):
            events, outcome = await cancel(peer, target)
            assert outcome is CancelOutcome.UNKNOWN
            assert final_of(events, target) == []


async def send_until_granted(peer: Peer, sid: int) -> int:
    """Send DATA for ``sid`` until the server grants more credit: it is then under way,
    the store taking what it receives. Returns the bytes sent."""
    sent = 0
    piece = bytes(16 * KIB)
    while True:
        peer.session.send_data(sid, piece)
        sent += len(piece)
        await peer.flush()
        with trio.move_on_after(1):
            events = await peer.next_events()
            if any(isinstance(e, WindowGranted) and e.session_id == sid for e in events):
                return sent
