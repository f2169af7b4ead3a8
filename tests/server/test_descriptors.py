"""Descriptor passing (spec 8) over an in-memory pair that carries files: a WRITE with FD
stores the file, downloads go out as file regions, and the descriptor rules are enforced."""

from __future__ import annotations

import os
from pathlib import Path

import trio
from trio.testing import MockClock

from librorum.errors import RemoteProtocolError
from librorum.protocol.constants import Feature
from librorum.protocol.messages import FileRead, FileWrite, FileWriteReply, Ping
from librorum.protocol.session import DataReceived, ReplyReceived

from .conftest import TEST_DEADLINE, Peer, ServerUnderTest

MIB = 1 << 20


def open_descriptors() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


async def test_a_write_with_a_descriptor_stores_the_file(
    server: ServerUnderTest, clock: MockClock, tmp_path: Path
) -> None:
    content = os.urandom(5 * MIB + 777)
    source = tmp_path / "source"
    source.write_bytes(content)
    with trio.fail_after(TEST_DEADLINE):
        before = open_descriptors()
        peer = await Peer.connect(
            server, carries_files=True, features=int(Feature.FD_PASSING | Feature.MEMFD)
        )
        assert peer.session.features & Feature.FD_PASSING
        fd = os.open(source, os.O_RDONLY)
        try:
            sid = peer.session.start_request(FileWrite("/passed", size=len(content)), fd=True)
            [frame] = peer.session.frames_to_send()
            await peer.transport.send_fd_frame(frame, fd)
            written = await peer.until_final(sid)
        finally:
            os.close(fd)
        assert isinstance(written, ReplyReceived)
        assert isinstance(written.message, FileWriteReply)
        assert written.message.info.size == len(content)
        # Read back: over a transport that carries files the server sends file regions.
        sid = await peer.request(FileRead("/passed"))
        received = bytearray()
        while True:
            events = await peer.next_events()
            received += b"".join(e.data for e in events if isinstance(e, DataReceived))
            if any(isinstance(e, DataReceived) and e.end for e in events):
                break
            peer.session.grant(sid, MIB)
            await peer.flush()
        assert received == content
        await peer.transport.aclose()
        await server.wait_closed()
        # The server closed the descriptor it was given (and the chunk files it read).
        assert open_descriptors() <= before


async def test_a_descriptor_without_its_frame_ends_the_connection(
    server: ServerUnderTest, clock: MockClock, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"not announced")
    with trio.fail_after(TEST_DEADLINE):
        peer = await Peer.connect(server, carries_files=True, features=int(Feature.FD_PASSING))
        peer.session.start_request(Ping())
        [frame] = peer.session.frames_to_send()
        with source.open("rb") as file:
            await peer.transport.send_fd_frame(frame, file.fileno())
        error = await peer.connection_error()
        assert isinstance(error, RemoteProtocolError)
        assert "without a WRITE frame carrying the FD flag" in str(error)


async def test_an_fd_write_without_its_descriptor_ends_the_connection(
    server: ServerUnderTest, clock: MockClock
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        peer = await Peer.connect(server, carries_files=True, features=int(Feature.FD_PASSING))
        peer.session.start_request(FileWrite("/nothing", size=10), fd=True)
        await peer.flush()
        error = await peer.connection_error()
        assert isinstance(error, RemoteProtocolError)
        assert "without a descriptor" in str(error)


async def test_no_fd_features_over_a_transport_without_files(
    server: ServerUnderTest, clock: MockClock
) -> None:
    with trio.fail_after(TEST_DEADLINE):
        peer = await Peer.connect(server, features=int(Feature.FD_PASSING | Feature.MEMFD))
        assert peer.session.features == 0
