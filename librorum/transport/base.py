"""What both transports share: the :class:`FrameTransport` interface, :class:`PeerInfo`, and
the listeners' common machinery (refusal frames, the per-connection handler guard, the
descriptor reserve)."""

from __future__ import annotations

import contextlib
import errno
import hmac
import logging
import os
import resource
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Final, Protocol, TypeAlias, cast

import attrs
import trio

from librorum.errors import (
    ConnectionClosed,
    ConnectionTimeoutError,
    ErrorCode,
    LibrorumError,
    TransportError,
)
from librorum.limits import RECEIVE_SIZE
from librorum.protocol.constants import Command, Flags
from librorum.protocol.converter import encode_message
from librorum.protocol.framing import FileRegion, encode_frame
from librorum.protocol.messages import ErrorMessage

logger: Final = logging.getLogger("librorum.transport")

#: One part of an encoded frame (a header, a payload).
Buffer: TypeAlias = bytes | bytearray | memoryview
#: One encoded frame as its parts, e.g. ``encode_frame_parts(...)`` or ``(encode_frame(...),)``.
FrameParts: TypeAlias = Sequence[Buffer]
#: One encoded frame whose payload may be a region of a file, which a Unix socket transport
#: sends with ``os.sendfile`` (``UdsTransport.send_frames`` accepts these).
FileFrameParts: TypeAlias = Sequence[Buffer | FileRegion]


class AlreadyRunningError(LibrorumError):
    """Another daemon already serves this socket or uses this data directory."""


@attrs.frozen
class PeerInfo:
    """Who is at the other end of a connection.

    Attributes:
        kind: ``"uds"`` or ``"websocket"``.
        uid, gid, pid: the peer process's credentials, from SO_PEERCRED (Unix sockets only;
            the kernel's word, not the peer's). ``None`` on WebSocket.
        address: ``"ip:port"`` of a WebSocket peer (``"[ip]:port"`` for IPv6); ``None`` on
            Unix sockets.
        authenticated: on the server, whether the peer proved who it is (its uid is on the
            allow-list; it presented the token). On a client, whether the *server* is
            verified: its uid is ours or root (Unix socket), or TLS verified it (``wss://``).
    """

    kind: str
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    address: str | None = None
    authenticated: bool = False

    @property
    def key(self) -> int | str | None:
        """What the per-peer connection caps count by: the uid on a Unix socket, the IP
        address (without the port) on WebSocket."""
        if self.address is None:
            return self.uid
        host = self.address.rpartition(":")[0]
        return host[1:-1] if host.startswith("[") else host

    def __str__(self) -> str:
        """For log lines: ``websocket:127.0.0.1:5000`` or ``uds:uid=1000,pid=42``."""
        if self.address is not None:
            return f"{self.kind}:{self.address}"
        return f"{self.kind}:uid={self.uid},pid={self.pid}"


class FrameTransport(Protocol):
    """One connection carrying LBRU frames; the server and the clients use it alike.

    Each method's docstring states what cancelling it does. One task may send while another
    receives; two concurrent senders are serialized (a call's frames stay contiguous); two
    concurrent receivers are a bug (``trio.BusyResourceError``).
    """

    @property
    def kind(self) -> str:
        """``"uds"`` or ``"websocket"``."""
        ...

    @property
    def peer(self) -> PeerInfo:
        """Who is at the other end."""
        ...

    @property
    def message_framed(self) -> bool:
        """True when each :meth:`receive_some` result is exactly one whole frame (WebSocket:
        one message, one frame); False for a byte stream cut anywhere (Unix socket)."""
        ...

    @property
    def carries_files(self) -> bool:
        """True when this transport carries files (spec 8): it receives descriptors with
        :meth:`receive_with_fds`, sends them with :meth:`send_fd_frame`, and is a
        :class:`FileTransport` whose :meth:`send_frames` takes
        :class:`~librorum.protocol.framing.FileRegion` payloads. A capability, so that the
        server asks what a transport can do rather than which class it is."""
        ...

    @property
    def sends_file_regions(self) -> bool:
        """True when this transport is a :class:`FileTransport`: its :meth:`send_frames`
        takes :class:`~librorum.protocol.framing.FileRegion` payloads and moves their bytes
        from the file itself (``os.sendfile`` where it can). True wherever ``carries_files``
        is, and also on a transport that sends file content but passes no descriptors
        (WebSocket)."""
        ...

    async def send_frames(self, frames: Sequence[FrameParts]) -> None:
        """Send whole frames, in order. Each item is the parts of one encoded frame.

        Cancellation: a cancelled send may have written part of a frame; the transport then
        refuses further sends (ConnectionClosed) and the caller must close it. Frames that
        were completely written stay written.

        Raises:
            ConnectionClosed: the peer is gone, the transport is closed, or an earlier send
                was cancelled mid-frame.
        """
        ...

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> Buffer:
        """Receive what is available: up to ``max_bytes`` of the byte stream (Unix socket) or
        the next message, whatever ``max_bytes`` (WebSocket). ``b""`` means the peer closed
        cleanly.

        Cancellation: nothing is lost; the bytes stay for the next call.

        Raises:
            ConnectionClosed: the connection broke or was closed locally.
            RemoteProtocolError: (WebSocket) the peer's input cannot be frames: a text or
                empty message, a message that is not exactly one frame, or a breach of RFC
                6455; FrameTooLargeError for a message over the size limit.
            ConnectionTimeoutError: (WebSocket) a message was not complete within the
                message deadline.
        """
        ...

    async def send_fd_frame(self, parts: FrameParts, fd: int) -> None:
        """Send one frame with a file descriptor attached to its first byte (Unix sockets).
        The descriptor stays open on our side; the caller closes it.

        Cancellation: as :meth:`send_frames`.

        Raises:
            LocalProtocolError: the transport cannot carry descriptors, or ``fd`` is not open.
            ConnectionClosed: as :meth:`send_frames`.
        """
        ...

    async def receive_with_fds(self, max_bytes: int, max_fds: int = 1) -> tuple[bytes, list[int]]:
        """Receive up to ``max_bytes`` and the descriptors that came with them (Unix sockets).
        The caller owns (and must close) the returned descriptors, which are close-on-exec.

        Cancellation: nothing is lost.

        Raises:
            LocalProtocolError: the transport cannot carry descriptors.
            RemoteProtocolError: the peer sent more than ``max_fds`` descriptors, or the
                kernel truncated them; every descriptor received is closed first.
            ConnectionClosed: as :meth:`receive_some`.
        """
        ...

    async def aclose(self, *, error: LibrorumError | None = None) -> None:
        """Close the connection; idempotent. Pending receives and sends in other tasks fail
        with ConnectionClosed.

        ``error`` is the connection error that ends the connection (spec 7.3), once its
        ERROR frame has been sent (or could not be); a transport that can say why a connection
        closes does so with it (WebSocket: the close code, e.g. 1002 or 1009), others ignore
        it. None: an ordinary close.

        Cancellation: the connection is still closed, only less gracefully (no WebSocket
        close handshake).
        """
        ...


class FileTransport(FrameTransport, Protocol):
    """A :class:`FrameTransport` whose ``sends_file_regions`` is True: frames may carry file
    regions, sent straight from the file (``os.sendfile``)."""

    async def send_frames(self, frames: Sequence[FileFrameParts]) -> None:
        """As :meth:`FrameTransport.send_frames`; a FileRegion payload is sent from its file.

        Cancellation and errors: as :meth:`FrameTransport.send_frames`.
        """
        ...


def file_transport(transport: FrameTransport) -> FileTransport | None:
    """``transport`` as a :class:`FileTransport` when it sends file regions, else None."""
    return cast("FileTransport", transport) if transport.sends_file_regions else None


#: What a listener calls for each accepted, authenticated connection.
Handler: TypeAlias = Callable[[FrameTransport], Awaitable[None]]


class Reclaim(Protocol):
    """What a listener calls when a connection cap is full (``Server.reclaim``)."""

    def __call__(self, kind: str, key: int | str | None, *, evict: bool = True) -> bool:
        """Close a connection of transport ``kind`` (and peer ``key``, ``None`` for any)
        that has stalled, to make room; with ``evict=False`` only say whether there is
        one. Returns whether there was (the newcomer may then be admitted)."""
        ...


def refusal_frame(code: ErrorCode, message: str) -> bytes:
    """The bytes of the ERROR frame (session 0, REPLY|END) a listener sends to a connection it
    refuses, before closing it: the client learns why instead of seeing a bare EOF."""
    payload = encode_message(ErrorMessage(int(code), message))
    return encode_frame(Command.ERROR, payload, session_id=0, flags=int(Flags.REPLY | Flags.END))


async def run_handler(handler: Handler, transport: FrameTransport) -> None:
    """Run one connection's handler so that its failure ends only that connection.

    A transport or protocol error is the peer's doing and is logged briefly; any other
    exception is a bug and is logged at ERROR with its traceback, never swallowed silently.
    Cancellation (and any other BaseException) propagates.
    """
    peer = transport.peer
    try:
        await handler(transport)
    except* TransportError as group:
        logger.debug("connection %s ended: %s", peer, _first(group))
    except* LibrorumError as group:
        logger.info("connection %s closed on error: %s", peer, _first(group))
    except* Exception as group:
        logger.error("handler failed on connection %s", peer, exc_info=group)


#: What a peer can make a connection's plumbing (not its handler) raise: it vanished, or sent
#: garbage. Anything else escaping a connection task is a bug.
PEER_ERRORS: Final = (
    LibrorumError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,
)


@contextlib.contextmanager
def connection_guard(
    what: str, peer_errors: tuple[type[Exception], ...] = PEER_ERRORS
) -> Iterator[None]:
    """Contain whatever escapes one connection's task, so that it never reaches the nursery
    shared by all connections (which would take the listener down). Errors a peer can cause
    are logged at DEBUG; anything else at ERROR with its traceback. Cancellation (and any
    other BaseException) propagates.

    Args:
        what: names the connection in the log.
        peer_errors: the exception types a peer can cause (a transport adds its library's).
    """
    try:
        yield
    except* peer_errors as group:
        logger.debug("connection %s ended: %s", what, _first(group))
    except* Exception as group:
        logger.error("connection %s failed", what, exc_info=group)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exceptions = group.exceptions
    while len(exceptions) == 1 and isinstance(exceptions[0], BaseExceptionGroup):
        exceptions = exceptions[0].exceptions
    return exceptions[0]


async def acquire_lock(lock: trio.Lock | trio.StrictFIFOLock) -> None:
    """Take ``lock``: at once when it is free (no scheduler pass: the caller's own I/O
    checkpoints right after), else wait for it like ``await lock.acquire()``.

    Cancellation: only while waiting; nothing is held then.
    """
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


def sendfile_once(sock_fd: int, region: FileRegion, skip: int) -> int:
    """One ``os.sendfile`` of ``region`` after its first ``skip`` bytes into the stream socket
    ``sock_fd`` (non-blocking); returns the bytes sent (at least 1).

    Raises:
        BlockingIOError: the socket is full.
        OSError: the send failed, or the file ended before the region did (EIO: the frame's
            header promised bytes that do not exist, so the stream cannot continue).
    """
    done = os.sendfile(sock_fd, region.fd, region.offset + skip, region.length - skip)
    if done == 0:
        msg = f"file region ended {region.length - skip} bytes early"
        raise OSError(errno.EIO, msg)
    return done


async def sendfile_some(sock: trio.socket.SocketType, region: FileRegion, skip: int) -> int:
    """:func:`sendfile_once`, waiting while the socket is full as trio's socket methods do
    for send: a checkpoint, then retry on EAGAIN once writable.

    Cancellation: only before anything is sent.

    Raises:
        OSError: as :func:`sendfile_once`.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    fd = sock.fileno()
    while True:
        try:
            done = sendfile_once(fd, region, skip)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        await trio.lowlevel.cancel_shielded_checkpoint()
        return done


def bearer_token_matches(headers: Sequence[tuple[bytes, bytes]], token: bytes) -> bool:
    """Whether HTTP ``headers`` (names lower-case, as h11 and wsproto give them) carry
    exactly one ``Authorization: Bearer <token>`` with ``token`` (the scheme in any case).
    Compared in constant time: the time taken must not tell how much of a guess matched."""
    values = [value for name, value in headers if name == b"authorization"]
    if len(values) != 1:
        return False
    scheme, _, credentials = values[0].strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token)


def fd_headroom(fd: int, reserve: int) -> bool:
    """Whether a freshly accepted descriptor leaves ``reserve`` descriptors free.

    Linux hands out the lowest free descriptor number, so the number of the one just accepted
    says how close the process is to RLIMIT_NOFILE without counting /proc/self/fd.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft == resource.RLIM_INFINITY or fd < soft - reserve


# --- Blocking transports (the blocking client's) -----------------------------------------------


class BlockingFrameTransport(Protocol):
    """What the blocking client drives: LBRU frames over a blocking socket, every call
    bounded by the socket's timeout. Made by
    :func:`~librorum.transport.uds_client.connect_uds_blocking` and
    :func:`~librorum.transport.ws_client.connect_ws_blocking`."""

    @property
    def carries_files(self) -> bool:
        """True when :meth:`send_fd_frame` can pass descriptors (spec 8)."""
        ...

    def send_frames(self, frames: Sequence[FrameParts]) -> None:
        """Send whole frames, in order.

        Raises:
            ConnectionTimeoutError: a send took longer than the timeout (a frame may be cut).
            ConnectionClosed: the send failed.
        """
        ...

    def send_fd_frame(self, frame: FrameParts, fd: int) -> None:
        """Send one frame with ``fd`` attached (spec 8.1); the caller keeps ``fd``.

        Raises:
            As :meth:`send_frames`; LocalProtocolError when ``carries_files`` is False.
        """
        ...

    def receive_some(self) -> Buffer:
        """What arrived next (valid until the next call), ``b""`` at EOF.

        Raises:
            ConnectionTimeoutError: nothing arrived within the timeout.
            ConnectionClosed: the receive failed.
            RemoteProtocolError: the peer broke the transport's own framing.
        """
        ...

    def set_timeout(self, timeout: float) -> None:
        """Bound each later call by ``timeout`` seconds."""
        ...

    def close(self) -> None:
        """Close the socket (idempotent)."""
        ...


@contextlib.contextmanager
def blocking_socket_errors(what: str, timeout: float) -> Iterator[None]:
    """The translation boundary for blocking socket calls.

    Raises:
        ConnectionTimeoutError: the call timed out.
        ConnectionClosed: any other failure (the OS or TLS error is the ``__cause__``).
    """
    try:
        yield
    except TimeoutError as exc:
        msg = f"{what}: nothing for {timeout:g} s"
        raise ConnectionTimeoutError(msg) from exc
    except ssl.SSLError as exc:
        msg = f"{what}: TLS failed ({exc})"
        raise ConnectionClosed(msg) from exc
    except OSError as exc:
        msg = f"{what}: {exc.strerror or exc}"
        raise ConnectionClosed(msg) from exc
