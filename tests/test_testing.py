"""librorum.testing's StreamTransport: a FrameTransport over any trio stream, good enough to
run a real server connection in memory."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from librorum.errors import ConnectionClosed, LocalProtocolError, NotFoundError
from librorum.protocol.constants import Command
from librorum.protocol.framing import encode_frame
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
from librorum.testing import StreamTransport, memory_transport_pair, test_config


async def test_frames_cross_in_order_and_are_counted() -> None:
    with trio.fail_after(10):
        left, right = memory_transport_pair()
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
    left, _right = memory_transport_pair()
    with pytest.raises(LocalProtocolError):
        await left.send_fd_frame((b"x",), 0)
    with pytest.raises(LocalProtocolError):
        await left.receive_with_fds(100)


async def test_closed_and_broken_transports_refuse_to_send() -> None:
    with trio.fail_after(10):
        left, right = memory_transport_pair()
        await left.aclose()
        await left.aclose()  # idempotent
        with pytest.raises(ConnectionClosed, match="closed"):
            await left.send_frames([(b"x",)])
        with pytest.raises(ConnectionClosed):
            await left.receive_some()
        with pytest.raises(ConnectionClosed):
            await right.send_frames([(b"x",)])  # the peer is gone

        # A send interrupted mid-way may have written part of a frame: no later send.
        left, right = memory_transport_pair(lockstep=True)
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
