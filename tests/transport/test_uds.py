"""The Unix socket transport and listener, over real sockets."""

from __future__ import annotations

import array
import errno
import fcntl
import gc
import logging
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from librorum.config import ConfigError
from librorum.errors import ConnectionClosed, ErrorCode, RemoteProtocolError
from librorum.protocol import Command, Flags
from librorum.protocol.constants import DEFAULT_MAX_PAYLOAD
from librorum.protocol.framing import FileRegion, encode_frame, encode_frame_parts
from librorum.transport import (
    AlreadyRunningError,
    FrameTransport,
    connect_uds,
    uds,
)

from .conftest import (
    DEADLINE,
    data_frame,
    echo,
    error_of,
    receive_frames,
    start_fails,
    uds_server,
)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def never_called(transport: FrameTransport) -> None:
    raise AssertionError("the handler must not run for a refused peer")


# --- Frames ------------------------------------------------------------------------------------


async def test_many_small_frames_go_out_in_one_syscall(
    sock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(DEADLINE):
        async with uds_server(echo, sock_path):
            client = await connect_uds(sock_path)
            calls: list[int] = []
            # The transport sends through the stdlib socket type (trio's goes there too).
            real_sendmsg = socket.socket.sendmsg

            def counting_sendmsg(sock: Any, buffers: Any, *args: Any) -> Any:
                buffers = list(buffers)
                calls.append(len(buffers))
                return real_sendmsg(sock, buffers, *args)

            monkeypatch.setattr(socket.socket, "sendmsg", counting_sendmsg)
            frames = [data_frame(i.to_bytes(4, "big"), session_id=i + 1) for i in range(1000)]
            await client.send_frames(frames)
            # 1000 frames, 2000 parts, all small: one buffer, one syscall.
            assert calls == [1]
            monkeypatch.undo()
            got = await receive_frames(client, 1000)
            assert [f.payload for f in got] == [i.to_bytes(4, "big") for i in range(1000)]
            assert [f.session_id for f in got] == list(range(1, 1001))
            await client.aclose()


async def test_large_payload_in_maximal_frames(sock_path: Path) -> None:
    payload = os.urandom(4 * DEFAULT_MAX_PAYLOAD)
    view = memoryview(payload)
    frames = [
        data_frame(view[i : i + DEFAULT_MAX_PAYLOAD])
        for i in range(0, len(payload), DEFAULT_MAX_PAYLOAD)
    ]
    with trio.fail_after(DEADLINE):
        async with uds_server(echo, sock_path):
            client = await connect_uds(sock_path)
            async with trio.open_nursery() as nursery:
                # Send and receive at once: 4 MiB need not fit in the socket buffers.
                nursery.start_soon(client.send_frames, frames)
                got = await receive_frames(client, 4)
            assert b"".join(bytes(f.payload) for f in got) == payload
            assert all(len(f.payload) == DEFAULT_MAX_PAYLOAD for f in got)
            await client.aclose()


async def test_peer_close_reads_as_eof(sock_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with uds_server(lambda t: t.aclose(), sock_path):
            client = await connect_uds(sock_path)
            assert await client.receive_some() == b""
            await client.aclose()
            with pytest.raises(ConnectionClosed, match="closed"):
                await client.receive_some()
            with pytest.raises(ConnectionClosed):
                await client.send_frames([data_frame(b"x")])


async def send_until_refused(client: FrameTransport) -> None:
    # The first sends to a peer that is gone may still be taken by the kernel.
    for _ in range(100):
        await client.send_frames([data_frame(bytes(64 << 10))])


@pytest.mark.parametrize("sigpipe", ["ignored", "default"])
async def test_a_send_to_a_peer_that_left_raises_connection_closed(
    sock_path: Path, sigpipe: str
) -> None:
    """A peer that is gone is an error, never a SIGPIPE, whatever the process does with the
    signal: with SIGPIPE at its default action, a write without MSG_NOSIGNAL would kill this
    test's process."""
    previous = signal.getsignal(signal.SIGPIPE)
    if sigpipe == "default":
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        with trio.fail_after(DEADLINE):
            async with uds_server(lambda t: t.aclose(), sock_path):
                client = await connect_uds(sock_path)
                assert await client.receive_some() == b""
                with pytest.raises(ConnectionClosed, match="connection lost"):
                    await send_until_refused(client)
                await client.aclose()
    finally:
        signal.signal(signal.SIGPIPE, previous)


async def test_send_cancelled_mid_frame_breaks_the_transport(sock_path: Path) -> None:
    stop = trio.Event()

    async def silent(transport: FrameTransport) -> None:
        await stop.wait()

    with trio.fail_after(DEADLINE):
        async with uds_server(silent, sock_path):
            client = await connect_uds(sock_path)
            # Far more than the socket buffers hold: the send blocks in the middle of it.
            huge = data_frame(bytes(32 << 20))
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.send_frames, [huge])
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            with pytest.raises(ConnectionClosed, match="mid-frame"):
                await client.send_frames([data_frame(b"after")])
            stop.set()
            await client.aclose()


async def test_file_region_payloads_go_by_sendfile(sock_path: Path, tmp_path: Path) -> None:
    content = os.urandom(3 * DEFAULT_MAX_PAYLOAD + 12345)
    source = tmp_path / "source"
    source.write_bytes(content)
    fd = os.open(source, os.O_RDONLY)
    try:
        # Regions interleaved with small in-memory frames, one starting mid-file.
        frames = [
            data_frame(b"first", session_id=1),
            encode_frame_parts(Command.DATA, FileRegion(fd, 0, DEFAULT_MAX_PAYLOAD)),
            data_frame(b"", session_id=2),
            encode_frame_parts(
                Command.DATA, FileRegion(fd, DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_PAYLOAD)
            ),
            encode_frame_parts(Command.DATA, FileRegion(fd, 2 * DEFAULT_MAX_PAYLOAD + 7, 3)),
            data_frame(b"last", session_id=3),
        ]
        with trio.fail_after(DEADLINE):
            async with uds_server(echo, sock_path):
                client = await connect_uds(sock_path)
                async with trio.open_nursery() as nursery:
                    # 2 MiB and more need not fit in the socket buffers: the send waits.
                    nursery.start_soon(client.send_frames, frames)
                    got = await receive_frames(client, len(frames))
                await client.aclose()
    finally:
        os.close(fd)
    m = DEFAULT_MAX_PAYLOAD
    assert [bytes(f.payload) for f in got] == [
        b"first",
        content[:m],
        b"",
        content[m : 2 * m],
        content[2 * m + 7 : 2 * m + 10],
        b"last",
    ]


class _StepCounter(trio.abc.Instrument):
    """Counts the scheduler steps of one task."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_a_batch_of_file_frames_is_one_scheduler_step(
    sock_path: Path, tmp_path: Path
) -> None:
    """Frames that fit in the socket buffer go out without a scheduler pass per syscall
    (each header and each sendfile): the whole batch is one checkpoint."""
    source = tmp_path / "source"
    content = os.urandom(64 << 10)
    source.write_bytes(content)
    fd = os.open(source, os.O_RDONLY)
    try:
        frames = [
            encode_frame_parts(Command.DATA, FileRegion(fd, i * (8 << 10), 8 << 10))
            for i in range(8)
        ]
        with trio.fail_after(DEADLINE):
            async with uds_server(echo, sock_path):
                client = await connect_uds(sock_path)
                counter = _StepCounter(trio.lowlevel.current_task())
                trio.lowlevel.add_instrument(counter)
                try:
                    await client.send_frames(frames)
                finally:
                    trio.lowlevel.remove_instrument(counter)
                got = await receive_frames(client, len(frames))
                await client.aclose()
    finally:
        os.close(fd)
    # 16 syscalls (8 headers, 8 sendfiles), one checkpoint at the end.
    assert counter.steps == 1
    assert b"".join(bytes(f.payload) for f in got) == content


def test_the_borrowed_socket_never_closes_the_descriptor() -> None:
    a, b = socket.socketpair()
    with a, b:
        borrowed = uds._BorrowedSocket(a.family, a.type, fileno=a.fileno())
        del borrowed
        gc.collect()
        a.sendall(b"still open")
        assert b.recv(64) == b"still open"


async def test_file_region_past_the_end_of_its_file_breaks_the_transport(
    sock_path: Path, tmp_path: Path
) -> None:
    source = tmp_path / "short"
    source.write_bytes(b"x" * 100)
    fd = os.open(source, os.O_RDONLY)
    try:
        with trio.fail_after(DEADLINE):
            async with uds_server(echo, sock_path):
                client = await connect_uds(sock_path)
                # The header promises 200 bytes; the file has 100.
                frame = encode_frame_parts(Command.DATA, FileRegion(fd, 0, 200))
                with pytest.raises(ConnectionClosed, match="early"):
                    await client.send_frames([frame])
                with pytest.raises(ConnectionClosed, match="mid-frame"):
                    await client.send_frames([data_frame(b"after")])
                await client.aclose()
    finally:
        os.close(fd)


# --- The socket file ---------------------------------------------------------------------------


async def test_socket_dir_0700_and_socket_0600(sock_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with uds_server(echo, sock_path) as started:
            assert started == sock_path
            dir_info, info = os.lstat(sock_path.parent), os.lstat(sock_path)
            assert stat.S_IMODE(dir_info.st_mode) == 0o700
            assert stat.S_ISSOCK(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o600
            assert info.st_uid == os.geteuid()
        with pytest.raises(FileNotFoundError):  # the socket is unlinked on exit
            os.lstat(sock_path)


async def test_socket_never_observed_with_group_or_other_bits(sock_path: Path) -> None:
    stop = threading.Event()
    observed: list[int] = []

    def watch() -> None:
        # A real thread, racing bind() in real time (a trio task could never run in between).
        while not stop.is_set():
            try:
                observed.append(os.lstat(sock_path).st_mode)
            except FileNotFoundError:
                pass

    old_umask = os.umask(0o000)  # the most permissive umask a daemon could inherit
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with trio.fail_after(DEADLINE):
            for _ in range(100):
                async with uds_server(echo, sock_path):
                    pass
    finally:
        stop.set()
        watcher.join()
        umask_after = os.umask(old_umask)
    assert umask_after == 0o000, "serve_uds leaves the umask alone"
    assert observed, "the watcher never saw the socket: the test proved nothing"
    bad = [oct(stat.S_IMODE(mode)) for mode in observed if mode & 0o077]
    assert not bad


async def test_stale_socket_is_replaced(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(sock_path))
    dead.close()  # the file stays; nothing listens: connect() is refused
    with trio.fail_after(DEADLINE):
        async with uds_server(echo, sock_path):
            client = await connect_uds(sock_path)
            await client.send_frames([data_frame(b"hello")])
            assert (await receive_frames(client, 1))[0].payload == b"hello"
            await client.aclose()


async def test_live_daemon_is_never_stolen(sock_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with uds_server(echo, sock_path):
            with start_fails(AlreadyRunningError, "another daemon"):
                async with uds_server(echo, sock_path):
                    pass
            client = await connect_uds(sock_path)
            await client.send_frames([data_frame(b"still here")])
            assert (await receive_frames(client, 1))[0].payload == b"still here"
            await client.aclose()


async def test_live_foreign_listener_is_never_stolen(sock_path: Path) -> None:
    # Something listens on the path without holding our lock: the connect probe finds it.
    sock_path.parent.mkdir(mode=0o700)
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(sock_path))
    other.listen()
    try:
        with trio.fail_after(DEADLINE), start_fails(AlreadyRunningError, "already listening"):
            async with uds_server(echo, sock_path):
                pass
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(sock_path))  # still the other listener's socket
        probe.close()
    finally:
        other.close()


def make_file(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700)
    path.write_text(text)


async def test_non_socket_at_path_is_refused(sock_path: Path) -> None:
    make_file(sock_path, "not a socket")
    with trio.fail_after(DEADLINE), start_fails(ConfigError, "not a socket"):
        async with uds_server(echo, sock_path):
            pass
    assert stat.S_ISREG(os.lstat(sock_path).st_mode), "left as it was"


async def test_shared_socket_dir_is_refused(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o700)
    sock_path.parent.chmod(0o755)
    with trio.fail_after(DEADLINE), start_fails(ConfigError, "chmod 700"):
        async with uds_server(echo, sock_path):
            pass


async def test_abstract_namespace_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE), start_fails(ConfigError, "abstract"):
        async with uds_server(echo, Path("\0librorum")):
            pass


async def test_connect_without_daemon_says_how_to_start_one(sock_path: Path) -> None:
    with trio.fail_after(DEADLINE), pytest.raises(ConnectionClosed, match="librorum serve") as info:
        await connect_uds(sock_path)
    assert isinstance(info.value.__cause__, FileNotFoundError)


# --- Peer credentials and limits ---------------------------------------------------------------


async def test_allowed_peer_credentials(sock_path: Path) -> None:
    seen: list[Any] = []

    async def record(transport: FrameTransport) -> None:
        seen.append(transport.peer)
        await echo(transport)

    with trio.fail_after(DEADLINE):
        async with uds_server(record, sock_path):
            client = await connect_uds(sock_path)
            await client.send_frames([data_frame(b"ping")])
            await receive_frames(client, 1)
            (peer,) = seen
            assert (peer.kind, peer.uid, peer.gid, peer.pid) == (
                "uds",
                os.getuid(),
                os.getgid(),
                os.getpid(),
            )
            assert peer.authenticated
            assert client.peer.uid == os.geteuid()
            assert client.peer.authenticated
            assert client.kind == "uds"
            assert not client.message_framed
            await client.aclose()


async def test_peer_not_on_the_allow_list_gets_unauthorized(sock_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with uds_server(never_called, sock_path, allowed_uids={os.getuid() + 4242}):
            client = await connect_uds(sock_path)
            frames = await receive_frames(client, 2)
            assert len(frames) == 1, "one ERROR frame, then EOF"
            (frame,) = frames
            assert frame.session_id == 0
            assert frame.flags == Flags.REPLY | Flags.END
            error = error_of(frame)
            assert error.code == ErrorCode.UNAUTHORIZED
            assert str(os.getuid()) in error.message
            await client.aclose()


@pytest.fixture
def world_traversable_dir() -> Iterator[Path]:
    """A directory under /tmp that other users may traverse (pytest's own are 0700), so
    that what stops them is our directory and socket, not an ancestor."""
    base = Path(tempfile.mkdtemp(prefix="lbru-", dir="/tmp"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 65534 needs root")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
async def test_other_uid_cannot_reach_the_socket(world_traversable_dir: Path) -> None:
    path = world_traversable_dir / "run" / "librorum.sock"
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\n"
        "except OSError as e:\n    print(e.errno)\n"
        "else:\n    print('connected')\n"
    )
    # The system interpreter: uid 65534 may not be able to read the project's virtualenv.
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    command = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        python,
        "-c",
        code,
        str(path),
    ]
    with trio.fail_after(DEADLINE):
        async with uds_server(echo, path):
            result = await trio.run_process(command, capture_stdout=True, cwd="/")
            assert result.stdout.decode().strip() == str(errno.EACCES)  # the 0700 directory
            os.chmod(path.parent, 0o711)  # now only the socket's own 0600 stands in the way
            result = await trio.run_process(command, capture_stdout=True, cwd="/")
            assert result.stdout.decode().strip() == str(errno.EACCES)
            os.chmod(path.parent, 0o700)


async def test_connection_cap(sock_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with uds_server(echo, sock_path, max_connections=2):
            first, second = await connect_uds(sock_path), await connect_uds(sock_path)
            for client in (first, second):  # a round trip proves each was admitted
                await client.send_frames([data_frame(b"in")])
                await receive_frames(client, 1)
            third = await connect_uds(sock_path)
            frames = await receive_frames(third, 2)
            assert [error_of(f).code for f in frames] == [ErrorCode.CONNECTION_LIMIT]
            for client in (first, second):
                await client.send_frames([data_frame(b"still")])
                assert (await receive_frames(client, 1))[0].payload == b"still"
            for client in (first, second, third):
                await client.aclose()


async def test_per_uid_cap(sock_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with uds_server(echo, sock_path, max_per_uid=1):
            first = await connect_uds(sock_path)
            await first.send_frames([data_frame(b"in")])
            await receive_frames(first, 1)
            second = await connect_uds(sock_path)
            (frame,) = await receive_frames(second, 2)
            assert error_of(frame).code == ErrorCode.CONNECTION_LIMIT
            await first.aclose()
            await second.aclose()


async def test_failing_handler_is_logged_and_the_listener_survives(
    sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def buggy_once(transport: FrameTransport) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ZeroDivisionError("a bug in the handler")
        await echo(transport)

    with trio.fail_after(DEADLINE), caplog.at_level(logging.DEBUG, "librorum.transport"):
        async with uds_server(buggy_once, sock_path):
            first = await connect_uds(sock_path)
            assert await first.receive_some() == b"", "the failed handler's connection closes"
            second = await connect_uds(sock_path)
            await second.send_frames([data_frame(b"alive")])
            assert (await receive_frames(second, 1))[0].payload == b"alive"
            await first.aclose()
            await second.aclose()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None, "a bug is logged with its traceback"
    assert "ZeroDivisionError" in caplog.text


# --- Descriptor passing ------------------------------------------------------------------------


async def test_fd_passing_one_regular_file(sock_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "payload.bin"
    target.write_bytes(b"file content")
    received: list[tuple[bytes, list[int]]] = []
    done = trio.Event()

    async def take_fd(transport: FrameTransport) -> None:
        received.append(await transport.receive_with_fds(64, max_fds=1))
        done.set()

    with trio.fail_after(DEADLINE):
        async with uds_server(take_fd, sock_path):
            client = await connect_uds(sock_path)
            frame = encode_frame_parts(Command.WRITE, b"", session_id=7, flags=Flags.FD)
            fd = os.open(target, os.O_RDONLY)
            try:
                await client.send_fd_frame(frame, fd)
            finally:
                os.close(fd)
            await done.wait()
            await client.aclose()
    ((data, fds),) = received
    assert data == b"".join(frame)
    assert len(fds) == 1
    try:
        assert fcntl.fcntl(fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        theirs, ours = os.fstat(fds[0]), target.stat()
        assert (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)
        assert os.pread(fds[0], 100, 0) == b"file content"
    finally:
        os.close(fds[0])


@pytest.mark.parametrize("count", [2, 3])
async def test_too_many_fds_are_closed_and_refused(
    sock_path: Path, tmp_path: Path, count: int
) -> None:
    # 2 fit the control buffer (CMSG_SPACE rounds up) and are counted; 3 are truncated
    # (MSG_CTRUNC). Either way: RemoteProtocolError and no descriptor left open.
    target = tmp_path / "f"
    target.write_bytes(b"x")
    outcome: list[BaseException] = []
    accepted = trio.Event()
    counted = trio.Event()
    done = trio.Event()
    release = trio.Event()
    before: list[int] = []

    async def take_fd(transport: FrameTransport) -> None:
        accepted.set()
        await counted.wait()
        try:
            await transport.receive_with_fds(64, max_fds=1)
        except RemoteProtocolError as exc:
            outcome.append(exc)
        done.set()
        await release.wait()  # keep the connection (one fd) open until the count is taken

    with trio.fail_after(DEADLINE):
        async with uds_server(take_fd, sock_path):
            client = await connect_uds(sock_path)
            fds = [os.open(target, os.O_RDONLY) for _ in range(count)]
            frame = encode_frame(Command.WRITE, b"", session_id=1, flags=Flags.FD)
            rights = array.array("i", fds).tobytes()
            await client.socket.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
            for fd in fds:
                os.close(fd)
            await accepted.wait()
            # Now the only copies of the files are in flight in the kernel.
            before.append(open_fds())
            counted.set()
            await done.wait()
            assert open_fds() == before[0], "every descriptor received was closed"
            release.set()
            await client.aclose()
    assert len(outcome) == 1
    assert "descriptor" in str(outcome[0])


async def test_send_fd_frame_needs_an_open_descriptor(sock_path: Path) -> None:
    from librorum.errors import LocalProtocolError

    with trio.fail_after(DEADLINE):
        async with uds_server(echo, sock_path):
            client = await connect_uds(sock_path)
            fd = os.open(os.devnull, os.O_RDONLY)
            os.close(fd)
            with pytest.raises(LocalProtocolError, match="descriptor"):
                await client.send_fd_frame((encode_frame(Command.WRITE),), fd)
            await client.aclose()


async def test_connect_waits_while_the_listen_queue_is_full(sock_path: Path) -> None:
    # A full backlog makes a non-blocking Unix connect fail with EAGAIN, which trio takes for
    # "in progress" and hands back an unconnected socket: connect_uds must notice and retry,
    # not report a server with uid -1.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    waiting: list[socket.socket] = []
    sock_path.parent.mkdir()
    try:
        listener.bind(str(sock_path))
        listener.listen(0)
        # Fill the queue without accepting (Linux admits backlog + 1).
        while True:
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            waiting.append(filler)
            try:
                filler.connect(str(sock_path))
            except BlockingIOError:
                break
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:

                async def accept_later() -> None:
                    await trio.sleep(0.05)
                    listener.setblocking(False)
                    while True:
                        try:
                            conn, _ = listener.accept()
                        except BlockingIOError:
                            break
                        waiting.append(conn)

                nursery.start_soon(accept_later)
                transport = await connect_uds(sock_path)
                assert transport.peer.uid == os.geteuid()
                await transport.aclose()
    finally:
        for sock in waiting:
            sock.close()
        listener.close()
