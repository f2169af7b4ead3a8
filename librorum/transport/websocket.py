"""LBRU over WebSocket: the remote transport, one LBRU frame per binary message.

Server side: trio-websocket's public :func:`trio_websocket.wrap_server_stream` on our own TCP
(or TLS) listeners rather than its ``serve_websocket``, because the connection caps must apply
*before* the HTTP upgrade is read (a peer that connects and sends nothing costs a slot) and
authentication must happen before ``accept()``. The bearer token is compared with
:func:`hmac.compare_digest`; tokens in the URL query are never looked at (they end up in logs
and browser history).

Client side: a small pull-based client on wsproto (:class:`_ClientWebSocket`) with the same
``get_message``/``send_message``/``aclose`` contract as
:class:`trio_websocket.WebSocketConnection`. trio-websocket's client needs a background reader
task in a caller's nursery, and reports a refused handshake by crashing that nursery; a
pull-based client needs no task, so :func:`connect_websocket` is a plain ``await`` that raises
:class:`~librorum.errors.UnauthorizedError` on a 401.

Throughput (the receive buffer, copies and masking): trio-websocket reads 4 KiB at a time by
default, which halves throughput; both sides read :data:`~librorum.limits.WS_RECEIVE_BUFFER`
(1 MiB) instead, through trio-websocket's supported ``receive_buffer_size`` argument on the
server and our own read size on the client. wsproto copies every payload four to five times
on the way in and out, so once a connection is established (on both sides) its frame
payloads go through :mod:`librorum.transport._wsframes` instead: taken out of the receive
buffer without a copy, unmasked in place, and built into one buffer on send. The client goes
further: each read stops at the end of the frame it is in, and a message's payload is read
into one buffer of its final size, which is the message (no reassembly). RFC 6455 requires
clients to mask every frame (and servers to refuse unmasked ones), so masking cannot be
skipped; it stays the largest per-byte cost of uploads on both ends (four strided
``translate`` passes, 0.6-0.9 GB/s: a pure-Python ceiling).
"""

from __future__ import annotations

import contextlib
import hmac
import ssl
import struct
import urllib.parse
from collections.abc import Collection, Iterator, Sequence
from functools import partial
from typing import Final, NoReturn, Protocol, cast

import attrs
import trio
import trio_websocket
import wsproto
import wsproto.utilities
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason as WsCloseCode, Opcode

from librorum.config import ConfigError
from librorum.errors import (
    ConnectionClosed,
    ConnectionLimitError,
    ConnectionTimeoutError,
    ErrorCode,
    FrameTooLargeError,
    LocalProtocolError,
    RemoteProtocolError,
    UnauthorizedError,
)
from librorum.limits import (
    CLOSE_GRACE,
    FD_RESERVE,
    HANDSHAKE_TIMEOUT,
    LISTEN_BACKLOG,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_IP,
    MAX_UNAUTHENTICATED,
    RECEIVE_SIZE,
    WS_MAX_MESSAGE_SIZE,
    WS_MAX_REJECT_BODY,
    WS_MESSAGE_QUEUE,
    WS_PING_INTERVAL,
    WS_PONG_TIMEOUT,
    WS_RECEIVE_BUFFER,
)
from librorum.protocol.constants import HEADER_SIZE
from librorum.transport._wsframes import accelerate, encode_frame
from librorum.transport.base import (
    PEER_ERRORS,
    FrameParts,
    Handler,
    PeerInfo,
    connection_guard,
    fd_headroom,
    logger,
    refusal_frame,
    run_handler,
)

#: Close codes after which the peer is gone cleanly: receive_some returns b"".
_CLEAN_CLOSE: Final = frozenset({int(WsCloseCode.NORMAL_CLOSURE), int(WsCloseCode.GOING_AWAY)})
_MESSAGE_TOO_BIG: Final = int(WsCloseCode.MESSAGE_TOO_BIG)
#: Offset and struct of the payload_size field in an LBRU header.
_PAYLOAD_SIZE: Final = struct.Struct("!I")
_PAYLOAD_SIZE_OFFSET: Final = 8
#: What a WebSocket peer can make the connection plumbing raise, beyond the generic ones.
_PEER_ERRORS: Final = (
    *PEER_ERRORS,
    trio_websocket.ConnectionClosed,
    trio_websocket.HandshakeError,
    wsproto.utilities.RemoteProtocolError,
)


class _MessageSocket(Protocol):
    """The part of :class:`trio_websocket.WebSocketConnection` the transport uses; also
    implemented by :class:`_ClientWebSocket`. Both raise
    :class:`trio_websocket.ConnectionClosed` once the connection is closed or closing."""

    async def get_message(self) -> str | bytes | bytearray: ...

    async def send_message(self, message: bytes) -> None: ...

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


class WsTransport:
    """A :class:`~librorum.transport.base.FrameTransport` over a WebSocket connection: each
    frame travels as one binary message, and each message received must be one whole frame.

    Args:
        ws: an open :class:`trio_websocket.WebSocketConnection` (server side) or the client's
            equivalent; the transport owns it from now on.
        peer: who is at the other end.
        close_grace: longest wait for the close handshake in :meth:`aclose`.
    """

    kind: Final = "websocket"
    message_framed: Final = True

    def __init__(
        self, ws: _MessageSocket, peer: PeerInfo, *, close_grace: float = CLOSE_GRACE
    ) -> None:
        self.peer: Final = peer
        self._ws = ws
        self._close_grace = close_grace
        self._send_lock = trio.StrictFIFOLock()
        # Why we closed the connection, once we did: the error later operations report.
        self._closed: str | None = None
        self._broken: str | None = None

    async def send_frames(self, frames: Sequence[FrameParts]) -> None:
        """Send each frame as one binary message (its parts joined), in order.

        Cancellation: messages fully sent stay sent; a cancel during a message may leave half
        a WebSocket frame on the wire, so the transport is then broken (further sends raise
        ConnectionClosed) and must be closed.

        Raises:
            ConnectionClosed: the connection is closed or broken.
        """
        async with self._send_lock:
            if self._broken is not None:
                msg = f"cannot send: {self._broken}"
                raise ConnectionClosed(msg)
            in_flight = False
            try:
                with self._errors("send"):
                    for parts in frames:
                        # Joined one at a time: a batch never holds more than one extra copy.
                        message = _join(parts)
                        in_flight = True
                        await self._ws.send_message(message)
                        in_flight = False
            finally:
                if in_flight:
                    self._broken = "an earlier send was interrupted in the middle of a message"

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> bytes | bytearray:
        """Return the next message: one whole LBRU frame (``max_bytes`` does not apply; a
        message is at most the max_message_size the connection was opened with). ``b""``
        means the peer closed cleanly (close code 1000 or 1001).

        Cancellation: nothing is lost.

        Raises:
            RemoteProtocolError: a text message, or a message that is not exactly one frame.
            FrameTooLargeError: a message over the size limit (the connection is closed, 1009).
            ConnectionClosed: the connection broke, was closed by us, or was closed by the
                peer with an error code.
        """
        with self._errors("receive"):
            try:
                message = await self._ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                if (
                    self._closed is None
                    and exc.reason is not None
                    and exc.reason.code in _CLEAN_CLOSE
                ):
                    return b""
                raise
        if isinstance(message, str):
            msg = "text messages are not LBRU: each message must be one binary frame"
            raise RemoteProtocolError(msg)
        _check_one_frame(message)
        return message

    async def send_fd_frame(self, parts: FrameParts, fd: int) -> None:
        """Not supported: descriptors cannot cross a network.

        Raises:
            LocalProtocolError: always.
        """
        msg = "file descriptors cannot travel over WebSocket"
        raise LocalProtocolError(msg)

    async def receive_with_fds(self, max_bytes: int, max_fds: int = 1) -> tuple[bytes, list[int]]:
        """Not supported: descriptors cannot cross a network.

        Raises:
            LocalProtocolError: always.
        """
        msg = "file descriptors cannot travel over WebSocket"
        raise LocalProtocolError(msg)

    async def aclose(self) -> None:
        """Close with code 1000, waiting at most ``close_grace`` for the peer's close frame;
        idempotent.

        Cancellation: the TCP connection is closed without the close handshake.
        """
        await self._close("the connection was closed")

    async def _close(self, why: str, code: int = 1000) -> None:
        if self._closed is not None:
            await trio.lowlevel.checkpoint()
            return
        self._closed = why
        with trio.move_on_after(self._close_grace):
            # Both implementations close the TCP connection even when this is cancelled.
            await self._ws.aclose(code, None if code == 1000 else why)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """The module's translation boundary for I/O: trio-websocket and trio errors to ours."""
        try:
            yield
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            if self._closed is not None:
                msg = f"cannot {action}: {self._closed}"
            elif reason is not None and reason.code == _MESSAGE_TOO_BIG:
                msg = f"peer sent a message over the size limit ({reason.reason})"
                raise FrameTooLargeError(msg) from exc
            elif reason is None:
                msg = f"cannot {action}: the connection is closed"
            else:
                detail = f": {reason.reason}" if reason.reason else ""
                msg = f"cannot {action}: connection closed ({reason.code} {reason.name}{detail})"
            raise ConnectionClosed(msg) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            msg = f"cannot {action}: connection lost ({exc or type(exc).__name__})"
            raise ConnectionClosed(msg) from exc


def _as_bytes(data: bytes | bytearray) -> bytes:
    # wsproto's stubs say bytes, but it only appends the data to a bytearray, so a bytearray
    # (what trio's SSLStream returns) works as is; copying 1 MiB reads to please a stub would
    # cost real time.
    return cast("bytes", data)


def _join(parts: FrameParts) -> bytes:
    # trio-websocket accepts bytes only (not bytearray or memoryview).
    if len(parts) == 1 and type(parts[0]) is bytes:
        return parts[0]
    return b"".join(parts)


def _check_one_frame(message: bytes | bytearray) -> None:
    size = len(message)
    if size >= HEADER_SIZE:
        (declared,) = _PAYLOAD_SIZE.unpack_from(message, _PAYLOAD_SIZE_OFFSET)
        if HEADER_SIZE + declared == size:
            return
        msg = (
            f"a WebSocket message must carry exactly one LBRU frame: got {size} bytes, the "
            f"header declares {HEADER_SIZE + declared}"
        )
    else:
        msg = f"a WebSocket message of {size} bytes cannot hold an LBRU frame"
    raise RemoteProtocolError(msg)


# --- The client's WebSocket -------------------------------------------------------------------


class _Rejected(Exception):  # noqa: N818 - internal signal, never escapes the module
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class _ClientWebSocket:
    """A WebSocket client connection driven by its reader: wsproto does the parsing, the
    caller's :meth:`get_message` does the reading, and pings are answered as they are read.
    (So a client that stops reading stops answering pings, and the server's keepalive will
    close the connection: a client must keep a task receiving.)
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: wsproto.WSConnection,
        *,
        max_message_size: int,
        receive_size: int,
        close_grace: float,
    ) -> None:
        self._stream = stream
        self._ws = ws
        # Whole messages in one buffer, each read stopping at the end of the frame it is in
        # (see FastFrameDecoder); None on an unchecked wsproto version (plain wsproto then).
        self._decoder = accelerate(ws, whole_frames_up_to=max_message_size)
        self._max_message_size = max_message_size
        self._receive_size = receive_size
        self._close_grace = close_grace
        self._send_lock = trio.StrictFIFOLock()
        self._parts: list[bytes | bytearray] = []
        self._message_size = 0
        self._close_reason: trio_websocket.CloseReason | None = None
        self._receiving = False
        self._stream_closed = False

    async def get_message(self) -> bytes | bytearray | str:
        """The next message (a text message is returned as its first fragment's text: the
        caller refuses it anyway).

        Raises:
            trio_websocket.ConnectionClosed: the connection is closed or closing.
        """
        if self._receiving:
            msg = "another task is already receiving on this connection"
            raise trio.BusyResourceError(msg)
        self._receiving = True
        try:
            while True:
                for event in self._ws.events():
                    message = await self._handle(event)
                    if message is not None:
                        return message
                if self._close_reason is not None:
                    raise trio_websocket.ConnectionClosed(self._close_reason)
                await self._receive()
        finally:
            self._receiving = False

    async def _receive(self) -> None:
        size = self._receive_size
        if self._decoder is not None:
            size = min(size, self._decoder.missing() or size)
        try:
            data = await self._stream.receive_some(size)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._close_reason = trio_websocket.CloseReason(
                int(WsCloseCode.ABNORMAL_CLOSURE), f"connection lost: {exc}"
            )
            raise trio_websocket.ConnectionClosed(self._close_reason) from exc
        if not data:
            self._close_reason = trio_websocket.CloseReason(
                int(WsCloseCode.ABNORMAL_CLOSURE), "connection closed without a close frame"
            )
            raise trio_websocket.ConnectionClosed(self._close_reason)
        self._ws.receive_data(_as_bytes(data))

    async def _handle(self, event: Event) -> bytes | bytearray | str | None:
        if isinstance(event, BytesMessage):
            return await self._collect(event)
        if isinstance(event, TextMessage):
            return event.data
        if isinstance(event, Ping):
            await self._send_event(event.response())
        elif isinstance(event, CloseConnection):
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                with contextlib.suppress(trio_websocket.ConnectionClosed):
                    await self._send_event(event.response())
            self._close_reason = trio_websocket.CloseReason(event.code, event.reason or None)
            raise trio_websocket.ConnectionClosed(self._close_reason)
        # Pongs need no action: nothing here sends pings.
        return None

    async def _collect(self, event: BytesMessage) -> bytes | bytearray | None:
        data = event.data
        self._message_size += len(data)
        if self._message_size > self._max_message_size:
            reason = f"message over {self._max_message_size} bytes"
            self._close_reason = trio_websocket.CloseReason(_MESSAGE_TOO_BIG, reason)
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                await self._send_event(CloseConnection(code=_MESSAGE_TOO_BIG, reason=reason))
            raise trio_websocket.ConnectionClosed(self._close_reason)
        if not event.message_finished:
            self._parts.append(data)
            return None
        if self._parts:
            self._parts.append(data)
            data = b"".join(self._parts)
            self._parts = []
        self._message_size = 0
        return data

    async def send_message(self, message: bytes) -> None:
        """Send one binary message as one masked frame.

        Raises:
            trio_websocket.ConnectionClosed: the connection is closed or closing.
        """
        frame = encode_frame(Opcode.BINARY, message, masked=True)
        async with self._send_lock:
            if self._close_reason is not None or self._ws.state is not ConnectionState.OPEN:
                raise trio_websocket.ConnectionClosed(self._close_reason)
            await self._send_bytes(frame)

    async def _send_event(self, event: Event) -> None:
        async with self._send_lock:
            await self._send_bytes(self._ws.send(event))

    async def _send_bytes(self, data: bytes | bytearray) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self._close_reason is None:
                self._close_reason = trio_websocket.CloseReason(
                    int(WsCloseCode.ABNORMAL_CLOSURE), f"connection lost: {exc}"
                )
            raise trio_websocket.ConnectionClosed(self._close_reason) from exc

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Send a close frame, wait (at most close_grace) for the server's, close the TCP
        connection; idempotent. Cancellation still closes the TCP connection."""
        if self._stream_closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            with trio.move_on_after(self._close_grace):
                if self._ws.state is ConnectionState.OPEN:
                    await self._send_event(CloseConnection(code=code, reason=reason))
                if self._close_reason is None:
                    self._close_reason = trio_websocket.CloseReason(code, reason)
                if not self._receiving:
                    await self._await_close_frame()
        except (trio_websocket.ConnectionClosed, wsproto.utilities.LocalProtocolError):
            pass
        finally:
            self._stream_closed = True
            await trio.aclose_forcefully(self._stream)

    async def _await_close_frame(self) -> None:
        # The RFC wants the client to wait for the server to close; messages still in flight
        # are discarded. Bounded by the caller's close_grace.
        while self._ws.state is not ConnectionState.CLOSED:
            for event in self._ws.events():
                if isinstance(event, CloseConnection):
                    return
            try:
                data = await self._stream.receive_some(self._receive_size)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self._ws.receive_data(_as_bytes(data))


# --- The listener ------------------------------------------------------------------------------


@attrs.define
class _Gate:
    """Connection accounting. The pre-handshake caps apply at TCP accept, before a byte is
    read; the total cap applies once the peer is authenticated, when it can be told why."""

    max_connections: int
    max_per_ip: int
    max_unauthenticated: int
    fd_reserve: int
    handshaking: int = 0
    established: int = 0
    # Every connection of an address, handshaking or established.
    per_ip: dict[str, int] = attrs.Factory(dict)

    def enter(self, ip: str, fd: int) -> str | None:
        """Count a new TCP connection in, or say why it is dropped. No await: atomic."""
        if self.handshaking >= self.max_unauthenticated:
            return f"{self.handshaking} connections are already in their handshake"
        if self.per_ip.get(ip, 0) >= self.max_per_ip:
            return f"{ip} already has {self.max_per_ip} connections"
        if not fd_headroom(fd, self.fd_reserve):
            return "the descriptor reserve is reached"
        self.handshaking += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return None

    def establish(self) -> bool:
        if self.established >= self.max_connections:
            return False
        self.established += 1
        return True

    def leave(self, ip: str) -> None:
        left = self.per_ip[ip] - 1
        if left:
            self.per_ip[ip] = left
        else:
            del self.per_ip[ip]


@attrs.frozen
class _Settings:
    handler: Handler
    token: bytes | None
    allowed_origins: frozenset[str]
    handshake_timeout: float
    close_grace: float
    ping_interval: float | None
    pong_timeout: float
    message_queue_size: int
    max_message_size: int
    receive_buffer_size: int


async def serve_websocket(
    handler: Handler,
    host: str,
    port: int,
    *,
    token: str | None,
    ssl_context: ssl.SSLContext | None = None,
    max_connections: int = MAX_CONNECTIONS,
    max_per_ip: int = MAX_CONNECTIONS_PER_IP,
    max_unauthenticated: int = MAX_UNAUTHENTICATED,
    allowed_origins: Collection[str] = (),
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    close_grace: float = CLOSE_GRACE,
    ping_interval: float | None = WS_PING_INTERVAL,
    pong_timeout: float = WS_PONG_TIMEOUT,
    message_queue_size: int = WS_MESSAGE_QUEUE,
    max_message_size: int = WS_MAX_MESSAGE_SIZE,
    receive_buffer_size: int = WS_RECEIVE_BUFFER,
    fd_reserve: int = FD_RESERVE,
    backlog: int = LISTEN_BACKLOG,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Listen for WebSocket clients on ``host``:``port`` and run ``handler`` for each
    authenticated connection.

    Start it with ``await nursery.start(serve_websocket, handler, host, port, token=...)``; the
    start returns the actual ``(host, port)`` (``port=0`` picks a free port; when ``host``
    resolves to several addresses, only the first is served then, so there is one port).

    Admission, in order:

    1. at TCP accept: connections still in their handshake are capped at
       ``max_unauthenticated``, and an address's connections (any stage) at ``max_per_ip``;
       over either, the connection is closed at once, unanswered: nothing was read yet, and a
       flood must cost us nothing more;
    2. the TLS handshake (with ``ssl_context``) and the HTTP upgrade request must complete
       within ``handshake_timeout``;
    3. with a ``token``, the request must carry ``Authorization: Bearer <token>`` (compared
       with :func:`hmac.compare_digest`); otherwise it is rejected with HTTP 401 before any
       WebSocket exists. A token in the URL is ignored. A request with an ``Origin`` header
       (a browser) is rejected with 403 unless the origin is in ``allowed_origins``: a web
       page must not reach a local daemon through the visitor's browser;
    4. past ``max_connections`` established connections, the connection is accepted, sent an
       LBRU ERROR frame (CONNECTION_LIMIT) and closed, so the client learns why.

    While the handler runs, the server pings every ``ping_interval`` seconds and closes the
    connection when a pong takes longer than ``pong_timeout``. When the handler returns (or
    fails: see :func:`~librorum.transport.base.run_handler`) the connection is closed, with at
    most ``close_grace`` for the close handshake.

    Args:
        handler: called with each authenticated connection's :class:`WsTransport`.
        host, port: where to listen.
        token: the bearer token clients must present; ``None`` disables authentication
            (loopback only; the configuration enforces it).
        ssl_context: serve ``wss://`` with this server context.
        message_queue_size, max_message_size, receive_buffer_size: trio-websocket settings:
            messages buffered ahead of the reader, the largest message (one maximal frame),
            bytes per read.
        fd_reserve, backlog, handler_nursery, task_status: as for
            :func:`~librorum.transport.uds.serve_uds`.

    Cancellation: stops accepting and closes the listeners; connections in our own nursery
    are cancelled (each gets ``close_grace`` to close), those in ``handler_nursery`` are not.

    Raises:
        ConfigError: the address cannot be bound (in use, not local, no permission, unknown
            host name); the OS error is the ``__cause__``.
        ValueError: ``token`` is an empty string.
    """
    if token is not None and not token:
        msg = "token must be None (no authentication) or a non-empty string"
        raise ValueError(msg)
    settings = _Settings(
        handler=handler,
        token=None if token is None else token.encode(),
        allowed_origins=frozenset(allowed_origins),
        handshake_timeout=handshake_timeout,
        close_grace=close_grace,
        ping_interval=ping_interval,
        pong_timeout=pong_timeout,
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
        receive_buffer_size=receive_buffer_size,
    )
    gate = _Gate(max_connections, max_per_ip, max_unauthenticated, fd_reserve)
    try:
        tcp_listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    except OSError as exc:
        msg = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    if port == 0 and len(tcp_listeners) > 1:
        # Each address would get its own random port; serve one so that there is one answer.
        for extra in tcp_listeners[1:]:
            await extra.aclose()
        tcp_listeners = tcp_listeners[:1]
    bound_host, bound_port = tcp_listeners[0].socket.getsockname()[:2]
    listeners: list[trio.abc.Listener[trio.abc.Stream]]
    if ssl_context is None:
        listeners = list(tcp_listeners)
    else:
        listeners = [
            trio.SSLListener(listener, ssl_context, https_compatible=True)
            for listener in tcp_listeners
        ]
    serve_one = partial(_serve_connection, settings=settings, gate=gate)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(trio.serve_listeners, serve_one, listeners, handler_nursery=handler_nursery)
        )
        scheme = "ws" if ssl_context is None else "wss"
        logger.info("listening on %s://%s:%d", scheme, bound_host, bound_port)
        task_status.started((bound_host, bound_port))
        await trio.sleep_forever()


async def _serve_connection(
    stream: trio.abc.Stream,
    *,
    settings: _Settings,
    gate: _Gate,
) -> None:
    try:
        ip, port = _socket_of(stream).getpeername()[:2]
    except OSError:
        await trio.aclose_forcefully(stream)
        return
    address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    refusal = gate.enter(ip, _socket_of(stream).fileno())
    if refusal is not None:
        logger.warning("dropping connection from %s: %s", address, refusal)
        await trio.aclose_forcefully(stream)
        return
    handshaking = True
    try:
        with connection_guard(address, _PEER_ERRORS):
            # This nursery hosts trio-websocket's reader task for the connection.
            async with trio.open_nursery() as nursery:
                try:
                    ws = await _handshake(nursery, stream, settings, address)
                finally:
                    gate.handshaking -= 1
                    handshaking = False
                if ws is not None:
                    await _run_established(ws, settings, gate, address)
                nursery.cancel_scope.cancel()
    finally:
        if handshaking:
            gate.handshaking -= 1
        gate.leave(ip)
        await trio.aclose_forcefully(stream)


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType:
    """The TCP socket under a plain or TLS stream (our listeners make nothing else)."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        msg = f"expected a socket stream, got {type(stream).__name__}"
        raise TypeError(msg)
    return stream.socket


async def _handshake(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    settings: _Settings,
    address: str,
) -> trio_websocket.WebSocketConnection | None:
    """Read the upgrade request, authenticate it, accept or reject it. None: rejected or timed
    out (already logged)."""
    with trio.move_on_after(settings.handshake_timeout):
        request = await trio_websocket.wrap_server_stream(
            nursery,
            stream,
            message_queue_size=settings.message_queue_size,
            max_message_size=settings.max_message_size,
            receive_buffer_size=settings.receive_buffer_size,
        )
        refusal = _authorize(request.headers, settings)
        if refusal is None:
            ws = await request.accept()
            _accelerate_server(ws)
            return ws
        status, reason = refusal
        logger.warning("rejecting WebSocket handshake from %s: %s", address, reason)
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="librorum"'))
        await request.reject(status, extra_headers=headers, body=reason.encode() + b"\n")
        return None
    logger.info("WebSocket handshake from %s timed out", address)
    return None


def _accelerate_server(ws: trio_websocket.WebSocketConnection) -> None:
    """Switch the connection's wsproto to the faster payload paths of
    :mod:`librorum.transport._wsframes`. trio-websocket has no public accessor for its wsproto
    connection, so this is the one place that reaches for it; without it (another
    trio-websocket version), the connection stays on plain wsproto: correct, only slower."""
    connection = getattr(ws, "_wsproto", None)
    if isinstance(connection, wsproto.WSConnection):
        accelerate(connection)


def _authorize(
    headers: Sequence[tuple[bytes, bytes]], settings: _Settings
) -> tuple[int, str] | None:
    """(HTTP status, reason) to reject the upgrade request with, or None to accept it."""
    if settings.token is not None:
        values = [value for name, value in headers if name == b"authorization"]
        if len(values) != 1:
            return 401, "a bearer token is required (Authorization: Bearer TOKEN)"
        scheme, _, credentials = values[0].strip().partition(b" ")
        # compare_digest: the time taken must not tell an attacker how much of a guess matched.
        if scheme.lower() != b"bearer" or not hmac.compare_digest(
            credentials.strip(), settings.token
        ):
            return 401, "invalid token"
    origins = [value for name, value in headers if name == b"origin"]
    if origins and not all(
        origin.decode("latin-1") in settings.allowed_origins for origin in origins
    ):
        return 403, "cross-origin (browser) connections are not allowed"
    return None


async def _run_established(
    ws: trio_websocket.WebSocketConnection, settings: _Settings, gate: _Gate, address: str
) -> None:
    peer = PeerInfo("websocket", address=address, authenticated=settings.token is not None)
    transport = WsTransport(ws, peer, close_grace=settings.close_grace)
    if not gate.establish():
        logger.warning("refusing WebSocket connection from %s: connection limit", address)
        with contextlib.suppress(ConnectionClosed):
            frame = refusal_frame(ErrorCode.CONNECTION_LIMIT, "too many connections; try later")
            with trio.move_on_after(settings.close_grace):
                await transport.send_frames([(frame,)])
        await transport.aclose()
        return
    try:
        async with trio.open_nursery() as nursery:
            if settings.ping_interval is not None:
                nursery.start_soon(
                    _keepalive, ws, transport, settings.ping_interval, settings.pong_timeout
                )
            await run_handler(settings.handler, transport)
            nursery.cancel_scope.cancel()
    finally:
        gate.established -= 1
        # Shielded but bounded by close_grace (inside _close): even on shutdown the peer gets
        # a proper close frame when it answers promptly.
        with trio.CancelScope(shield=True):
            await transport.aclose()


async def _keepalive(
    ws: trio_websocket.WebSocketConnection,
    transport: WsTransport,
    interval: float,
    pong_timeout: float,
) -> None:
    """Ping every ``interval``; close the connection when a pong is ``pong_timeout`` late."""
    while True:
        await trio.sleep(interval)
        with trio.move_on_after(pong_timeout) as scope:
            try:
                await ws.ping()
            except trio_websocket.ConnectionClosed:
                return
        if scope.cancelled_caught:
            why = f"the peer did not answer a ping within {pong_timeout:g} s"
            logger.info("closing WebSocket %s: %s", transport.peer.address, why)
            await transport._close(why, code=int(WsCloseCode.INTERNAL_ERROR))
            return


# --- The client --------------------------------------------------------------------------------


async def connect_websocket(
    url: str,
    *,
    token: str | None,
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    close_grace: float = CLOSE_GRACE,
    max_message_size: int = WS_MAX_MESSAGE_SIZE,
    receive_size: int = WS_RECEIVE_BUFFER,
) -> WsTransport:
    """Connect to a daemon at ``url`` (``ws://host:port[/path]`` or ``wss://...``).

    The token travels in an ``Authorization: Bearer`` header, never in the URL. ``wss://``
    without ``ssl_context`` verifies the server against the system's CA store.

    No background task is started: the returned transport reads from the network only inside
    :meth:`WsTransport.receive_some`, which also answers the server's pings. Keep a task
    receiving, or the server's keepalive closes the connection.

    Cancellation: nothing is left open.

    Raises:
        UnauthorizedError: the server refused the token (401) or the origin (403).
        ConnectionLimitError: the server refused for load (503).
        ConnectionTimeoutError: the handshake took longer than ``handshake_timeout``.
        ConnectionClosed: the server cannot be reached, refused otherwise, or is not a
            WebSocket server; the underlying error is the ``__cause__``.
        ConfigError: ``url`` is not a ws:// or wss:// URL.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        msg = f"not a WebSocket URL: {url!r} (expected ws://HOST:PORT or wss://HOST:PORT)"
        raise ConfigError(msg)
    secure = parts.scheme == "wss"
    if not secure and ssl_context is not None:
        msg = f"an SSL context was given for the unencrypted URL {url!r}; use wss://"
        raise ConfigError(msg)
    if secure and ssl_context is None:
        ssl_context = ssl.create_default_context()
    host = parts.hostname
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError as exc:
        msg = f"invalid port in {url!r}"
        raise ConfigError(msg) from exc
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = f"[{host}]" if ":" in host else host
    if port != (443 if secure else 80):
        host_header = f"{host_header}:{port}"
    headers = [] if token is None else [(b"authorization", b"Bearer " + token.encode())]
    with _connect_errors(url, handshake_timeout):
        with trio.fail_after(handshake_timeout):
            stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
            if ssl_context is None:
                stream = await trio.open_tcp_stream(host, port)
            else:
                stream = await trio.open_ssl_over_tcp_stream(
                    host, port, ssl_context=ssl_context, https_compatible=True
                )
            try:
                ws = await _client_handshake(stream, host_header, target, headers, receive_size)
                peer_ip, peer_port = _socket_of(stream).getpeername()[:2]
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
    address = f"[{peer_ip}]:{peer_port}" if ":" in peer_ip else f"{peer_ip}:{peer_port}"
    verified = ssl_context is not None and ssl_context.verify_mode == ssl.CERT_REQUIRED
    connection = _ClientWebSocket(
        stream,
        ws,
        max_message_size=max_message_size,
        receive_size=receive_size,
        close_grace=close_grace,
    )
    peer = PeerInfo("websocket", address=address, authenticated=verified)
    return WsTransport(connection, peer, close_grace=close_grace)


async def _client_handshake(
    stream: trio.abc.Stream,
    host_header: str,
    target: str,
    headers: list[tuple[bytes, bytes]],
    receive_size: int,
) -> wsproto.WSConnection:
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=host_header, target=target, extra_headers=headers)))
    status = 0
    body = bytearray()
    while True:
        data = await stream.receive_some(receive_size)
        if not data:
            # Checked before wsproto sees the EOF: h11 would call it a "Bad HTTP message",
            # when the server simply hung up (a connection cap, a dropped handshake).
            if status:
                raise _Rejected(status, bytes(body))
            msg = "the server closed the connection during the WebSocket handshake"
            raise ConnectionClosed(msg)
        ws.receive_data(_as_bytes(data))
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                # Frames that came with the 101 response stay queued in wsproto.
                return ws
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise _Rejected(status, b"")
            elif isinstance(event, RejectData):
                body += event.data[: WS_MAX_REJECT_BODY - len(body)]
                if event.body_finished or len(body) >= WS_MAX_REJECT_BODY:
                    raise _Rejected(status, bytes(body))


@contextlib.contextmanager
def _connect_errors(url: str, timeout: float) -> Iterator[None]:
    """The translation boundary for connection setup."""
    try:
        yield
    except _Rejected as exc:
        reason = exc.body.decode("utf-8", "replace").strip() or "no reason given"
        msg = f"{url} refused the connection (HTTP {exc.status}): {reason}"
        if exc.status in (401, 403):
            raise UnauthorizedError(msg) from exc
        if exc.status == 503:
            raise ConnectionLimitError(msg) from exc
        raise ConnectionClosed(msg) from exc
    except trio.TooSlowError as exc:
        msg = f"the WebSocket handshake with {url} took longer than {timeout:g} s"
        raise ConnectionTimeoutError(msg) from exc
    except wsproto.utilities.RemoteProtocolError as exc:
        msg = f"{url} is not a WebSocket server: {exc}"
        raise ConnectionClosed(msg) from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        msg = f"cannot connect to {url}: {cause or type(exc).__name__}"
        raise ConnectionClosed(msg) from exc
