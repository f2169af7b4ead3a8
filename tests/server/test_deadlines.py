"""The server's connection and stream deadlines (spec 9.2), each met at its configured value
on the mock clock: handshake, frame completion, idle (by transport kind) and stream."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from librorum.errors import ConnectionTimeoutError, NotFoundError, TimeoutError_
from librorum.protocol.constants import Command, Flags
from librorum.protocol.converter import encode_message
from librorum.protocol.framing import encode_frame
from librorum.protocol.messages import FileStat, FileWrite, Ping, PingReply
from librorum.protocol.session import ErrorReceived, ReplyReceived

from .conftest import DEADLINES, TEST_DEADLINE, Peer, ServerUnderTest, at


async def assert_serves(peer: Peer) -> None:
    """The connection still answers a request."""
    pong = await peer.exchange(Ping(b"still here"))
    assert isinstance(pong, ReplyReceived)
    assert pong.message == PingReply(b"still here")


def ping_frame() -> bytes:
    """A PING frame's bytes (its reply is not awaited: the frame never completes)."""
    return encode_frame(
        Command.PING, encode_message(Ping(b"x")), session_id=1, flags=int(Flags.END)
    )


# --- Handshake ----------------------------------------------------------------------------------


async def test_no_hello_within_the_handshake_deadline(
    server: ServerUnderTest, clock: MockClock
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        opened = trio.current_time()
        peer = Peer(server.connect())
        error = await peer.connection_error()
        assert isinstance(error, ConnectionTimeoutError)
        assert "no HELLO" in str(error)
        assert peer.closed_at == at(opened + DEADLINES["handshake_timeout"])


async def test_a_hello_still_arriving_is_held_to_the_handshake_deadline(
    server: ServerUnderTest, clock: MockClock
) -> None:
    assert DEADLINES["frame_timeout"] > DEADLINES["handshake_timeout"]
    with trio.fail_after(TEST_DEADLINE):
        opened = trio.current_time()
        peer = Peer(server.connect())
        peer.session.hello()
        hello = b"".join(bytes(part) for parts in peer.session.frames_to_send() for part in parts)
        await peer.transport.send_frames([(hello[:10],)])
        error = await peer.connection_error()
        assert isinstance(error, ConnectionTimeoutError)
        assert peer.closed_at == at(opened + DEADLINES["handshake_timeout"])


async def test_a_hello_in_time_stops_the_handshake_deadline(
    server: ServerUnderTest, clock: MockClock
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        peer = Peer(server.connect())
        await trio.sleep(DEADLINES["handshake_timeout"] - 1)
        await peer.hello()
        await trio.sleep(DEADLINES["handshake_timeout"] + 1)
        await assert_serves(peer)


# --- Frame completion ---------------------------------------------------------------------------


# The second quiet spell outlasts the handshake deadline: the connection then waits under its
# idle deadline only, which is far later than the frame deadline that the frame's first byte
# sets, so that byte must bring the wake-up of the deadline watch forward.
@pytest.mark.parametrize("quiet", [3, DEADLINES["handshake_timeout"] + 3])
async def test_a_frame_not_completed_in_time_closes_the_connection(
    server: ServerUnderTest, clock: MockClock, quiet: float
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        peer = await Peer.connect(server)
        await trio.sleep(quiet)
        frame = ping_frame()
        started = trio.current_time()
        # The frame's bytes trickle in, one every 2 s: each byte is progress on the wire,
        # but the deadline runs from the frame's first byte (spec 9.2).
        for index in range(len(frame) - 1):
            await peer.transport.send_frames([(frame[index : index + 1],)])
            if trio.current_time() + 2 >= started + DEADLINES["frame_timeout"]:
                break
            await trio.sleep(2)
        error = await peer.connection_error()
        assert isinstance(error, ConnectionTimeoutError)
        assert "frame not completed" in str(error)
        assert peer.closed_at == at(started + DEADLINES["frame_timeout"])


async def test_a_frame_completed_in_time_is_served(
    server: ServerUnderTest, clock: MockClock
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        peer = await Peer.connect(server)
        sid = peer.session.start_request(Ping(b"slow"))
        frame = b"".join(bytes(part) for parts in peer.session.frames_to_send() for part in parts)
        await peer.transport.send_frames([(frame[:5],)])
        await trio.sleep(DEADLINES["frame_timeout"] - 1)
        await peer.transport.send_frames([(frame[5:],)])
        pong = await peer.until_final(sid)
        assert isinstance(pong, ReplyReceived)
        assert pong.message == PingReply(b"slow")


# --- Idle ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "idle"),
    [("uds", DEADLINES["idle_timeout_uds"]), ("websocket", DEADLINES["idle_timeout_ws"])],
)
async def test_an_idle_connection_is_closed_at_its_kinds_deadline(
    server: ServerUnderTest, clock: MockClock, kind: str, idle: float
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        peer = await Peer.connect(server, kind=kind)
        # Each request moves the deadline: it runs from the last frame received.
        for _ in range(3):
            await trio.sleep(idle - 1)
            await assert_serves(peer)
        last = trio.current_time()
        error = await peer.connection_error()
        assert isinstance(error, ConnectionTimeoutError)
        assert "idle" in str(error)
        assert peer.closed_at == at(last + idle)


# --- Streams ------------------------------------------------------------------------------------


async def test_a_write_whose_data_never_comes_ends_at_the_stream_deadline(
    server: ServerUnderTest, clock: MockClock
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        peer = await Peer.connect(server)
        sid = await peer.request(FileWrite("/stalled", size=300), end=False)
        # DATA is progress: the deadline runs from the last of it.
        for _ in range(2):
            await trio.sleep(DEADLINES["stream_timeout"] - 1)
            peer.session.send_data(sid, bytes(100))
            await peer.flush()
        last = trio.current_time()
        ended = await peer.until_final(sid)
        assert isinstance(ended, ErrorReceived)
        assert isinstance(ended.exception, TimeoutError_)
        assert "sent no DATA" in str(ended.exception)
        assert trio.current_time() == at(last + DEADLINES["stream_timeout"])
        # Only the request ended: the connection serves on, and nothing was stored.
        await assert_serves(peer)
        missing = await peer.exchange(FileStat("/stalled"))
        assert isinstance(missing, ErrorReceived)
        assert isinstance(missing.exception, NotFoundError)
