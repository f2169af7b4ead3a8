"""Spec 8, end to end: WRITEs that pass a descriptor (a local file's, or a sealed memfd) over
the Unix socket, the clients' choice of path, the daemon's checks, and descriptor hygiene.

A real daemon runs in this process (librorum.testing), so its open descriptors are this
process's: the leak test counts them in /proc/self/fd.
"""

from __future__ import annotations

import array
import fcntl
import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from librorum.client.aio import Client
from librorum.client.sync import connect
from librorum.errors import (
    AlreadyExistsError,
    BadRequestError,
    LibrorumError,
    NotFoundError,
    RemoteProtocolError,
)
from librorum.protocol.constants import CancelOutcome, Command, Feature, Flags, WriteMode
from librorum.protocol.framing import encode_frame_parts
from librorum.protocol.messages import Cancel, CancelReply, FileWrite, FileWriteReply, Ping
from librorum.protocol.session import (
    ClientSession,
    ConnectionEnded,
    ErrorReceived,
    Event,
    HelloAccepted,
    ReplyReceived,
)
from librorum.testing import TestDaemon, Transport, open_test_daemon
from librorum.transport import FrameTransport, connect_uds

MIB = 1 << 20
BOTH = int(Feature.FD_PASSING | Feature.MEMFD)
SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


def content(size: int, seed: int = 0) -> bytes:
    block = hashlib.blake2b(seed.to_bytes(8, "big")).digest()
    return (block * (size // len(block) + 1))[:size]


async def bytes_in(daemon: TestDaemon) -> int:
    """Bytes the daemon has received on all its connections so far."""
    async with daemon.client() as client:
        return (await client.status()).bytes_in


def memfd(data: bytes, seals: int) -> int:
    fd = os.memfd_create("test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


@contextmanager
def opened(path: Path, flags: int = os.O_RDONLY) -> Iterator[int]:
    fd = os.open(path, flags)
    try:
        yield fd
    finally:
        os.close(fd)


# --- The clients choose the path ----------------------------------------------------------------


async def test_async_client_passes_a_file_and_a_sealed_memfd(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(content(9 * MIB + 123))
    in_memory = content(3 * MIB, seed=1)
    sealed = memfd(in_memory, SEALS | fcntl.F_SEAL_SEAL)
    try:
        with trio.fail_after(60):
            async with open_test_daemon(tmp_path / "d") as daemon:
                before = await bytes_in(daemon)
                async with daemon.client() as client:
                    progress: list[tuple[int, int | None]] = []
                    info = await client.write(
                        "/file", source, progress=lambda d, t: progress.append((d, t))
                    )
                    await client.write("/memfd", Path(f"/proc/self/fd/{sealed}"))
                    assert info.size == 9 * MIB + 123
                    assert progress[-1] == (info.size, info.size)
                    assert await client.read("/file") == source.read_bytes()
                    assert await client.read("/memfd") == in_memory
                # Only frame headers and small payloads crossed the socket, not 12 MiB.
                assert await bytes_in(daemon) - before < 64 * 1024
    finally:
        os.close(sealed)


async def test_sync_client_passes_a_file(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(content(5 * MIB))
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d") as daemon:
            before = await bytes_in(daemon)

            def run() -> bytes:
                with connect(socket_path=daemon.socket_path) as client:
                    client.write("/file", source)
                    return client.read("/file")

            assert await trio.to_thread.run_sync(run) == source.read_bytes()
            assert await bytes_in(daemon) - before < 64 * 1024


@pytest.mark.parametrize(
    "case", ["below 1 MiB", "pass_fds off", "websocket", "resumable", "buffer"]
)
async def test_these_writes_stream_the_bytes(tmp_path: Path, case: str) -> None:
    """Spec 8.3: small contents, resumable uploads, a client told not to, WebSocket
    connections and buffers in memory stream DATA: the content crosses the socket."""
    size = MIB - 1 if case == "below 1 MiB" else 2 * MIB
    source = tmp_path / "source.bin"
    source.write_bytes(content(size))
    data: Path | bytes = source.read_bytes() if case == "buffer" else source
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d") as daemon:
            before = await bytes_in(daemon)
            transport: Transport = "websocket" if case == "websocket" else "uds"
            async with daemon.client(transport, pass_fds=case != "pass_fds off") as client:
                await client.write("/streamed", data, resumable=case == "resumable")
                assert await client.read("/streamed") == source.read_bytes()
            assert await bytes_in(daemon) - before > size


async def test_store_errors_come_back_as_for_a_streamed_write(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(content(2 * MIB))
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d") as daemon, daemon.client() as client:
            await client.write("/taken", b"first")
            with pytest.raises(AlreadyExistsError):
                await client.write("/taken", source, mode=WriteMode.EXCLUSIVE)
            assert await client.read("/taken") == b"first"
            await client.write("/taken", source)  # overwrite
            assert await client.read("/taken") == source.read_bytes()


# --- The daemon's checks, driven by hand -------------------------------------------------------


class Raw:
    """A connection driven through the sans-I/O session over a real Unix socket."""

    def __init__(self, transport: FrameTransport, session: ClientSession) -> None:
        self.transport = transport
        self.session = session

    @classmethod
    async def open(cls, daemon: TestDaemon, features: int = BOTH) -> Raw:
        transport = await connect_uds(daemon.socket_path)
        session = ClientSession()
        session.hello(features=features)
        await transport.send_frames(session.frames_to_send())
        while True:
            session.receive_data(await transport.receive_some())
            if any(isinstance(e, HelloAccepted) for e in session.events()):
                return cls(transport, session)

    async def write_fd(self, message: FileWrite, fd: int) -> int:
        sid = self.session.start_request(message, end=True, fd=True)
        [frame] = self.session.frames_to_send()
        await self.transport.send_fd_frame(frame, fd)
        return sid

    async def until(self, done: Callable[[Event], bool]) -> Event:
        while True:
            for event in self.session.events():
                if done(event):
                    return event
            data = await self.transport.receive_some()
            self.session.receive_data(data)
            if not data:
                return ConnectionEnded(None)

    async def answer(self, sid: int) -> Event:
        return await self.until(
            lambda e: (
                isinstance(e, ConnectionEnded)
                or (isinstance(e, ReplyReceived | ErrorReceived) and e.session_id == sid)
            )
        )

    async def ping(self) -> None:
        """A round trip: the connection still serves."""
        sid = self.session.start_request(Ping(b"ok"))
        await self.transport.send_frames(self.session.frames_to_send())
        assert isinstance(await self.answer(sid), ReplyReceived)

    async def aclose(self) -> None:
        await self.transport.aclose()


def error_of(event: Event) -> LibrorumError:
    assert isinstance(event, ErrorReceived), event
    return event.exception


async def test_a_sealed_memfd_is_stored(tmp_path: Path) -> None:
    data = content(3 * MIB, seed=3)
    with trio.fail_after(30):
        async with open_test_daemon(tmp_path) as daemon:
            raw = await Raw.open(daemon)
            fd = memfd(data, SEALS | fcntl.F_SEAL_SEAL)
            try:
                sid = await raw.write_fd(FileWrite("/sealed", size=len(data)), fd)
            finally:
                os.close(fd)
            reply = await raw.answer(sid)
            assert isinstance(reply, ReplyReceived)
            assert isinstance(reply.message, FileWriteReply)
            assert reply.message.info.size == len(data)
            await raw.aclose()
            async with daemon.client() as client:
                assert await client.read("/sealed") == data


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("unsealed memfd", "not sealed"),
        ("partly sealed memfd", "not sealed"),
        ("memfd without MEMFD", "MEMFD was not negotiated"),
        ("file with only MEMFD", "only MEMFD"),
        ("pipe", "not a regular file"),
        ("directory", "not a regular file"),
        ("write-only file", "not open for reading"),
        ("shorter than declared", "not the declared"),
        ("longer than declared", "not the declared"),
        ("no size", "declare its size"),
        ("resumable", "resumable"),
    ],
)
async def test_bad_descriptors_are_request_errors(tmp_path: Path, case: str, why: str) -> None:
    data = content(2 * MIB, seed=4)
    regular = tmp_path / "regular.bin"
    regular.write_bytes(data)
    message = FileWrite("/target", size=len(data))
    features = BOTH
    fds: list[int] = []
    if case == "unsealed memfd":
        fds.append(memfd(data, 0))
    elif case == "partly sealed memfd":
        fds.append(memfd(data, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW))
    elif case == "memfd without MEMFD":
        features = int(Feature.FD_PASSING)
        fds.append(memfd(data, SEALS))
    elif case == "file with only MEMFD":
        features = int(Feature.MEMFD)
        fds.append(os.open(regular, os.O_RDONLY))
    elif case == "pipe":
        fds.extend(os.pipe())
    elif case == "directory":
        fds.append(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))
    elif case == "write-only file":
        fds.append(os.open(regular, os.O_WRONLY))
    elif case == "shorter than declared":
        fds.append(os.open(regular, os.O_RDONLY))
        message = FileWrite("/target", size=len(data) + 1)
    elif case == "longer than declared":
        fds.append(os.open(regular, os.O_RDONLY))
        message = FileWrite("/target", size=len(data) - 1)
    elif case == "no size":
        fds.append(os.open(regular, os.O_RDONLY))
        message = FileWrite("/target")
    elif case == "resumable":
        fds.append(os.open(regular, os.O_RDONLY))
        message = FileWrite("/target", size=len(data), upload_id="u" * 16)
    with trio.fail_after(30):
        async with open_test_daemon(tmp_path / "d") as daemon:
            raw = await Raw.open(daemon, features)
            try:
                error = error_of(await raw.answer(await raw.write_fd(message, fds[0])))
            finally:
                for fd in fds:
                    os.close(fd)
            assert isinstance(error, BadRequestError), error
            assert why in str(error)
            await raw.ping()  # a request error: the connection goes on
            await raw.aclose()
            async with daemon.client() as client:
                with pytest.raises(NotFoundError):
                    await client.stat("/target")


async def test_an_fd_frame_without_its_descriptor_ends_the_connection(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_test_daemon(tmp_path) as daemon:
            raw = await Raw.open(daemon)
            raw.session.start_request(FileWrite("/x", size=2 * MIB), end=True, fd=True)
            await raw.transport.send_frames(raw.session.frames_to_send())  # no SCM_RIGHTS
            ended = await raw.until(lambda e: isinstance(e, ConnectionEnded))
            assert isinstance(ended, ConnectionEnded)
            assert isinstance(ended.error, RemoteProtocolError)
            assert "without a descriptor" in str(ended.error)
            await raw.aclose()


async def test_a_descriptor_on_another_frame_ends_the_connection(tmp_path: Path) -> None:
    with trio.fail_after(30), opened(tmp_path) as fd:
        async with open_test_daemon(tmp_path / "d") as daemon:
            raw = await Raw.open(daemon)
            raw.session.start_request(Ping(b"sneaky"))
            [frame] = raw.session.frames_to_send()
            await raw.transport.send_fd_frame(frame, fd)
            ended = await raw.until(lambda e: isinstance(e, ConnectionEnded))
            assert isinstance(ended, ConnectionEnded)
            assert isinstance(ended.error, RemoteProtocolError)
            assert "without a WRITE frame" in str(ended.error)
            await raw.aclose()


async def test_two_descriptors_on_one_frame_end_the_connection(tmp_path: Path) -> None:
    regular = tmp_path / "regular.bin"
    regular.write_bytes(content(2 * MIB))
    with trio.fail_after(30), opened(regular) as first, opened(regular) as second:
        async with open_test_daemon(tmp_path / "d") as daemon:
            raw = await Raw.open(daemon)
            raw.session.start_request(FileWrite("/x", size=2 * MIB), end=True, fd=True)
            [frame] = raw.session.frames_to_send()
            fds = array.array("i", (first, second)).tobytes()
            sock = raw.transport.socket  # type: ignore[attr-defined]
            await sock.sendmsg([b"".join(frame)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            ended = await raw.until(lambda e: isinstance(e, ConnectionEnded))
            assert isinstance(ended, ConnectionEnded)
            assert isinstance(ended.error, RemoteProtocolError)
            assert "more than 1 file descriptor" in str(ended.error)
            await raw.aclose()


async def test_fd_flag_without_the_feature_is_refused(tmp_path: Path) -> None:
    regular = tmp_path / "regular.bin"
    regular.write_bytes(content(2 * MIB))
    with trio.fail_after(30), opened(regular) as fd:
        async with open_test_daemon(tmp_path / "d") as daemon:
            raw = await Raw.open(daemon, features=0)
            assert raw.session.features == 0
            # The session refuses to send it; force the frame as a misbehaving peer would.
            raw.session.features = BOTH
            raw.session.start_request(FileWrite("/x", size=2 * MIB), end=True, fd=True)
            [frame] = raw.session.frames_to_send()
            await raw.transport.send_fd_frame(frame, fd)
            ended = await raw.until(lambda e: isinstance(e, ConnectionEnded))
            assert isinstance(ended, ConnectionEnded)
            assert ended.error is not None
            assert "negotiated" in str(ended.error)
            await raw.aclose()


async def test_descriptors_of_refused_writes_are_not_given_to_the_next(tmp_path: Path) -> None:
    """Descriptors are matched to FD frames in order, refused ones included: a WRITE the
    session refuses before it starts (a malformed payload) and one the daemon refuses (no
    size) each consume their own, so the next WRITE stores its own descriptor's content."""
    data = content(2 * MIB, seed=5)
    regular = tmp_path / "regular.bin"
    regular.write_bytes(data)
    wrong = memfd(content(2 * MIB, seed=99), SEALS)
    try:
        with trio.fail_after(30), opened(regular) as fd:
            async with open_test_daemon(tmp_path / "d") as daemon:
                raw = await Raw.open(daemon)
                flags = int(Flags.END | Flags.FD)
                malformed = encode_frame_parts(
                    Command.WRITE, b"\xc1", session_id=99, flags=flags, version=1
                )
                await raw.transport.send_fd_frame(malformed, wrong)
                no_size = error_of(await raw.answer(await raw.write_fd(FileWrite("/x"), wrong)))
                assert isinstance(no_size, BadRequestError)
                sid = await raw.write_fd(FileWrite("/good", size=len(data)), fd)
                assert isinstance(await raw.answer(sid), ReplyReceived)
                await raw.aclose()
                async with daemon.client() as client:
                    assert await client.read("/good") == data
                    with pytest.raises(NotFoundError):
                        await client.stat("/x")
    finally:
        os.close(wrong)


@pytest.mark.parametrize("size_mib", [1, 24])
async def test_cancel_of_an_fd_write_has_a_definite_outcome(tmp_path: Path, size_mib: int) -> None:
    """CANCEL right behind an fd WRITE: whichever outcome the daemon reports, the store
    agrees with it (COMMITTED: the whole file; otherwise: nothing)."""
    data = content(size_mib * MIB, seed=7)
    with trio.fail_after(30):
        async with open_test_daemon(tmp_path) as daemon:
            raw = await Raw.open(daemon)
            fd = memfd(data, SEALS)
            try:
                sid = raw.session.start_request(FileWrite("/c", size=len(data)), fd=True)
                [frame] = raw.session.frames_to_send()
                await raw.transport.send_fd_frame(frame, fd)
            finally:
                os.close(fd)
            cancel = raw.session.start_request(Cancel(sid))
            await raw.transport.send_frames(raw.session.frames_to_send())
            reply = await raw.answer(cancel)
            assert isinstance(reply, ReplyReceived)
            assert isinstance(reply.message, CancelReply)
            outcome = reply.message.outcome
            await raw.aclose()
            async with daemon.client() as client:
                if outcome in (CancelOutcome.COMMITTED, CancelOutcome.UNKNOWN):
                    # UNKNOWN: the WRITE had already finished when the CANCEL was read.
                    assert await client.read("/c") == data
                else:
                    assert outcome in (CancelOutcome.ABORTED, CancelOutcome.NOT_STARTED)
                    with pytest.raises(NotFoundError):
                        await client.stat("/c")


# --- Descriptor hygiene ------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_no_descriptor_leaks(tmp_path: Path) -> None:
    """Every descriptor the daemon receives is closed: after stored writes, refused ones and
    connections failed for fd misuse, the process has as many open as before."""
    data = content(2 * MIB, seed=6)
    regular = tmp_path / "regular.bin"
    regular.write_bytes(data)
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d") as daemon:
            client: Client
            async with daemon.client() as client:
                await client.write("/warm", regular)  # first use opens what stays open
                await client.read("/warm")
            await daemon.running.server.wait_idle()
            baseline = open_fds()
            for round_ in range(10):
                async with daemon.client() as client:
                    await client.write(f"/file-{round_}", regular)
                    await client.write(f"/buffer-{round_}", data)
                raw = await Raw.open(daemon)
                unsealed = memfd(data, 0)
                try:
                    await raw.answer(await raw.write_fd(FileWrite("/x", size=len(data)), unsealed))
                finally:
                    os.close(unsealed)
                with opened(regular) as fd:
                    await raw.answer(await raw.write_fd(FileWrite("/x"), fd))
                    # A descriptor riding on a PING ends the connection.
                    raw.session.start_request(Ping(b"sneaky"))
                    [frame] = raw.session.frames_to_send()
                    await raw.transport.send_fd_frame(frame, fd)
                await raw.until(lambda e: isinstance(e, ConnectionEnded))
                await raw.aclose()
            await daemon.running.server.wait_idle()
            assert open_fds() == baseline
