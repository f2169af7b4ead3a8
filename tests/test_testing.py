"""librorum.testing's frame transports that need no socket: the in-memory pair (order,
backpressure, close, descriptors, file regions) and StreamTransport over any trio stream;
each good enough to run a real server connection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from librorum.errors import (
    ConnectionClosed,
    ConnectionTimeoutError,
    LocalProtocolError,
    NotFoundError,
)
from librorum.protocol.constants import Command, Feature
from librorum.protocol.framing import FileRegion, encode_frame
from librorum.protocol.messages import FileStat, HelloReply, Ping, PingReply
from librorum.protocol.session import (
    ClientSession,
    ErrorReceived,
    Event,
    HelloAccepted,
    ReplyReceived,
)
from librorum.server.app import Server
from librorum.store import open_store
from librorum.testing import (
    MemoryTransport,
    StreamTransport,
    memory_transport_pair,
    test_config,
)

# --- StreamTransport ----------------------------------------------------------------------------


def stream_pair(*, lockstep: bool = False) -> tuple[StreamTransport, StreamTransport]:
    """Two StreamTransports over an in-memory stream: with unbounded buffers, or with none
    (each send waits until the other end has read it all)."""
    left, right = (
        trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
    )
    return StreamTransport(left), StreamTransport(right)


async def test_frames_cross_in_order_and_are_counted() -> None:
    with trio.fail_after(10):
        left, right = stream_pair()
        assert (left.kind, left.peer.kind, left.message_framed) == ("memory", "memory", False)
        assert left.peer.authenticated
        first = encode_frame(Command.PING, b"\x80", session_id=1)
        second = encode_frame(Command.PING, b"\x80", session_id=2)
        await left.send_frames([(first[:20], memoryview(first)[20:]), (second,)])
        assert left.bytes_sent == len(first) + len(second)
        received = b""
        while len(received) < len(first) + len(second):
            received += await right.receive_some(7)
        assert received == first + second
        assert right.bytes_received == len(received)
        await left.send_frames([])  # nothing to send is not an error
        await left.aclose()
        assert await right.receive_some() == b""


async def test_descriptors_are_refused() -> None:
    left, _right = stream_pair()
    with pytest.raises(LocalProtocolError):
        await left.send_fd_frame((b"x",), 0)
    with pytest.raises(LocalProtocolError):
        await left.receive_with_fds(100)


async def test_closed_and_broken_transports_refuse_to_send() -> None:
    with trio.fail_after(10):
        left, right = stream_pair()
        await left.aclose()
        await left.aclose()  # idempotent
        with pytest.raises(ConnectionClosed, match="closed"):
            await left.send_frames([(b"x",)])
        with pytest.raises(ConnectionClosed):
            await left.receive_some()
        with pytest.raises(ConnectionClosed):
            await right.send_frames([(b"x",)])  # the peer is gone

        # A send interrupted mid-way may have written part of a frame: no later send.
        left, right = stream_pair(lockstep=True)
        with trio.move_on_after(0.01):
            await left.send_frames([(b"a frame nobody reads",)])
        with pytest.raises(ConnectionClosed, match="interrupted"):
            await left.send_frames([(b"x",)])


async def test_a_server_connection_runs_over_it(tmp_path: Path) -> None:
    """HELLO, a PING, a failing STAT, then the client leaves and the handler returns."""
    with trio.fail_after(30):
        async with open_store(tmp_path / "store") as store:
            server = Server(test_config(tmp_path), store)
            client_end, server_end = trio.testing.memory_stream_pair()
            session = ClientSession()
            client = StreamTransport(client_end)

            async def exchange() -> list[Event]:
                await client.send_frames(session.frames_to_send())
                events: list[Event] = []
                while not any(isinstance(e, (ReplyReceived, ErrorReceived)) for e in events):
                    session.receive_data(await client.receive_some())
                    events += session.events()
                    if any(isinstance(e, HelloAccepted) for e in events):
                        return events
                return events

            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.handle, StreamTransport(server_end))
                session.hello()
                [accepted] = await exchange()
                assert isinstance(accepted, HelloAccepted)
                assert isinstance(accepted.reply, HelloReply)
                assert accepted.reply.features == 0  # no descriptors over a stream
                session.start_request(Ping(b"hi"))
                [pong] = await exchange()
                assert isinstance(pong, ReplyReceived)
                assert pong.message == PingReply(b"hi")
                session.start_request(FileStat("/missing"))
                [error] = await exchange()
                assert isinstance(error, ErrorReceived)
                assert isinstance(error.exception, NotFoundError)
                await client.aclose()
            assert not server.connections
            assert server.stats.connections["memory"] == 0


# --- The in-memory pair -------------------------------------------------------------------------


def frame(session_id: int, size: int = 0) -> bytes:
    """A DATA frame's bytes: ``size`` payload bytes, each the session id's low byte."""
    return encode_frame(Command.DATA, bytes([session_id % 256]) * size, session_id=session_id)


async def test_memory_frames_cross_in_order_as_a_byte_stream() -> None:
    with trio.fail_after(10):
        server_end, client_end = memory_transport_pair()
        assert (client_end.kind, client_end.peer.kind, client_end.message_framed) == (
            "uds",
            "uds",
            False,
        )
        assert not client_end.carries_files
        frames = [frame(1, 10), frame(2, 0), frame(3, 100)]
        await client_end.send_frames([(f[:20], memoryview(f)[20:]) for f in frames])
        # A receive joins frames, and cuts them where max_bytes says.
        first = await server_end.receive_some(len(frames[0]) + 5)
        assert first == frames[0] + frames[1][:5]
        rest = await server_end.receive_some()
        assert first + rest == b"".join(frames)
        stats = client_end.statistics()
        assert stats.sent.frames == 3
        assert stats.sent.bytes == len(b"".join(frames))
        assert stats.sent.unread == 0
        assert server_end.statistics().received == stats.sent


async def test_memory_websocket_ends_receive_one_frame_at_a_time() -> None:
    with trio.fail_after(10):
        server_end, client_end = memory_transport_pair(kind="websocket")
        assert server_end.message_framed
        frames = [frame(1, 10), frame(2, 30)]
        await client_end.send_frames([(f,) for f in frames])
        assert await server_end.receive_some(1) == frames[0]
        assert await server_end.receive_some(1) == frames[1]


async def test_memory_sends_wait_while_the_peer_does_not_read() -> None:
    with trio.fail_after(10):
        server_end, client_end = memory_transport_pair(capacity_to_server=100)
        small = frame(1, 20)  # 40 bytes: two fit, not three
        await client_end.send_frames([(small,), (small,)])
        sent = trio.Event()

        async def send_third() -> None:
            await client_end.send_frames([(small,)])
            sent.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_third)
            await trio.testing.wait_all_tasks_blocked()
            assert not sent.is_set()
            assert client_end.statistics().sent.unread == 80
            # Reading makes room: the waiting send completes.
            assert await server_end.receive_some(40) == small
            await sent.wait()
        assert client_end.statistics().sent.peak_unread == 80
        # A frame larger than the whole capacity still passes once the way is clear.
        large = frame(2, 500)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_end.send_frames, [(large,)])
            received = b""
            while len(received) < 2 * len(small) + len(large):
                received += await server_end.receive_some()
        assert received == small + small + large


async def test_memory_a_cancelled_send_sends_whole_frames_only(autojump_clock: MockClock) -> None:
    server_end, client_end = memory_transport_pair(capacity_to_server=50)
    frames = [frame(1, 20), frame(2, 20), frame(3, 20)]
    with trio.move_on_after(1) as scope:
        await client_end.send_frames([(f,) for f in frames])
    assert scope.cancelled_caught
    # The first frame was sent, whole; the others were not; the transport is usable.
    assert await server_end.receive_some() == frames[0]
    await client_end.send_frames([(frame(4),)])
    assert await server_end.receive_some() == frame(4)


async def test_memory_close_semantics() -> None:
    with trio.fail_after(10):
        server_end, client_end = memory_transport_pair()
        await server_end.send_frames([(frame(1, 5),)])
        await server_end.aclose(error=ConnectionTimeoutError("idle"))
        await server_end.aclose()  # idempotent
        assert isinstance(server_end.close_error, ConnectionTimeoutError)
        # The peer reads what was sent before the close, then EOF, for good.
        assert await client_end.receive_some() == frame(1, 5)
        assert await client_end.receive_some() == b""
        assert await client_end.receive_some() == b""
        # Its sends fail; the closed end refuses everything.
        with pytest.raises(ConnectionClosed, match="peer closed"):
            await client_end.send_frames([(frame(2),)])
        with pytest.raises(ConnectionClosed, match="was closed"):
            await server_end.send_frames([(frame(3),)])
        with pytest.raises(ConnectionClosed, match="was closed"):
            await server_end.receive_some()


async def test_memory_close_wakes_waiting_calls() -> None:
    with trio.fail_after(10):
        _server_end, client_end = memory_transport_pair(capacity_to_server=10)
        outcomes: list[str] = []

        async def receive(end: MemoryTransport) -> None:
            with pytest.raises(ConnectionClosed):
                await end.receive_some()
            outcomes.append("receive")

        async def send(end: MemoryTransport) -> None:
            await end.send_frames([(frame(1, 10),)])
            with pytest.raises(ConnectionClosed):
                await end.send_frames([(frame(2, 10),)])
            outcomes.append("send")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive, client_end)
            nursery.start_soon(send, client_end)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await client_end.receive_some()
            # Closing an end fails the calls waiting on it.
            await client_end.aclose()
        assert sorted(outcomes) == ["receive", "send"]


async def test_memory_descriptors_pass_as_over_a_unix_socket(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"the content")
    with trio.fail_after(10):
        server_end, client_end = memory_transport_pair(carries_files=True)
        assert client_end.carries_files
        with source.open("rb") as file:
            await client_end.send_frames([(frame(1, 3),)])
            await client_end.send_fd_frame((frame(2, 3),), file.fileno())
            await client_end.send_frames([(frame(3, 3),)])
            original = os.fstat(file.fileno())
        # The receive ends with the frame the descriptor came with; the sender's own
        # descriptor is closed by now, the receiver has its own, close-on-exec.
        data, fds = await server_end.receive_with_fds(1 << 20)
        assert data == frame(1, 3) + frame(2, 3)
        [fd] = fds
        try:
            assert not os.get_inheritable(fd)
            passed = os.fstat(fd)
            assert (passed.st_dev, passed.st_ino) == (original.st_dev, original.st_ino)
            assert os.pread(fd, 100, 0) == b"the content"
        finally:
            os.close(fd)
        assert await server_end.receive_with_fds(1 << 20) == (frame(3, 3), [])


async def test_memory_descriptors_are_closed_when_nobody_takes_them(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"x")
    with trio.fail_after(10):
        before = set(os.listdir("/proc/self/fd"))
        server_end, client_end = memory_transport_pair(carries_files=True)
        with source.open("rb") as file:
            await client_end.send_fd_frame((frame(1),), file.fileno())
            await client_end.send_fd_frame((frame(2),), file.fileno())
        # A plain receive drops the descriptor (as the kernel does for recv)...
        assert await server_end.receive_some(len(frame(1))) == frame(1)
        # ...and a close drops those still buffered.
        await server_end.aclose()
        assert set(os.listdir("/proc/self/fd")) <= before


async def test_memory_descriptor_misuse_is_refused() -> None:
    with trio.fail_after(10):
        server_end, client_end = memory_transport_pair()
        with pytest.raises(LocalProtocolError):
            await client_end.send_fd_frame((frame(1),), 0)
        with pytest.raises(LocalProtocolError):
            await server_end.receive_with_fds(100)
        server_end, client_end = memory_transport_pair(carries_files=True)
        read_end, write_end = os.pipe()
        os.close(read_end)
        os.close(write_end)
        with pytest.raises(LocalProtocolError, match="cannot pass descriptor"):
            await client_end.send_fd_frame((frame(1),), read_end)
        with pytest.raises(LocalProtocolError, match="at least one byte"):
            await client_end.send_fd_frame((b"",), 0)


async def test_memory_file_regions_are_read_from_their_file(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"0123456789")
    with trio.fail_after(10):
        server_end, client_end = memory_transport_pair(carries_files=True)
        with source.open("rb") as file:
            header = encode_frame(Command.DATA, b"", session_id=1)
            await server_end.send_frames([(header, FileRegion(file.fileno(), 2, 5))])
            assert await client_end.receive_some() == header + b"23456"
            # A region the file cannot fill breaks the transport: the header promised it.
            with pytest.raises(ConnectionClosed, match="ended 3 bytes early"):
                await server_end.send_frames([(header, FileRegion(file.fileno(), 8, 5))])
            with pytest.raises(ConnectionClosed, match="early"):
                await server_end.send_frames([(header,)])
        # Without carries_files, a region is refused before anything is sent.
        plain_server, _plain_client = memory_transport_pair()
        with pytest.raises(LocalProtocolError):
            await plain_server.send_frames([(header, FileRegion(0, 0, 1))])


async def test_memory_pair_under_the_autojump_clock(autojump_clock: MockClock) -> None:
    # No real time and no thread: a receive nobody answers times out on the mock clock.
    server_end, client_end = memory_transport_pair()
    start = trio.current_time()
    with trio.move_on_after(1000):
        await server_end.receive_some()
    assert trio.current_time() == start + 1000
    with trio.move_on_after(5):
        await client_end.send_frames([(frame(1, 10),)])
    assert trio.current_time() == start + 1000  # a send with room does not wait


@pytest.mark.parametrize("carries_files", [False, True])
async def test_a_server_connection_runs_over_the_memory_pair(
    tmp_path: Path, carries_files: bool
) -> None:
    with trio.fail_after(30):
        async with open_store(tmp_path / "store") as store:
            server = Server(test_config(tmp_path), store)
            server_end, client_end = memory_transport_pair(carries_files=carries_files)
            session = ClientSession()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.handle, server_end)
                session.hello(features=int(Feature.FD_PASSING))
                await client_end.send_frames(session.frames_to_send())
                events: list[Event] = []
                while not any(isinstance(e, HelloAccepted) for e in events):
                    session.receive_data(await client_end.receive_some())
                    events += session.events()
                assert bool(session.features) is carries_files
                await client_end.aclose()
            assert server.stats.connections["uds"] == 0
