"""LBRU over a Unix domain socket, the adapter: :class:`UdsTransport`, with peer credentials
and descriptor passing. The listener is in :mod:`librorum.transport.uds_server`, the
connectors in :mod:`librorum.transport.uds_client`.

Security model: the socket lives in a directory only we can enter (0700) and is itself 0600
from the moment it exists; on top of that every connection's SO_PEERCRED uid is checked
against an allow-list (which matters for root, who ignores modes). A client checks the
*server's* credentials the same way, so a socket planted by another user is never trusted.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import socket
import struct
from bisect import bisect_left
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import trio

from librorum.config import ConfigError
from librorum.errors import (
    ConnectionClosed,
    LibrorumError,
    LocalProtocolError,
    RemoteProtocolError,
)
from librorum.limits import (
    RECEIVE_SIZE,
    UDS_SOCKET_BUFFER,
)
from librorum.protocol.framing import FileRegion
from librorum.transport.base import (
    Buffer,
    FileFrameParts,
    FrameParts,
    PeerInfo,
    acquire_lock,
    sendfile_once,
)

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
_BUSY: Final = "another task is already receiving on this connection"
#: Bytes of a batch sent without waiting past which the sender yields once (see _send).
_YIELD_AFTER: Final = 64 << 10


#: sun_path holds 108 bytes, the terminating NUL included.
_MAX_SOCKET_PATH: Final = 107


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
    sends_file_regions: Final = True

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
        # The same socket as a stdlib object, for sends that need no scheduler pass.
        self._raw = _BorrowedSocket(self._sock.family, self._sock.type, fileno=self._sock.fileno())
        if socket_buffer is not None:
            set_buffers(self._sock, socket_buffer)
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
        # The syscalls go straight to the socket, and the task waits only when the socket is
        # full: a batch is one checkpoint, not one per syscall. Trio's socket methods and a
        # checkpoint after each sendfile cost a scheduler pass (with its epoll_wait) per
        # call: two per DATA frame (its header, then its payload), which measured 0.05 s
        # of the daemon's CPU per GiB downloaded (0.26 -> 0.21 s/GiB, chunks unhashed).
        # A batch is bounded by the socket buffer: past it the send waits, and yields.
        # sendmsg asks for EPIPE (MSG_NOSIGNAL) where a write would raise SIGPIPE.
        raw = self._raw
        count = len(buffers)
        index = 0  # first buffer not completely sent
        offset = 0  # bytes of buffers[index] already sent
        sent = 0
        completed = False
        waited = False
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            try:
                while index < count:
                    first = buffers[index]
                    try:
                        if isinstance(first, FileRegion):
                            done = sendfile_once(raw.fileno(), first, offset)
                        else:
                            # The buffers up to the next file region, in one sendmsg.
                            batch: list[Buffer] = []
                            for item in buffers[index : index + _IOV_MAX]:
                                if isinstance(item, FileRegion):
                                    break
                                batch.append(item)
                            if offset:
                                batch[0] = memoryview(batch[0]).cast("B")[offset:]
                            done = raw.sendmsg(batch, ancdata, _SEND_FLAGS)
                            # The kernel attaches ancillary data to the first byte it
                            # accepts; a resumed partial send must not attach the
                            # descriptor a second time.
                            ancdata = ()
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(raw)
                        waited = True
                        continue
                    sent += done
                    done += offset
                    while index < count and done >= lengths[index]:
                        done -= lengths[index]
                        index += 1
                    offset = done
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise self._lost("send", exc) from exc
            completed = True
        finally:
            if not completed and sent:
                at = bisect_left(ends, sent)
                if at == len(ends) or ends[at] != sent:
                    self._broken = f"an earlier send stopped mid-frame after {sent} bytes"
        if not waited and sent >= _YIELD_AFTER:
            # A bulk batch that never waited yields once, so that a producer of bulk data
            # cannot hold the event loop; a small batch (replies) does not: its sender's next
            # receive is a scheduling point, and a pass here would cost as much as the reply.
            await trio.lowlevel.cancel_shielded_checkpoint()

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
        # The guard and the error translation spelled out, not as context managers: this is
        # every small request's receive.
        if self._receiving:
            raise trio.BusyResourceError(_BUSY)
        self._receiving = True
        try:
            return await self._sock.recv(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise self._lost("receive", exc) from exc
        finally:
            self._receiving = False

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
        if self._receiving:
            raise trio.BusyResourceError(_BUSY)
        self._receiving = True
        try:
            data, ancdata, msg_flags, _address = await self._sock.recvmsg(
                max_bytes, ancbufsize, socket.MSG_CMSG_CLOEXEC
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise self._lost("receive", exc) from exc
        finally:
            self._receiving = False
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

    # --- Closing ------------------------------------------------------------------------------

    async def aclose(self, *, error: LibrorumError | None = None) -> None:
        """Close the socket; idempotent. Other tasks blocked on it get ConnectionClosed.
        ``error`` (the connection error ending the connection) changes nothing here: a Unix
        socket has no way to say why beyond the ERROR frame already sent.

        Cancellation: the socket is closed all the same.
        """
        self._closed = True
        # The descriptor is the trio socket's to close; the borrowed object lets go first.
        self._raw.detach()
        await self._stream.aclose()

    def _lost(self, action: str, exc: BaseException) -> ConnectionClosed:
        """The module's one translation: what a trio or OS error on ``action`` means."""
        if self._closed:
            msg = f"cannot {action}: the connection was closed"
        else:
            msg = f"cannot {action}: connection lost ({describe_error(exc)})"
        return ConnectionClosed(msg)


_FD_SIZE: Final = array.array("i").itemsize


class _BorrowedSocket(socket.socket):
    """A stdlib socket object over a descriptor that another object (the trio socket) owns:
    it never closes it, not even when it is collected without :meth:`detach`."""

    __slots__ = ()

    def __del__(self) -> None:
        self.detach()


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


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def set_buffers(sock: trio.socket.SocketType | socket.socket, size: int) -> None:
    # Best effort: the kernel silently caps the value at net.core.[wr]mem_max.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def peer_credentials(sock: trio.socket.SocketType | socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel recorded at connect."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return pid, uid, gid


def check_socket_path(path: Path) -> str:
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
