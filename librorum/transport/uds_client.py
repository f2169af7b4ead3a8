"""LBRU over a Unix domain socket, the connectors: :func:`connect_uds` (trio) and
:func:`connect_uds_blocking` (a blocking socket). Both refuse the same socket paths, translate
the same connect errors and trust the same server uids (:func:`check_server_uid`)."""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Final

import trio

from librorum.errors import (
    ConnectionClosed,
    ConnectionTimeoutError,
    LibrorumError,
    UnauthorizedError,
)
from librorum.limits import (
    RECEIVE_SIZE,
    UDS_SOCKET_BUFFER,
)
from librorum.transport.base import (
    Buffer,
    FrameParts,
    PeerInfo,
    blocking_socket_errors,
)
from librorum.transport.uds import (
    UdsTransport,
    check_socket_path,
    describe_error,
    peer_credentials,
    set_buffers,
)

#: Linux rejects a sendmsg with more buffers than this.
IOV_MAX: Final = 1024
#: A connect finding the daemon's listen queue full is retried after this, doubling up to
#: _QUEUE_RETRY_MAX, for _QUEUE_RETRY_TOTAL seconds in all (a burst of connections drains
#: in milliseconds; a queue full for longer means a daemon not accepting).
_QUEUE_RETRY_FIRST: Final = 0.005
_QUEUE_RETRY_MAX: Final = 0.2
_QUEUE_RETRY_TOTAL: Final = 5.0


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
        except OSError as exc:
            raise connect_error(path, exc) from exc
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
    name = check_socket_path(path)
    stream = await _open_unix_stream(path, name)
    try:
        pid, uid, gid = peer_credentials(stream.socket)
        check_server_uid(path, uid, trusted_uids)
    except BaseException as exc:
        await trio.aclose_forcefully(stream)
        if isinstance(exc, OSError):
            msg = f"cannot connect to {path}: {describe_error(exc)}"
            raise ConnectionClosed(msg) from exc
        raise
    peer = PeerInfo("uds", uid=uid, gid=gid, pid=pid, authenticated=True)
    return UdsTransport(stream, peer, socket_buffer=socket_buffer)


def connect_error(path: Path, exc: OSError) -> LibrorumError:
    """What a failed connect to the socket ``path`` means for a client: no daemon there
    (the message says how to start one), a socket that is not ours to use, or another
    failure."""
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        msg = f"no daemon at {path}: start it with `librorum serve`"
        return ConnectionClosed(msg)
    if isinstance(exc, PermissionError):
        msg = f"permission denied connecting to {path}: the daemon belongs to another user"
        return UnauthorizedError(msg)
    msg = f"cannot connect to {path}: {describe_error(exc)}"
    return ConnectionClosed(msg)


def check_server_uid(path: Path, uid: int, trusted_uids: Collection[int] | None) -> None:
    """Refuse a server whose uid is not ours, root's, or in ``trusted_uids``: a socket that
    someone else created (in /tmp, say) is never talked to.

    Raises:
        UnauthorizedError: ``uid`` is not trusted.
    """
    if uid not in {os.geteuid(), 0, *(trusted_uids or ())}:
        msg = f"the socket {path} is served by uid {uid}, which is not trusted; not using it"
        raise UnauthorizedError(msg)


# --- The blocking connector --------------------------------------------------------------------


class BlockingUdsTransport:
    """A :class:`~librorum.transport.base.BlockingFrameTransport` over a connected, blocking
    Unix socket: vectored ``sendmsg``, ``recv_into`` one reused buffer, descriptors passed
    with SCM_RIGHTS. Each call is bounded by the socket's timeout."""

    carries_files: Final = True

    def __init__(
        self, sock: socket.socket, path: Path, *, timeout: float, receive_size: int
    ) -> None:
        self._sock = sock
        self._timeout = timeout
        self._where = f"unix:{path}"
        self._buffer = memoryview(bytearray(receive_size))

    def send_frames(self, frames: Sequence[FrameParts]) -> None:
        """Send whole frames, in order.

        Raises:
            ConnectionTimeoutError: a send took longer than the timeout (a frame may be cut).
            ConnectionClosed: the send failed.
        """
        parts: list[Buffer] = [part for frame in frames for part in frame if len(part)]
        with blocking_socket_errors(f"send to {self._where} failed", self._timeout):
            while parts:
                batch = parts[:IOV_MAX]
                sent = self._sock.sendmsg(batch, (), socket.MSG_NOSIGNAL)
                # Drop what went out; a partial send leaves the tail of one part.
                done = 0
                while done < len(batch) and sent >= len(batch[done]):
                    sent -= len(batch[done])
                    done += 1
                del parts[:done]
                if sent:
                    parts[0] = memoryview(parts[0]).cast("B")[sent:]

    def send_fd_frame(self, frame: FrameParts, fd: int) -> None:
        """Send one frame with ``fd`` attached to its first byte (SCM_RIGHTS, spec 8.1); the
        caller keeps ``fd``.

        Raises:
            As :meth:`send_frames`.
        """
        parts: list[Buffer] = [part for part in frame if len(part)]
        fds = array.array("i", (fd,)).tobytes()
        with blocking_socket_errors(f"send to {self._where} failed", self._timeout):
            sent = self._sock.sendmsg(
                parts, [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], socket.MSG_NOSIGNAL
            )
        rest = b"".join(parts)[sent:]  # a control frame: small
        if rest:
            self.send_frames([[rest]])

    def receive_some(self) -> Buffer:
        """What arrived (a view of the reused buffer, valid until the next call), or
        ``b""`` at EOF.

        Raises:
            ConnectionTimeoutError: nothing arrived within the timeout.
            ConnectionClosed: the receive failed.
        """
        with blocking_socket_errors(f"receive from {self._where} failed", self._timeout):
            n = self._sock.recv_into(self._buffer)
        return self._buffer[:n]

    def set_timeout(self, timeout: float) -> None:
        self._timeout = timeout
        self._sock.settimeout(timeout)

    def close(self) -> None:
        self._sock.close()


def connect_uds_blocking(
    path: Path,
    *,
    timeout: float,
    trusted_uids: Collection[int] | None = None,
    socket_buffer: int = UDS_SOCKET_BUFFER,
    receive_size: int = RECEIVE_SIZE,
) -> BlockingUdsTransport:
    """Connect to the daemon's Unix socket with a blocking socket whose every call is bounded
    by ``timeout``; the server's uid is checked as :func:`connect_uds` does.

    Raises:
        ConnectionClosed: no daemon at ``path``, or the connection failed.
        ConnectionTimeoutError: the connect took longer than ``timeout``.
        UnauthorizedError: the server runs as an untrusted uid, or the socket is not ours to
            use (permission denied).
        ConfigError: ``path`` is not usable as a socket path.
    """
    name = check_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        set_buffers(sock, socket_buffer)
        sock.settimeout(timeout)
        try:
            sock.connect(name)
        except TimeoutError as exc:
            msg = f"cannot connect to unix:{path}: nothing for {timeout:g} s"
            raise ConnectionTimeoutError(msg) from exc
        except OSError as exc:
            raise connect_error(path, exc) from exc
        with blocking_socket_errors(f"cannot connect to unix:{path}", timeout):
            _pid, uid, _gid = peer_credentials(sock)
        check_server_uid(path, uid, trusted_uids)
    except BaseException:
        sock.close()
        raise
    return BlockingUdsTransport(sock, path, timeout=timeout, receive_size=receive_size)
