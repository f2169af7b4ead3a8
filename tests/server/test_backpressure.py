"""Clients that do not keep up (spec 9.2, per-connection output buffer and stream deadline):
a client that sends without reading cannot make the server buffer without end, a download
goes only as fast as its client grants credit, and a client that grants none loses the
request at the stream deadline."""

from __future__ import annotations

import hashlib
import os
import tracemalloc

import trio
import trio.testing
from trio.testing import MockClock

from librorum.errors import TimeoutError_
from librorum.limits import CLOSE_GRACE
from librorum.protocol.constants import Command, Flags
from librorum.protocol.converter import encode_message
from librorum.protocol.framing import encode_frame
from librorum.protocol.messages import FileRead, FileReadReply, NodeStatus, NodeStatusReply, Ping
from librorum.protocol.session import ConnectionEnded, DataReceived, ErrorReceived, ReplyReceived

from .conftest import DEADLINES, TEST_DEADLINE, Peer, ServerUnderTest, at, closed_while

#: Spec 9.2: requests stop being read once this many replies are queued for a client that
#: does not read them.
REPLY_QUEUE_CAP = 1024
KIB = 1 << 10
MIB = 1 << 20


async def test_a_client_that_never_reads_stops_being_served(
    server: ServerUnderTest, clock: MockClock
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        # Room for a hundred-odd replies toward the client; the server reads 64 KiB of
        # requests at a time, over two thousand PINGs: more than the cap in one read.
        stalled = await Peer.connect(server, capacity_to_client=4 * KIB)
        ping = encode_message(Ping())
        count = 10_000
        # Raw frames: the client session would hold back past its 128 requests in flight.
        frames = [
            (encode_frame(Command.PING, ping, session_id=sid, flags=int(Flags.END)),)
            for sid in range(1, count + 1)
        ]
        closed_at: list[float] = []

        async def send_everything() -> None:
            closed_at.append(await closed_while(lambda: stalled.transport.send_frames(frames)))

        async with trio.open_nursery() as nursery:
            started = trio.current_time()
            nursery.start_soon(send_everything)
            await trio.testing.wait_all_tasks_blocked()
            # The server stopped taking requests once the cap was reached, although
            # thousands more were there to read...
            other = await Peer.connect(server)
            status = await other.exchange(NodeStatus())
            assert isinstance(status, ReplyReceived)
            assert isinstance(status.message, NodeStatusReply)
            taken = status.message.requests - 1  # NODE_STATUS counts itself
            assert REPLY_QUEUE_CAP <= taken <= REPLY_QUEUE_CAP + 1
            assert stalled.transport.statistics().sent.frames < count
            # ...and serves the other connection on.
            await other.exchange(Ping())
        # At the idle deadline it gives up on the client: its ERROR cannot be delivered to
        # a client that reads nothing, so the connection closes once the close grace (spec
        # 9.2) for it has passed too.
        assert closed_at == [at(started + DEADLINES["idle_timeout_uds"] + CLOSE_GRACE)]
        # What the client can still read is replies to its first requests, in order.
        events = await stalled.until_closed()
        replies = [e for e in events if isinstance(e, ReplyReceived)]
        assert [e.session_id for e in replies] == list(range(1, len(replies) + 1))
        assert len(replies) <= taken
        assert isinstance(events[-1], ConnectionEnded)


async def test_a_slow_reader_gets_the_whole_file_in_bounded_memory(
    server: ServerUnderTest, clock: MockClock
) -> None:
    window = 64 * KIB
    content = os.urandom(9 * MIB + 12345)  # three chunks, the last one short
    with trio.fail_after(TEST_DEADLINE):
        writer = await Peer.connect(server)
        assert isinstance(await writer.write("/big", content), ReplyReceived)
        reader = await Peer.connect(server, read_window=window)

        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            sid = await reader.request(FileRead("/big"))
            digest = hashlib.sha256()
            received = 0
            started = trio.current_time()
            done = False
            while not done:
                for event in await reader.next_events():
                    if isinstance(event, ReplyReceived):
                        assert isinstance(event.message, FileReadReply)
                        assert event.message.length == len(content)
                    elif isinstance(event, DataReceived):
                        digest.update(event.data)
                        received += len(event.data)
                        done = event.end
                    else:
                        raise AssertionError(event)
                if not reader.session.receive_window(sid) and not done:
                    # Half the stream deadline between grants: slow, but progress.
                    await trio.sleep(DEADLINES["stream_timeout"] / 2)
                    reader.session.grant(sid, window)
                    await reader.flush()
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        assert received == len(content)
        assert digest.digest() == hashlib.sha256(content).digest()
        grants = len(content) // window
        assert trio.current_time() == at(started + grants * DEADLINES["stream_timeout"] / 2)
        # The server sent only what it was granted: never more than a window (and the
        # frames' headers) waited for the client...
        stats = reader.transport.statistics().received
        assert stats.peak_unread <= window + 2 * KIB
        # ...and held no more than a few frames' worth meanwhile, nothing like the file.
        assert peak < 2 * MIB, peak


async def test_a_reader_that_grants_no_credit_ends_at_the_stream_deadline(
    server: ServerUnderTest, clock: MockClock
) -> None:
    window = 64 * KIB
    with trio.fail_after(TEST_DEADLINE):
        writer = await Peer.connect(server)
        assert isinstance(await writer.write("/f", bytes(MIB)), ReplyReceived)
        reader = await Peer.connect(server, read_window=window)
        sid = await reader.request(FileRead("/f"))
        received = 0
        last_data = trio.current_time()
        # The client session grants nothing by itself: the window runs out after 64 KiB.
        while True:
            events = await reader.next_events()
            data = [e for e in events if isinstance(e, DataReceived)]
            if data:
                received += sum(len(e.data) for e in data)
                last_data = trio.current_time()
            errors = [e for e in events if isinstance(e, ErrorReceived)]
            if errors:
                break
            assert not any(isinstance(e, ConnectionEnded) for e in events), events
        [ended] = errors
        assert ended.session_id == sid
        assert isinstance(ended.exception, TimeoutError_)
        assert "granted no credit" in str(ended.exception)
        assert received == window
        assert trio.current_time() == at(last_data + DEADLINES["stream_timeout"])
        # The request ended, the connection did not.
        pong = await reader.exchange(Ping(b"on"))
        assert isinstance(pong, ReplyReceived)
