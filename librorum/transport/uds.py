"""LBRU over a Unix domain socket: the local transport, with peer credentials and descriptor
passing.

Security model: the socket lives in a directory only we can enter (0700) and is itself 0600
from the moment it exists; on top of that every connection's SO_PEERCRED uid is checked
against an allow-list (which matters for root, who ignores modes). A client checks the
*server's* credentials the same way, so a socket planted by another user is never trusted.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import secrets
import socket
import stat
import struct
from bisect import bisect_left
from collections.abc import Collection, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Final, NoReturn

import attrs
import trio

from librorum.config import ConfigError
from librorum.errors import (
    ConnectionClosed,
    ErrorCode,
    LibrorumError,
    LocalProtocolError,
    RemoteProtocolError,
    UnauthorizedError,
)
from librorum.limits import (
    CLOSE_GRACE,
    FD_RESERVE,
    LISTEN_BACKLOG,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_UID,
    RECEIVE_SIZE,
    UDS_SOCKET_BUFFER,
)
from librorum.protocol.framing import FileRegion
from librorum.transport.base import (
    AlreadyRunningError,
    Buffer,
    FileFrameParts,
    FrameParts,
    Handler,
    PeerInfo,
    Reclaim,
    acquire_lock,
    connection_guard,
    fd_headroom,
    logger,
    refusal_frame,
    run_handler,
)
from librorum.transport.files import ensure_private_dir, exclusive_lock

#: struct ucred: pid, uid, gid.
_UCRED: Final = struct.Struct("3i")
#: Linux rejects a sendmsg with more iovecs than this (IOV_MAX).
_IOV_MAX: Final = 1024
#: Parts smaller than this are joined into one buffer before sendmsg: copying a small part is
#: cheaper than an iovec entry (and its buffer export), and many small frames then cost one
#: syscall. Larger parts go to the kernel as they are, uncopied.
_COALESCE_BELOW: Final = 16 << 10
#: EPIPE instead of SIGPIPE if the peer is gone (Python ignores SIGPIPE, an embedder may not).
_SEND_FLAGS: Final = socket.MSG_NOSIGNAL
#: sun_path holds 108 bytes, the terminating NUL included.
_MAX_SOCKET_PATH: Final = 107
#: A connect finding the daemon's listen queue full is retried after this, doubling up to
#: _QUEUE_RETRY_MAX, for _QUEUE_RETRY_TOTAL seconds in all (a burst of connections drains
#: in milliseconds; a queue full for longer means a daemon not accepting).
_QUEUE_RETRY_FIRST: Final = 0.005
_QUEUE_RETRY_MAX: Final = 0.2
_QUEUE_RETRY_TOTAL: Final = 5.0
#: Bytes read and discarded from a refused peer before closing (see _refuse).
_REFUSAL_DRAIN: Final = 64 << 10


class UdsTransport:
    """A :class:`~librorum.transport.base.FrameTransport` over a connected Unix socket.

    Args:
        stream: the connected socket stream; the transport owns it from now on.
        peer: who is at the other end (see :func:`serve_uds` and :func:`connect_uds`).
        socket_buffer: SO_SNDBUF/SO_RCVBUF to set; ``None`` leaves the socket as it is.
    """

    kind: Final = "uds"
    message_framed: Final = False
    carries_files: Final = True

    def __init__(
        self,
        stream: trio.SocketStream,
        peer: PeerInfo,
        *,
        socket_buffer: int | None = UDS_SOCKET_BUFFER,
    ) -> None:
        self.peer: Final = peer
        self._stream = stream
        self._sock = stream.socket
        if socket_buffer is not None:
            _set_buffers(self._sock, socket_buffer)
        self._send_lock = trio.StrictFIFOLock()
        self._receiving = False
        self._closed = False
        # Set when a send stopped in the middle of a frame: the byte stream is then corrupt.
        self._broken: str | None = None

    @property
    def socket(self) -> trio.socket.SocketType:
        """The underlying trio socket (for inspection; do not read or write it)."""
        return self._sock

    # --- Sending ------------------------------------------------------------------------------

    async def send_frames(self, frames: Sequence[FileFrameParts]) -> None:
        """Send whole frames in as few sendmsg calls as possible: small parts are joined, large
        payloads go to the kernel uncopied, partial sends are resumed. A payload that is a
        :class:`~librorum.protocol.framing.FileRegion` goes by ``os.sendfile`` (file to socket
        inside the kernel); its descriptor must stay open until this returns.

        Cancellation: frames fully written stay written; if the cancel lands mid-frame the
        transport is broken (further sends raise ConnectionClosed) and must be closed.

        Raises:
            ConnectionClosed: the peer is gone, the transport is closed or broken, or a file
                region ended before its length (the transport is then broken).
        """
        buffers, lengths, ends = _gather(frames)
        if not buffers:
            await trio.lowlevel.checkpoint()
            return
        lock = self._send_lock
        # Usually free (each side has one writer at a time): taken without a scheduler pass.
        await acquire_lock(lock)
        try:
            await self._send(buffers, lengths, ends, ())
        finally:
            lock.release()

    async def send_fd_frame(self, parts: FrameParts, fd: int) -> None:
        """Send one frame with ``fd`` attached to its first byte as SCM_RIGHTS. The frame goes
        in its own sendmsg, so the descriptor can never ride on an earlier frame's bytes. The
        caller keeps ``fd`` (the peer gets a duplicate) and closes it when it likes.

        Cancellation: as :meth:`send_frames`.

        Raises:
            LocalProtocolError: ``fd`` is not an open descriptor, or the frame is empty.
            ConnectionClosed: as :meth:`send_frames`.
        """
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError as exc:
            msg = f"cannot pass descriptor {fd}: {exc.strerror}"
            raise LocalProtocolError(msg) from exc
        buffers, lengths, ends = _gather((parts,))
        if not buffers:
            msg = "a descriptor must ride on at least one byte"
            raise LocalProtocolError(msg)
        ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", (fd,)).tobytes())]
        async with self._send_lock:
            await self._send(buffers, lengths, ends, ancdata)

    async def _send(
        self,
        buffers: list[Buffer | FileRegion],
        lengths: list[int],
        ends: list[int],
        ancdata: Sequence[tuple[int, int, Buffer]],
    ) -> None:
        if self._broken is not None:
            msg = f"cannot send: {self._broken}"
            raise ConnectionClosed(msg)
        if self._closed:
            # Checked before any byte moves: a file region's descriptor may already be gone.
            msg = "cannot send: the connection was closed"
            raise ConnectionClosed(msg)
        sock = self._sock
        count = len(buffers)
        index = 0  # first buffer not completely sent
        offset = 0  # bytes of buffers[index] already sent
        sent = 0
        completed = False
        try:
            with self._errors("send"):
                while index < count:
                    first = buffers[index]
                    if isinstance(first, FileRegion):
                        done = await self._sendfile(first, offset)
                    else:
                        # The buffers up to the next file region, in one sendmsg.
                        batch: list[Buffer] = []
                        for item in buffers[index : index + _IOV_MAX]:
                            if isinstance(item, FileRegion):
                                break
                            batch.append(item)
                        if offset:
                            batch[0] = memoryview(batch[0]).cast("B")[offset:]
                        done = await sock.sendmsg(batch, ancdata, _SEND_FLAGS)
                        # The kernel attaches ancillary data to the first byte it accepts; a
                        # resumed partial send must not attach the descriptor a second time.
                        ancdata = ()
                    sent += done
                    done += offset
                    while index < count and done >= lengths[index]:
                        done -= lengths[index]
                        index += 1
                    offset = done
            completed = True
        finally:
            if not completed and sent:
                at = bisect_left(ends, sent)
                if at == len(ends) or ends[at] != sent:
                    self._broken = f"an earlier send stopped mid-frame after {sent} bytes"

    async def _sendfile(self, region: FileRegion, skip: int) -> int:
        """One ``os.sendfile`` of ``region`` after its first ``skip`` bytes; returns the bytes
        sent (at least 1). Waits while the socket is full. Trio's socket methods would do
        the same for sendmsg: a checkpoint, then retry on EAGAIN once writable.

        Raises:
            OSError: the send failed (translated by the caller), or the file ended early.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        fd = self._sock.fileno()
        while True:
            try:
                done = os.sendfile(fd, region.fd, region.offset + skip, region.length - skip)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)
                continue
            if done == 0:
                # The file is shorter than the region: the frame's header promised bytes
                # that do not exist, so the stream cannot continue.
                msg = f"file region ended {region.length - skip} bytes early"
                raise OSError(errno.EIO, msg)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return done

    # --- Receiving ----------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> bytes:
        """Receive up to ``max_bytes`` from the byte stream; ``b""`` once the peer closed.

        Descriptors the peer attached are discarded (closed) by the kernel: use
        :meth:`receive_with_fds` where they may arrive.

        Cancellation: nothing is lost.

        Raises:
            ConnectionClosed: the connection broke or was closed locally.
        """
        if max_bytes < 1:
            msg = f"max_bytes must be at least 1, got {max_bytes}"
            raise ValueError(msg)
        with self._receive_guard(), self._errors("receive"):
            return await self._sock.recv(max_bytes)

    async def receive_with_fds(self, max_bytes: int, max_fds: int = 1) -> tuple[bytes, list[int]]:
        """Receive up to ``max_bytes`` and the descriptors that came with them, close-on-exec
        (MSG_CMSG_CLOEXEC). The caller owns the descriptors. The kernel hands a descriptor
        over with the first bytes of the send it came with and ends the receive at that
        send's end, so the caller can match descriptors to frames in order (spec 8.1).

        Cancellation: nothing is lost.

        Raises:
            RemoteProtocolError: more than ``max_fds`` descriptors, or the kernel truncated the
                control data (MSG_CTRUNC); every descriptor received is closed first.
            ConnectionClosed: the connection broke or was closed locally.
        """
        if max_bytes < 1 or max_fds < 1:
            msg = f"max_bytes and max_fds must be at least 1, got {max_bytes}, {max_fds}"
            raise ValueError(msg)
        ancbufsize = socket.CMSG_SPACE(max_fds * _FD_SIZE)
        with self._receive_guard(), self._errors("receive"):
            data, ancdata, msg_flags, _address = await self._sock.recvmsg(
                max_bytes, ancbufsize, socket.MSG_CMSG_CLOEXEC
            )
        # CMSG_SPACE rounds up, so the buffer may have room for more than max_fds: count.
        fds = _collect_fds(ancdata)
        if msg_flags & socket.MSG_CTRUNC or len(fds) > max_fds:
            _close_all(fds)
            msg = (
                f"peer sent more than {max_fds} file descriptor(s) with one frame"
                if len(fds) > max_fds
                else "peer's control data was truncated (too many descriptors)"
            )
            raise RemoteProtocolError(msg)
        return data, fds

    @contextlib.contextmanager
    def _receive_guard(self) -> Iterator[None]:
        if self._receiving:
            msg = "another task is already receiving on this connection"
            raise trio.BusyResourceError(msg)
        self._receiving = True
        try:
            yield
        finally:
            self._receiving = False

    # --- Closing ------------------------------------------------------------------------------

    async def aclose(self, *, error: LibrorumError | None = None) -> None:
        """Close the socket; idempotent. Other tasks blocked on it get ConnectionClosed.
        ``error`` (the connection error ending the connection) changes nothing here: a Unix
        socket has no way to say why beyond the ERROR frame already sent.

        Cancellation: the socket is closed all the same.
        """
        self._closed = True
        await self._stream.aclose()

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """The module's one translation boundary: trio and OS errors to ConnectionClosed."""
        try:
            yield
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if self._closed:
                msg = f"cannot {action}: the connection was closed"
            else:
                msg = f"cannot {action}: connection lost ({_describe_error(exc)})"
            raise ConnectionClosed(msg) from exc


_FD_SIZE: Final = array.array("i").itemsize


def _gather(
    frames: Sequence[FileFrameParts],
) -> tuple[list[Buffer | FileRegion], list[int], list[int]]:
    """Flatten frames into sendmsg buffers (and file regions, for sendfile), joining runs of
    small parts. Returns the items, their lengths, and the cumulative byte offset at which
    each frame ends."""
    buffers: list[Buffer | FileRegion] = []
    lengths: list[int] = []
    ends: list[int] = []
    run: list[Buffer] = []
    run_bytes = 0
    total = 0
    for parts in frames:
        for part in parts:
            if isinstance(part, FileRegion):
                size = part.length
                large: Buffer | FileRegion | None = part
            else:
                size = part.nbytes if isinstance(part, memoryview) else len(part)
                large = part if size >= _COALESCE_BELOW else None
                if large is None and size:
                    run.append(part)
                    run_bytes += size
            if large is not None:
                if run:
                    buffers.append(b"".join(run) if len(run) > 1 else run[0])
                    lengths.append(run_bytes)
                    run = []
                    run_bytes = 0
                if size:
                    buffers.append(large)
                    lengths.append(size)
            total += size
        ends.append(total)
    if run:
        buffers.append(b"".join(run) if len(run) > 1 else run[0])
        lengths.append(run_bytes)
    return buffers, lengths, ends


def _collect_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(data[: len(data) - len(data) % _FD_SIZE])
            fds.extend(received)
    return fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _set_buffers(sock: trio.socket.SocketType, size: int) -> None:
    # Best effort: the kernel silently caps the value at net.core.[wr]mem_max.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _peer_credentials(sock: trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel recorded at connect."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return pid, uid, gid


def _check_socket_path(path: Path) -> str:
    """The path as a string, after refusing what bind/connect would misread: a leading NUL
    means the abstract namespace (no file, no permissions: anyone could connect)."""
    name = os.fspath(path)
    if not name or "\0" in name:
        msg = f"invalid socket path {name!r}: the abstract namespace is never used"
        raise ConfigError(msg)
    if len(os.fsencode(name)) > _MAX_SOCKET_PATH:
        msg = f"socket path {name} is too long for a Unix socket ({_MAX_SOCKET_PATH} bytes max)"
        raise ConfigError(msg)
    return name


# --- The listener ------------------------------------------------------------------------------


@attrs.define
class _Admission:
    """The listener's bookkeeping: who is allowed, how many are connected."""

    allowed_uids: frozenset[int]
    max_connections: int
    max_per_uid: int
    fd_reserve: int
    reclaim: Reclaim | None = None
    total: int = 0
    per_uid: dict[int, int] = attrs.Factory(dict)

    def admit(self, uid: int, fd: int) -> tuple[ErrorCode, str] | None:
        """Count the connection in, or say why it is refused. No await in here: the check and
        the increment are one atomic step for trio.

        At a full cap, a stalled connection (of this uid for the per-uid cap, of anyone for
        the total) is closed to make room, so stalled connections cannot hold the cap
        against new clients; the newcomer is counted in at once, and the cap is exceeded
        only until that connection has closed (the close grace at most).
        """
        if uid not in self.allowed_uids:
            return ErrorCode.UNAUTHORIZED, f"uid {uid} is not allowed to use this daemon"
        if not fd_headroom(fd, self.fd_reserve):
            return ErrorCode.CONNECTION_LIMIT, "too many connections; try again later"
        if self.per_uid.get(uid, 0) >= self.max_per_uid:
            if not self._reclaim(uid):
                return (
                    ErrorCode.CONNECTION_LIMIT,
                    f"uid {uid} has {self.max_per_uid} connections open already",
                )
        elif self.total >= self.max_connections and not self._reclaim(None):
            return ErrorCode.CONNECTION_LIMIT, "too many connections; try again later"
        self.total += 1
        self.per_uid[uid] = self.per_uid.get(uid, 0) + 1
        return None

    def _reclaim(self, uid: int | None) -> bool:
        return self.reclaim is not None and self.reclaim("uds", uid)

    def release(self, uid: int) -> None:
        self.total -= 1
        left = self.per_uid[uid] - 1
        if left:
            self.per_uid[uid] = left
        else:
            del self.per_uid[uid]


async def serve_uds(
    handler: Handler,
    path: Path,
    *,
    allowed_uids: Collection[int],
    max_connections: int = MAX_CONNECTIONS,
    max_per_uid: int = MAX_CONNECTIONS_PER_UID,
    fd_reserve: int = FD_RESERVE,
    backlog: int = LISTEN_BACKLOG,
    socket_buffer: int = UDS_SOCKET_BUFFER,
    close_grace: float = CLOSE_GRACE,
    reclaim: Reclaim | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Listen on the Unix socket ``path`` and run ``handler`` for each accepted connection.

    Start it with ``await nursery.start(serve_uds, handler, path, allowed_uids=...)``; the
    start returns ``path`` once connections are being accepted.

    The directory of ``path`` is created 0700 if missing (an existing one must be ours and
    private). The socket is bound under a temporary name in that directory, made 0600 and
    verified, then renamed onto ``path``, so ``path`` is 0600 from the moment it exists (the
    process umask is never touched: it is shared with every thread). A socket file already at
    ``path`` is replaced (atomically) when it is stale (connect() is refused: its daemon
    died) and never when something answers on it.
    A lock file next to the socket (``PATH.lock``) keeps two starting daemons from both taking
    the stale path. The socket is unlinked on exit, unless another daemon replaced it since.

    Each connection's SO_PEERCRED uid must be in ``allowed_uids``; refused peers (not allowed,
    over ``max_connections`` in total or ``max_per_uid`` for their uid, or too close to the
    descriptor limit) get an LBRU ERROR frame (UNAUTHORIZED or CONNECTION_LIMIT) and are
    closed, unless ``reclaim`` makes room at a full cap by closing a stalled connection. A handler's exception ends only its connection (see
    :func:`~librorum.transport.base.run_handler`); when it returns the transport is closed.

    Args:
        handler: called with each accepted connection's :class:`UdsTransport`.
        path: the socket path; never the abstract namespace.
        allowed_uids: uids that may connect.
        max_connections, max_per_uid: connection caps.
        fd_reserve: descriptors to keep free for the rest of the daemon.
        backlog: listen(2) backlog.
        socket_buffer: SO_SNDBUF/SO_RCVBUF of each connection.
        close_grace: longest time spent telling a refused peer why.
        reclaim: called at a full cap with ("uds", uid) for the per-uid cap or ("uds", None)
            for the total; true when it closed a stalled connection to make room.
        handler_nursery: where handlers run (default: inside this task), so that a server can
            stop accepting and still let connections finish.
        task_status: see :meth:`trio.Nursery.start`.

    Cancellation: stops accepting, closes the listening socket and unlinks it; handlers in
    our own nursery are cancelled, handlers in ``handler_nursery`` are not.

    Raises:
        AlreadyRunningError: a daemon answers on ``path`` or holds its lock.
        ConfigError: the directory or the path is unsafe or unusable (see above).
    """
    name = _check_socket_path(path)
    ensure_private_dir(path.parent)
    admission = _Admission(
        frozenset(allowed_uids), max_connections, max_per_uid, fd_reserve, reclaim
    )
    lock_path = path.with_name(path.name + ".lock")
    with exclusive_lock(lock_path, f"another daemon is serving {path}"):
        raw, identity = _bind(path, name, backlog)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
        try:
            serve_one = partial(
                _serve_connection,
                handler=handler,
                admission=admission,
                socket_buffer=socket_buffer,
                close_grace=close_grace,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(
                        trio.serve_listeners,
                        serve_one,
                        [listener],
                        handler_nursery=handler_nursery,
                    )
                )
                logger.info("listening on %s", path)
                task_status.started(path)
                await trio.sleep_forever()
        finally:
            listener.socket.close()
            _unlink_if_ours(path, identity)


def _bind(path: Path, name: str, backlog: int) -> tuple[socket.socket, tuple[int, int]]:
    """Create, bind and listen, so that ``path`` is 0600 from the moment it exists; return
    the socket and the (st_dev, st_ino) of its file, so that on exit we unlink our socket and
    never a successor's.

    The socket is bound under a temporary name in the (verified 0700) directory, made 0600,
    checked, and then renamed onto ``path``: the final name appears atomically with its final
    mode, and a stale socket there is replaced atomically too. Changing the umask around
    bind() would do the first part, but the umask is process-wide: a worker thread creating a
    directory in that window would make it unusable (0600, no search bit).
    """
    try:
        existing = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(existing.st_mode):
            msg = f"{path} exists and is not a socket; refusing to replace it"
            raise ConfigError(msg)
        if _is_live(name):
            msg = f"a daemon is already listening on {path}"
            raise AlreadyRunningError(msg)
        logger.info("replacing stale socket %s", path)
    temporary = path.with_name(f".{secrets.token_hex(4)}.tmp")
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        raw.bind(_check_socket_path(temporary))
        try:
            os.chmod(temporary, 0o600)
            info = temporary.lstat()
            if (
                not stat.S_ISSOCK(info.st_mode)
                or info.st_uid != os.geteuid()
                or stat.S_IMODE(info.st_mode) != 0o600
            ):
                msg = (
                    f"socket {temporary} has mode {stat.S_IMODE(info.st_mode):04o}, owner "
                    f"{info.st_uid}; expected 0600 and uid {os.geteuid()}"
                )
                raise ConfigError(msg)
            # Listening before the rename: the path accepts connections as soon as it exists.
            raw.listen(backlog)
            os.rename(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raw.close()
        msg = f"cannot listen on {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    except BaseException:
        raw.close()
        raise
    return raw, (info.st_dev, info.st_ino)


def _is_live(name: str) -> bool:
    """Whether something accepts connections on the socket file ``name``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(name)
    except (BlockingIOError, InterruptedError):
        return True  # EAGAIN: a listener whose backlog is full; it is alive
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        msg = f"cannot tell whether the socket {name} is in use: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    finally:
        probe.close()
    return True


def _unlink_if_ours(path: Path, identity: tuple[int, int]) -> None:
    try:
        info = path.lstat()
        if (info.st_dev, info.st_ino) == identity:
            path.unlink()
    except OSError as exc:
        logger.warning("could not remove socket %s: %s", path, exc)


async def _serve_connection(
    stream: trio.SocketStream,
    *,
    handler: Handler,
    admission: _Admission,
    socket_buffer: int,
    close_grace: float,
) -> None:
    sock = stream.socket
    try:
        pid, uid, gid = _peer_credentials(sock)
        _set_buffers(sock, socket_buffer)
    except OSError as exc:
        logger.debug("dropping a connection that vanished at accept: %s", exc)
        await trio.aclose_forcefully(stream)
        return
    refusal = admission.admit(uid, sock.fileno())
    if refusal is not None:
        code, message = refusal
        logger.warning("refusing local connection from uid %d pid %d: %s", uid, pid, message)
        with connection_guard(f"uds:uid={uid},pid={pid}"):
            await _refuse(stream, code, message, close_grace)
        return
    peer = PeerInfo("uds", uid=uid, gid=gid, pid=pid, authenticated=True)
    transport = UdsTransport(stream, peer, socket_buffer=None)
    try:
        with connection_guard(f"uds:uid={uid},pid={pid}"):
            await run_handler(handler, transport)
    finally:
        admission.release(uid)
        await transport.aclose()


async def _refuse(stream: trio.SocketStream, code: ErrorCode, message: str, grace: float) -> None:
    """Tell a refused peer why (one ERROR frame, then EOF), then close."""
    with trio.move_on_after(grace):
        try:
            await stream.send_all(refusal_frame(code, message))
            await stream.send_eof()
            # Closing with unread bytes in our queue would make Linux report ECONNRESET to the
            # peer, possibly before it reads the frame; discard what it already sent.
            _drain_nowait(stream.socket.fileno(), _REFUSAL_DRAIN)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            logger.debug("refused peer went away first: %s", exc)
    await trio.aclose_forcefully(stream)


def _drain_nowait(fd: int, limit: int) -> None:
    # The socket is non-blocking (trio made it so): os.read returns what is queued, or raises
    # BlockingIOError when nothing is.
    drained = 0
    with contextlib.suppress(OSError):
        while drained < limit:
            chunk = os.read(fd, limit - drained)
            if not chunk:
                break
            drained += len(chunk)


# --- The client --------------------------------------------------------------------------------


async def _open_unix_stream(path: Path, name: str) -> trio.SocketStream:
    """Connect to ``name``, waiting (briefly, with backoff) while the daemon's listen queue
    is full.

    A non-blocking connect to a Unix socket whose backlog is full fails with EAGAIN, which
    trio takes for "in progress" (as on TCP): it hands back a socket that is not connected.
    That is recognised (no peer) and the connect is tried again.

    Raises:
        ConnectionClosed: no daemon at ``path``, or its queue stayed full.
        UnauthorizedError: the socket is not ours to use (permission denied).
    """
    delay = _QUEUE_RETRY_FIRST
    waited = 0.0
    while True:
        try:
            stream = await trio.open_unix_socket(name)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            msg = f"no daemon at {path}: start it with `librorum serve`"
            raise ConnectionClosed(msg) from exc
        except PermissionError as exc:
            msg = f"permission denied connecting to {path}: the daemon belongs to another user"
            raise UnauthorizedError(msg) from exc
        except OSError as exc:
            msg = f"cannot connect to {path}: {_describe_error(exc)}"
            raise ConnectionClosed(msg) from exc
        try:
            stream.socket.getpeername()
        except OSError:
            await trio.aclose_forcefully(stream)
        else:
            return stream
        if waited >= _QUEUE_RETRY_TOTAL:
            msg = f"the daemon at {path} is not accepting connections (its queue is full)"
            raise ConnectionClosed(msg)
        await trio.sleep(delay)
        waited += delay
        delay = min(delay * 2, _QUEUE_RETRY_MAX)


async def connect_uds(
    path: Path,
    *,
    trusted_uids: Collection[int] | None = None,
    socket_buffer: int = UDS_SOCKET_BUFFER,
) -> UdsTransport:
    """Connect to the daemon's Unix socket.

    The server's SO_PEERCRED uid must be ours, root's, or in ``trusted_uids``: a socket that
    someone else created (in /tmp, say) is never talked to.

    Args:
        path: the daemon's socket.
        trusted_uids: extra uids the server may run as.
        socket_buffer: SO_SNDBUF/SO_RCVBUF for our end.

    Cancellation: nothing is left open.

    Raises:
        ConnectionClosed: no daemon at ``path`` (the message says how to start one), or the
            connection failed; the OS error is the ``__cause__``.
        UnauthorizedError: the server runs as an untrusted uid, or the socket is not ours to
            use (permission denied).
        ConfigError: ``path`` is not usable as a socket path.
    """
    name = _check_socket_path(path)
    stream = await _open_unix_stream(path, name)
    try:
        pid, uid, gid = _peer_credentials(stream.socket)
    except OSError as exc:
        await trio.aclose_forcefully(stream)
        msg = f"cannot connect to {path}: {_describe_error(exc)}"
        raise ConnectionClosed(msg) from exc
    trusted = {os.geteuid(), 0, *(trusted_uids or ())}
    if uid not in trusted:
        await trio.aclose_forcefully(stream)
        msg = f"the socket {path} is served by uid {uid}, which is not trusted; not using it"
        raise UnauthorizedError(msg)
    peer = PeerInfo("uds", uid=uid, gid=gid, pid=pid, authenticated=True)
    return UdsTransport(stream, peer, socket_buffer=socket_buffer)
