"""LBRU over WebSocket: the remote transport, one LBRU frame per binary message.

Both sides run one small WebSocket connection on wsproto, :class:`_WebSocket`, driven by its
reader: no task of its own; the task that reads also answers pings, matches pongs to the pings
sent, and handles the close. The server used to run trio-websocket's connection, whose
background reader decides on its own what this transport must decide (spec 2.2, 9.2): it
closes the TCP connection without a close frame when wsproto refuses the peer's bytes, closes
with 1009 before an LBRU ERROR could say why, buffers every message up to its size limit with
no deadline on its fragments, and reads the HTTP upgrade with no cap on a request head that
arrives in a single read. With the reader in our hands:

* a message is refused at the frame header that takes it over the size limit, before its
  payload is buffered (:class:`~librorum.transport._wsframes.FastFrameDecoder`); the limit is
  20 + 4096 bytes until the server sends its first frame (the HELLO reply), one maximal
  frame after that;
* a message whose first byte arrived more than the frame deadline ago fails the connection,
  however its fragments and control frames trickle in;
* every failure is an exception that the LBRU connection turns into an ERROR frame on session
  0, after which :meth:`WsTransport.aclose` closes with the matching close code (1002, 1007,
  1008, 1009: :func:`close_code_for`).

Server side: our own TCP (or TLS) listeners, because the connection caps must apply *before* the
HTTP upgrade is read (a peer that connects and sends nothing costs a slot), and
authentication happens before the upgrade is accepted. A connection over a cap gets a canned
HTTP 503 (its request is not even read); the request head is capped (431); the bearer token is
compared with :func:`hmac.compare_digest`, and an address that keeps presenting wrong ones
backs off (429). Tokens in the URL query are never looked at (they end up in logs and browser
history).

Client side: :func:`connect_websocket` is a plain ``await`` that raises
:class:`~librorum.errors.UnauthorizedError` on a 401 (trio-websocket's client needs a
background reader task in a caller's nursery, and reports a refused handshake by crashing it).

Throughput (the receive buffer, copies and masking): both sides read
:data:`~librorum.limits.WS_RECEIVE_BUFFER` (1 MiB) at a time; 4 KiB reads halve throughput.
wsproto copies every payload four to five times on the way in and out, so once a connection
is established its frame payloads go through :mod:`librorum.transport._wsframes` instead: taken
out of the receive buffer without a copy, unmasked in place, and built into one buffer on send.
Each read stops at the end of the frame it is in, and a message's payload is read into one
buffer of its final size, which is the message (no reassembly). RFC 6455 requires clients to
mask every frame (and servers to refuse unmasked ones), so masking cannot be skipped; it stays
the largest per-byte cost of uploads on both ends (four strided ``translate`` passes, 0.6-0.9
GB/s: a pure-Python ceiling).
"""

from __future__ import annotations

import contextlib
import hmac
import http
import logging
import math
import os
import ssl
import struct
import urllib.parse
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from functools import partial
from typing import Final, NoReturn, cast

import attrs
import trio
import wsproto
import wsproto.utilities
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
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
    LibrorumError,
    LocalProtocolError,
    RemoteProtocolError,
    UnauthorizedError,
    UnavailableError,
)
from librorum.limits import (
    AUTH_BACKOFF_MAX,
    AUTH_FAILURES_ALLOWED,
    CLOSE_GRACE,
    FD_RESERVE,
    FRAME_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    LISTEN_BACKLOG,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_IP,
    MAX_UNAUTHENTICATED,
    RECEIVE_SIZE,
    WS_BUSY_RETRY_AFTER,
    WS_MAX_REJECT_BODY,
    WS_MAX_REQUEST_HEAD,
    WS_PING_INTERVAL,
    WS_PONG_TIMEOUT,
    WS_RECEIVE_BUFFER,
    WS_REFUSAL_DRAIN,
    WS_REFUSAL_LINGER,
)
from librorum.protocol.constants import (
    HEADER_SIZE,
    WS_HANDSHAKE_MESSAGE_SIZE,
    WS_MAX_MESSAGE_SIZE,
)
from librorum.transport._throttle import AuthBackoff, LogLimiter, address_key
from librorum.transport._wsframes import accelerate, encode_frame
from librorum.transport.base import (
    PEER_ERRORS,
    FrameParts,
    Handler,
    PeerInfo,
    Reclaim,
    connection_guard,
    fd_headroom,
    logger,
    refusal_frame,
    run_handler,
)

_NORMAL_CLOSURE: Final = int(WsCloseCode.NORMAL_CLOSURE)
_ABNORMAL_CLOSURE: Final = int(WsCloseCode.ABNORMAL_CLOSURE)
#: Close codes after which the peer is gone cleanly: receive_some returns b"".
_CLEAN_CLOSE: Final = frozenset({_NORMAL_CLOSURE, int(WsCloseCode.GOING_AWAY)})
#: Offset and struct of the payload_size field in an LBRU header.
_PAYLOAD_SIZE: Final = struct.Struct("!I")
_PAYLOAD_SIZE_OFFSET: Final = 8


class _Closed(Exception):  # noqa: N818 - internal signal, never escapes the module
    """The WebSocket is closed or closing: by the peer (its close code), by us, or the TCP
    connection was lost (1006)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        try:
            name = f" {WsCloseCode(self.code).name}"
        except ValueError:
            name = ""
        return f"{self.code}{name}{': ' if self.reason else ''}{self.reason}"


class _WebSocketProtocolError(RemoteProtocolError):
    """The peer broke RFC 6455 itself (not LBRU): ``close_code`` is the code our close frame
    reports it with (1002, or 1007 for invalid UTF-8)."""

    def __init__(self, message: str, close_code: int) -> None:
        super().__init__(message)
        self.close_code = close_code


#: What a WebSocket peer can make the connection plumbing raise, beyond the generic ones.
_PEER_ERRORS: Final = (*PEER_ERRORS, _Closed, wsproto.utilities.RemoteProtocolError)


def close_code_for(error: LibrorumError | None) -> int:
    """The WebSocket close code that reports ``error``, the connection error ending a
    connection (spec 2.2): 1000 for none; 1009 for a message or frame over its limit; 1002
    for any other protocol violation (1007 for invalid UTF-8 in a text message); 1008 for a
    passed deadline; 1013 for a connection limit; 1001 when the server shuts down; 1011 for
    anything else."""
    if error is None:
        return _NORMAL_CLOSURE
    if isinstance(error, _WebSocketProtocolError):
        return error.close_code
    code: WsCloseCode
    if isinstance(error, FrameTooLargeError):
        code = WsCloseCode.MESSAGE_TOO_BIG
    elif isinstance(error, RemoteProtocolError):
        code = WsCloseCode.PROTOCOL_ERROR
    elif isinstance(error, ConnectionTimeoutError):
        code = WsCloseCode.POLICY_VIOLATION
    elif isinstance(error, ConnectionLimitError):
        code = WsCloseCode.TRY_AGAIN_LATER
    elif isinstance(error, UnavailableError):
        code = WsCloseCode.GOING_AWAY
    else:
        code = WsCloseCode.INTERNAL_ERROR
    return int(code)


class WsTransport:
    """A :class:`~librorum.transport.base.FrameTransport` over a WebSocket connection: each
    frame travels as one binary message, and each message received must be one whole frame.

    Args:
        ws: the connection (made by :func:`serve_websocket` or :func:`connect_websocket`);
            the transport owns it from now on.
        peer: who is at the other end.
        close_grace: longest wait for the close handshake in :meth:`aclose`.
        first_message_size: the largest message accepted until this side has sent its first
            frame, the connection's own limit after that. On the server the first frame is
            the HELLO reply (or an ERROR that ends the connection), so this is the
            pre-handshake budget of spec 2.2. ``None``: the connection's limit throughout.
        check_frames: whether :meth:`receive_some` itself refuses a message that is not
            exactly one frame. The server's connection checks that after the header checks,
            so that a bad header is reported first (spec 3.1), and passes False.
    """

    kind: Final = "websocket"
    message_framed: Final = True
    carries_files: Final = False

    def __init__(
        self,
        ws: _WebSocket,
        peer: PeerInfo,
        *,
        close_grace: float = CLOSE_GRACE,
        first_message_size: int | None = None,
        check_frames: bool = True,
    ) -> None:
        self.peer: Final = peer
        self._ws = ws
        self._close_grace = close_grace
        self._check_frames = check_frames
        self._send_lock = trio.StrictFIFOLock()
        # Why we closed the connection, once we did: the error later operations report.
        self._closed: str | None = None
        self._broken: str | None = None
        # The limit to restore once the first frame is sent (None: nothing to restore).
        self._later_message_size: int | None = None
        if first_message_size is not None and first_message_size < ws.max_message_size:
            self._later_message_size = ws.max_message_size
            ws.limit_messages(first_message_size)

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
                        if self._later_message_size is not None:
                            # Our first frame is out: the handshake is over (see __init__).
                            self._ws.limit_messages(self._later_message_size)
                            self._later_message_size = None
            finally:
                if in_flight:
                    self._broken = "an earlier send was interrupted in the middle of a message"

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> bytes | bytearray:
        """Return the next message: one whole LBRU frame (``max_bytes`` does not apply; a
        message is at most the connection's message size). ``b""`` means the peer closed
        cleanly (close code 1000 or 1001).

        Cancellation: nothing is lost.

        Raises:
            RemoteProtocolError: a text message, an empty one, a message that is not exactly
                one frame (with ``check_frames``), or the peer broke RFC 6455.
            FrameTooLargeError: a message over the size limit, refused at its header.
            ConnectionTimeoutError: a message was not complete within the connection's
                message deadline.
            ConnectionClosed: the connection broke, was closed by us, or was closed by the
                peer with an error code.
        """
        with self._errors("receive"):
            try:
                message = await self._ws.get_message()
            except _Closed as exc:
                if self._closed is None and exc.code in _CLEAN_CLOSE:
                    return b""
                raise
        if isinstance(message, str):
            msg = "text messages are not LBRU: each message must be one binary frame"
            raise RemoteProtocolError(msg)
        if not message:
            # Checked here in any case: an empty result would read as the end of the stream.
            msg = "an empty WebSocket message cannot hold an LBRU frame"
            raise RemoteProtocolError(msg)
        if self._check_frames:
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

    async def aclose(self, *, error: LibrorumError | None = None) -> None:
        """Close the connection, waiting at most ``close_grace`` for the peer's close frame;
        idempotent. The close code says why (:func:`close_code_for`): ``error`` is the
        connection error that ends the connection (its ERROR frame already sent, if it could
        be); without one, the error :meth:`receive_some` last raised for the peer's input, if
        any, else a normal closure (1000).

        Cancellation: the TCP connection is closed without the close handshake.
        """
        if error is None:
            error = self._ws.failure
        if error is None:
            await self._close("the connection was closed")
        else:
            await self._close(f"closed on error: {error}", close_code_for(error), str(error))

    async def _close(self, why: str, code: int = _NORMAL_CLOSURE, reason: str = "") -> None:
        if self._closed is not None:
            await trio.lowlevel.checkpoint()
            return
        self._closed = why
        with trio.move_on_after(self._close_grace):
            # Closes the TCP connection even when this is cancelled.
            await self._ws.aclose(code, (reason or why) if code != _NORMAL_CLOSURE else None)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """The module's translation boundary for I/O: closes and trio errors to ours. Errors
        about the peer's input (LibrorumError) pass through unchanged."""
        try:
            yield
        except _Closed as exc:
            if self._closed is not None:
                msg = f"cannot {action}: {self._closed}"
            elif exc.code == _ABNORMAL_CLOSURE:
                msg = f"cannot {action}: {exc.reason or 'the connection is closed'}"
            else:
                msg = f"cannot {action}: connection closed ({exc})"
            raise ConnectionClosed(msg) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            msg = f"cannot {action}: connection lost ({exc or type(exc).__name__})"
            raise ConnectionClosed(msg) from exc


def _as_bytes(data: bytes | bytearray) -> bytes:
    # wsproto's stubs say bytes, but it only appends the data to a bytearray, so a bytearray
    # (what trio's SSLStream returns) works as is; copying 1 MiB reads to please a stub would
    # cost real time.
    return cast("bytes", data)


def _join(parts: FrameParts) -> bytes | bytearray:
    if len(parts) == 1 and isinstance(parts[0], bytes | bytearray):
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


# --- The WebSocket connection (both sides) -----------------------------------------------------


def _violation(code: int, reason: str) -> RemoteProtocolError:
    """The error for bytes wsproto (or our decoder) refused, from its close code."""
    if code == WsCloseCode.MESSAGE_TOO_BIG:
        return FrameTooLargeError(f"WebSocket message too large: {reason}")
    return _WebSocketProtocolError(f"the peer broke the WebSocket protocol: {reason}", code)


class _WebSocket:
    """One WebSocket connection, either side, driven by its reader: wsproto parses, the caller
    of :meth:`get_message` reads from the network, and control frames are handled as they are
    read (a ping answered, a pong matched to :meth:`ping`, a close answered). With no task of
    its own, it only reads while someone waits in :meth:`get_message`: a client must keep a
    task receiving, or the server's keepalive closes the connection; on the server, the
    connection's reader is that task.

    Limits on what the peer sends: a message over ``max_message_size`` (all its fragments;
    :meth:`limit_messages` changes it) is refused at the frame header that takes it over, and
    with ``message_timeout`` a message, from its first byte to its last, must arrive within
    that many seconds. Either failure, and any breach of RFC 6455, makes :meth:`get_message`
    raise an error (:attr:`failure`), after which :meth:`aclose` reports it to the peer.

    Args:
        stream: the byte stream, after the HTTP upgrade; owned from now on.
        ws: the wsproto connection, upgraded (server or client).
        max_message_size: the largest message accepted.
        receive_size: bytes asked for per read.
        close_grace: longest wait for the peer's close frame in :meth:`aclose`.
        message_timeout: the message deadline, or None for none.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: wsproto.WSConnection,
        *,
        max_message_size: int,
        receive_size: int,
        close_grace: float,
        message_timeout: float | None = None,
    ) -> None:
        self._stream = stream
        self._ws = ws
        # Whole messages in one buffer, each read stopping at the end of the frame it is in,
        # and the size limit checked at each frame header (see FastFrameDecoder). None on an
        # unchecked wsproto version: plain wsproto then, whose messages are limited as their
        # parts arrive, and timed from their first payload byte (not their first header byte).
        self._decoder = accelerate(
            ws, whole_frames_up_to=max_message_size, max_message_size=max_message_size
        )
        self.max_message_size = max_message_size
        self._receive_size = receive_size
        self._close_grace = close_grace
        self._message_timeout = message_timeout
        self._send_lock = trio.StrictFIFOLock()
        # A message that came in several parts (fragments, or frames over the whole-frame
        # size), joined as they arrive, and its size so far.
        self._partial: bytearray | None = None
        self._message_size = 0
        # When the first byte of the message being received was read (the deadline's start).
        self._message_started: float | None = None
        # Pings sent and not answered yet, oldest first.
        self._pings: OrderedDict[bytes, trio.Event] = OrderedDict()
        # Closed or closing (by either side): every later operation raises it.
        self._closed: _Closed | None = None
        # The peer's input was refused: get_message raises it again.
        self.failure: LibrorumError | None = None
        # wsproto refused the peer's bytes, and parses nothing more (its frame generator
        # ended): what still comes is discarded unparsed.
        self._unparsable = False
        # A write was interrupted: part of a frame may be on the wire, nothing more can go.
        self._send_broken = False
        self._receiving = False
        self._stream_closed = False

    def limit_messages(self, size: int) -> None:
        """Accept messages of at most ``size`` bytes from the next frame header on."""
        self.max_message_size = size
        if self._decoder is not None:
            self._decoder.limit_messages(size)

    # Receiving --------------------------------------------------------------------------------

    async def get_message(self) -> bytes | bytearray | str:
        """The next message (a text message is returned as its first fragment's text: the
        caller refuses it anyway).

        Cancellation: nothing received is lost; a cancel while a ping is being answered may
        leave part of the pong on the wire, and then sending is over (as after any
        interrupted write).

        Raises:
            _Closed: the connection is closed or closing, by either side, or was lost.
            FrameTooLargeError: a message over the size limit.
            ConnectionTimeoutError: a message not complete within ``message_timeout``.
            RemoteProtocolError: the peer broke RFC 6455 (``_WebSocketProtocolError``).
        """
        if self._receiving:
            msg = "another task is already receiving on this connection"
            raise trio.BusyResourceError(msg)
        self._receiving = True
        try:
            while True:
                if self.failure is not None:
                    raise self.failure
                if self._closed is not None:
                    raise _Closed(self._closed.code, self._closed.reason)
                for event in self._ws.events():
                    message = await self._handle(event)
                    if message is not None:
                        self._message_started = None
                        return message
                await self._receive()
        finally:
            self._receiving = False

    def _fail(self, error: LibrorumError) -> LibrorumError:
        self.failure = error
        return error

    def _in_message(self) -> bool:
        """Whether part of a message (or of a control frame) has arrived."""
        if self._partial is not None:
            return True
        return self._decoder is not None and not self._decoder.at_message_boundary

    async def _receive(self) -> None:
        """Read more into wsproto; while part of a message is in, within its deadline."""
        deadline = math.inf
        if self._message_timeout is not None and self._in_message():
            if self._message_started is None:
                self._message_started = trio.current_time()
            deadline = self._message_started + self._message_timeout
        size = self._receive_size
        if self._decoder is not None:
            size = min(size, self._decoder.missing() or size)
        with trio.move_on_at(deadline):
            data = await self._read(size)
            self._ws.receive_data(_as_bytes(data))
            return
        msg = f"a WebSocket message was not complete within {self._message_timeout:g} s"
        raise self._fail(ConnectionTimeoutError(msg))

    async def _read(self, size: int) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(size)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self._closed is None:
                self._closed = _Closed(_ABNORMAL_CLOSURE, f"connection lost: {exc}")
            raise _Closed(self._closed.code, self._closed.reason) from exc
        if not data:
            if self._closed is None:
                reason = "connection closed without a close frame"
                self._closed = _Closed(_ABNORMAL_CLOSURE, reason)
            raise _Closed(self._closed.code, self._closed.reason)
        return data

    async def _handle(self, event: Event) -> bytes | bytearray | str | None:
        if isinstance(event, BytesMessage):
            return self._collect(event)
        if isinstance(event, TextMessage):
            return event.data
        if isinstance(event, Ping):
            if self._ws.state is ConnectionState.OPEN:
                await self._send_event(event.response())
        elif isinstance(event, Pong):
            self._answered(bytes(event.payload))
        elif isinstance(event, CloseConnection):
            await self._close_received(event)
        return None

    def _collect(self, event: BytesMessage) -> bytes | bytearray | None:
        data = event.data
        self._message_size += len(data)
        if self._message_size > self.max_message_size:
            # Only without our decoder, which refuses a message at its header.
            msg = f"WebSocket message too large: over {self.max_message_size} bytes"
            raise self._fail(FrameTooLargeError(msg))
        if self._partial is None:
            if event.message_finished:
                self._message_size = 0
                return data
            # The decoder's payloads are buffers of their own: grown in place, not copied.
            self._partial = data if isinstance(data, bytearray) else bytearray(data)
            return None
        self._partial += data
        if not event.message_finished:
            return None
        message, self._partial = self._partial, None
        self._message_size = 0
        return message

    async def _close_received(self, event: CloseConnection) -> NoReturn:
        state = self._ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            # The peer's close frame: answer it (RFC 6455 5.5.1).
            with contextlib.suppress(_Closed):
                await self._send_event(event.response())
        elif state is not ConnectionState.CLOSED:
            # wsproto reports bytes it refuses as a CloseConnection event that no close frame
            # carried, the state unchanged; its parser is finished, so nothing more is read.
            self._unparsable = True
            raise self._fail(_violation(event.code, event.reason or "invalid frame"))
        # (CLOSED: the peer's answer to our close frame.)
        self._closed = _Closed(event.code, event.reason or "")
        raise _Closed(event.code, event.reason or "")

    def _answered(self, payload: bytes) -> None:
        """A pong: it answers the ping with its payload, and every ping sent before that."""
        if payload not in self._pings:
            return  # unsolicited (RFC 6455 allows them): nothing waits for it
        while self._pings:
            key, answered = self._pings.popitem(last=False)
            answered.set()
            if key == payload:
                return

    # Sending --------------------------------------------------------------------------------

    async def send_message(self, message: bytes | bytearray) -> None:
        """Send one binary message as one frame (masked on the client side).

        Cancellation: an interrupted write ends sending (see ``_send_bytes``).

        Raises:
            _Closed: the connection is closed or closing, or an earlier write was interrupted.
        """
        frame = encode_frame(Opcode.BINARY, message, masked=self._ws.client)
        async with self._send_lock:
            if self._closed is not None or self._ws.state is not ConnectionState.OPEN:
                closed = self._closed or _Closed(_ABNORMAL_CLOSURE, "the connection is closing")
                raise _Closed(closed.code, closed.reason)
            await self._send_bytes(frame)

    async def ping(self) -> None:
        """Send a ping and wait for its pong, which the task in :meth:`get_message` reads.

        Cancellation: safe; the ping is forgotten.

        Raises:
            _Closed: the connection is closed or closing.
        """
        payload = os.urandom(8)
        answered = trio.Event()
        self._pings[payload] = answered
        try:
            await self._send_event(Ping(payload=payload))
            await answered.wait()
        finally:
            self._pings.pop(payload, None)

    async def _send_event(self, event: Event) -> None:
        async with self._send_lock:
            try:
                data = self._ws.send(event)
            except wsproto.utilities.LocalProtocolError as exc:
                # The connection moved on (a close went or came) since the caller looked.
                raise _Closed(_ABNORMAL_CLOSURE, "the connection is closing") from exc
            await self._send_bytes(data)

    async def _send_bytes(self, data: bytes | bytearray) -> None:
        """Write ``data``; the caller holds the send lock. A write cut short by a cancel may
        leave part of a frame on the wire: nothing more is sent after that."""
        if self._send_broken:
            raise _Closed(_ABNORMAL_CLOSURE, "an earlier write was interrupted mid-frame")
        self._send_broken = True
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self._closed is None:
                self._closed = _Closed(_ABNORMAL_CLOSURE, f"connection lost: {exc}")
            raise _Closed(self._closed.code, self._closed.reason) from exc
        self._send_broken = False

    # Closing --------------------------------------------------------------------------------

    async def aclose(self, code: int = _NORMAL_CLOSURE, reason: str | None = None) -> None:
        """Send a close frame with ``code`` (if the connection is still open), wait at most
        ``close_grace`` for the peer's, discarding what comes before it, and close the TCP
        connection; idempotent. The server half-closes the TCP connection right after its
        close frame, which tells a peer that was still sending that nothing more comes.

        Cancellation: the TCP connection is closed all the same.
        """
        if self._stream_closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            with trio.move_on_after(self._close_grace):
                if self._ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                    await self._send_event(CloseConnection(code=code, reason=reason))
                    if not self._ws.client and isinstance(
                        self._stream, trio.abc.HalfCloseableStream
                    ):
                        async with self._send_lock:
                            await self._stream.send_eof()
                if self._closed is None:
                    self._closed = _Closed(code, reason or "")
                if not self._receiving:
                    await self._await_close_frame()
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._stream_closed = True
            await trio.aclose_forcefully(self._stream)

    async def _await_close_frame(self) -> None:
        # The RFC wants the peer's close frame before the TCP connection closes (a client
        # even waits for the server to close it); messages still in flight are discarded.
        # Bounded by the caller's close_grace.
        while self._ws.state is not ConnectionState.CLOSED:
            if not self._unparsable:
                for event in self._ws.events():
                    if isinstance(event, CloseConnection):
                        return  # the peer's close, or its bytes were refused: done either way
            data = await self._stream.receive_some(self._receive_size)
            if not data:
                return
            if not self._unparsable:
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
    reclaim: Reclaim | None = None
    handshaking: int = 0
    established: int = 0
    # Connections over a cap being answered with 503: each holds a descriptor for up to the
    # refusal linger, so they are capped too (at max_unauthenticated); past that, a connection
    # is closed unanswered.
    refusing: int = 0
    # Every connection of an address, handshaking or established.
    per_ip: dict[str, int] = attrs.Factory(dict)

    def enter(self, ip: str, fd: int) -> str | None:
        """Count a new TCP connection in, or say why it is refused. No await: atomic.

        At a full per-IP cap, a connection is still let in to its handshake when one of that
        address's connections has stalled (see :class:`~librorum.transport.base.Reclaim`):
        only once it has authenticated is the stalled one closed for it (:meth:`establish`),
        so a peer that cannot log in never closes anybody's connection.
        """
        if self.handshaking >= self.max_unauthenticated:
            return f"{self.handshaking} connections are already in their handshake"
        if self.per_ip.get(ip, 0) >= self.max_per_ip and not self._reclaim(ip, evict=False):
            return f"{ip} already has {self.max_per_ip} connections"
        if not fd_headroom(fd, self.fd_reserve):
            return "the descriptor reserve is reached"
        self.handshaking += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return None

    def establish(self, ip: str) -> bool:
        """Count an authenticated connection in (False: refused for the caps). Over a full
        per-IP or total cap, a stalled connection (of that address, or any) is closed for it;
        the cap is exceeded only until that one has closed (the close grace at most)."""
        if self.per_ip.get(ip, 0) > self.max_per_ip:
            # The connection closed for it frees its seat under the total cap as well.
            if not self._reclaim(ip, evict=True):
                return False
        elif self.established >= self.max_connections and not self._reclaim(None, evict=True):
            return False
        self.established += 1
        return True

    def _reclaim(self, ip: str | None, *, evict: bool) -> bool:
        return self.reclaim is not None and self.reclaim("websocket", ip, evict=evict)

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
    message_timeout: float | None
    max_message_size: int
    first_message_size: int | None
    receive_buffer_size: int
    max_request_head: int
    refusal_linger: float
    check_frames: bool


@attrs.define
class _Guards:
    """The listener's memory of addresses: failed authentications, and log lines held back."""

    backoff: AuthBackoff
    log: LogLimiter = attrs.Factory(LogLimiter)

    def log_refusal(self, what: str, ip: str, level: int, message: str, *args: object) -> None:
        """Log a refused connection, at most once per address and kind per interval."""
        held_back = self.log.allow(f"{what} {address_key(ip)}", trio.current_time())
        if held_back is None:
            return
        if held_back:
            message += " (and %d more like it from there since the last report)"
            args = (*args, held_back)
        logger.log(level, message, *args)


@attrs.frozen
class _Refusal:
    """An HTTP answer that refuses a handshake."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


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
    message_timeout: float | None = FRAME_TIMEOUT,
    max_message_size: int = WS_MAX_MESSAGE_SIZE,
    first_message_size: int | None = WS_HANDSHAKE_MESSAGE_SIZE,
    check_frames: bool = True,
    receive_buffer_size: int = WS_RECEIVE_BUFFER,
    max_request_head: int = WS_MAX_REQUEST_HEAD,
    refusal_linger: float = WS_REFUSAL_LINGER,
    auth_failures_allowed: int = AUTH_FAILURES_ALLOWED,
    auth_backoff_max: float = AUTH_BACKOFF_MAX,
    fd_reserve: int = FD_RESERVE,
    backlog: int = LISTEN_BACKLOG,
    reclaim: Reclaim | None = None,
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
       over either (or when the descriptor reserve is reached), the connection is answered
       with HTTP 503 and a Retry-After without its request being read, then drained for at
       most ``refusal_linger`` seconds and closed. At most ``max_unauthenticated`` such
       answers are under way; past that, a connection is closed unanswered: a flood costs
       little;
    2. the TLS handshake (with ``ssl_context``) and the HTTP upgrade request must complete
       within ``handshake_timeout``; a request head over ``max_request_head`` bytes gets 431,
       a request that is not a WebSocket upgrade 400 (or 426 for another WebSocket version),
       and any refused connection is drained for at most ``refusal_linger`` seconds after its
       answer before it is closed;
    3. an address that failed authentication ``auth_failures_allowed`` times in a row backs
       off: its handshakes get 429 with a Retry-After, without their token being looked at,
       for 1 s after the next failure, doubling with each further one up to
       ``auth_backoff_max`` (:class:`~librorum.transport._throttle.AuthBackoff`);
    4. with a ``token``, the request must carry ``Authorization: Bearer <token>`` (compared
       with :func:`hmac.compare_digest`); otherwise it is rejected with HTTP 401 before any
       WebSocket exists. A token in the URL is ignored. A request with an ``Origin`` header
       (a browser) is rejected with 403 unless the origin is in ``allowed_origins``: a web
       page must not reach a local daemon through the visitor's browser;
    5. past ``max_connections`` established connections, the connection is accepted, sent an
       LBRU ERROR frame (CONNECTION_LIMIT) and closed (1013), so the client learns why.

    At a full per-IP or total cap, ``reclaim`` may make room by closing a stalled connection
    (of that address, for the per-IP cap); a newcomer over the per-IP cap goes through its
    handshake first, and the stalled connection is closed only once it has authenticated.

    Refusals are logged at most once per address and kind per minute, with a count of those
    held back.

    Once established, a message larger than ``first_message_size`` (until the handler sends
    its first frame: spec 2.2's pre-HELLO budget; ``None`` for no such limit) or
    ``max_message_size`` (after), or not complete within ``message_timeout`` of its first
    byte, or breaking RFC 6455, makes the transport's ``receive_some`` raise (see
    :class:`WsTransport`). The server pings every ``ping_interval`` seconds and closes the
    connection when a pong takes longer than ``pong_timeout``. When the handler returns (or
    fails: see :func:`~librorum.transport.base.run_handler`) the connection is closed, with at
    most ``close_grace`` for the close handshake.

    Args:
        handler: called with each authenticated connection's :class:`WsTransport`.
        host, port: where to listen.
        token: the bearer token clients must present; ``None`` disables authentication
            (loopback only; the configuration enforces it).
        ssl_context: serve ``wss://`` with this server context.
        check_frames: as for :class:`WsTransport`: False when the handler checks that each
            message is one frame itself (the daemon's connection does, after the header
            checks).
        receive_buffer_size: bytes asked for per read.
        fd_reserve, backlog, reclaim, handler_nursery, task_status: as for
            :func:`~librorum.transport.uds.serve_uds` (``reclaim`` is called with
            ("websocket", ip) for the per-IP cap and ("websocket", None) for the total).

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
        message_timeout=message_timeout,
        max_message_size=max_message_size,
        first_message_size=first_message_size,
        receive_buffer_size=receive_buffer_size,
        max_request_head=max_request_head,
        refusal_linger=refusal_linger,
        check_frames=check_frames,
    )
    gate = _Gate(max_connections, max_per_ip, max_unauthenticated, fd_reserve, reclaim)
    guards = _Guards(AuthBackoff(allowed=auth_failures_allowed, longest=auth_backoff_max))
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
    serve_one = partial(_serve_connection, settings=settings, gate=gate, guards=guards)
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
    guards: _Guards,
) -> None:
    try:
        ip, port = _socket_of(stream).getpeername()[:2]
    except OSError:
        await trio.aclose_forcefully(stream)
        return
    address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    refusal = gate.enter(ip, _socket_of(stream).fileno())
    if refusal is not None:
        await _refuse_busy(stream, settings, gate, guards, ip, address, refusal)
        return
    handshaking = True
    try:
        with connection_guard(address, _PEER_ERRORS):
            try:
                ws = await _handshake(stream, settings, guards, ip, address)
            finally:
                gate.handshaking -= 1
                handshaking = False
            if ws is not None:
                await _run_established(ws, settings, gate, ip, address)
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


async def _refuse_busy(
    stream: trio.abc.Stream,
    settings: _Settings,
    gate: _Gate,
    guards: _Guards,
    ip: str,
    address: str,
    why: str,
) -> None:
    """Answer a connection over a cap with 503 and close it; the request is not read, only
    drained. Past ``max_unauthenticated`` answers under way, close it unanswered."""
    answer = gate.refusing < gate.max_unauthenticated
    guards.log_refusal(
        "busy",
        ip,
        logging.WARNING,
        "refusing WebSocket connection from %s%s: %s",
        address,
        "" if answer else " unanswered",
        why,
    )
    try:
        if answer:
            gate.refusing += 1
            try:
                retry = (("Retry-After", str(WS_BUSY_RETRY_AFTER)),)
                busy = _Refusal(503, "too many connections; try again later", retry)
                await _answer(stream, busy, settings.refusal_linger)
            finally:
                gate.refusing -= 1
    finally:
        await trio.aclose_forcefully(stream)


def _http_response(refusal: _Refusal) -> bytes:
    """A complete HTTP response for ``refusal``, with its reason as a text body."""
    body = refusal.reason.encode() + b"\n"
    lines = [
        f"HTTP/1.1 {refusal.status} {http.HTTPStatus(refusal.status).phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in refusal.headers),
    ]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


async def _answer(stream: trio.abc.Stream, refusal: _Refusal, linger: float) -> None:
    """Send the refusal, then read and discard what the client still sends (up to
    ``WS_REFUSAL_DRAIN`` bytes, until it closes, for at most ``linger`` seconds): closing a
    socket with unread input resets the connection, which can destroy the answer in flight.
    The peer's errors are ignored: it is being turned away."""
    with trio.move_on_after(linger):
        try:
            await stream.send_all(_http_response(refusal))
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            drained = 0
            while drained < WS_REFUSAL_DRAIN:
                data = await stream.receive_some(WS_REFUSAL_DRAIN - drained)
                if not data:
                    break
                drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def _handshake(
    stream: trio.abc.Stream,
    settings: _Settings,
    guards: _Guards,
    ip: str,
    address: str,
) -> _WebSocket | None:
    """Read the upgrade request, check it, accept it or answer why not. None: refused, timed
    out or abandoned (logged)."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    refusal: _Refusal | None = None
    with trio.move_on_after(settings.handshake_timeout):
        request = await _read_request(stream, ws, settings.max_request_head)
        if request is None:
            return None  # the client left before finishing its request
        if isinstance(request, Request):
            refusal = _admit(request, settings, guards, ip, address)
            if refusal is None:
                await stream.send_all(ws.send(AcceptConnection()))
                return _WebSocket(
                    stream,
                    ws,
                    max_message_size=settings.max_message_size,
                    receive_size=settings.receive_buffer_size,
                    close_grace=settings.close_grace,
                    message_timeout=settings.message_timeout,
                )
        else:
            refusal = request
            guards.log_refusal(
                "request",
                ip,
                logging.WARNING,
                "refusing WebSocket handshake from %s: %d %s",
                address,
                refusal.status,
                refusal.reason,
            )
    if refusal is None:
        guards.log_refusal(
            "request", ip, logging.INFO, "WebSocket handshake from %s timed out", address
        )
        return None
    await _answer(stream, refusal, settings.refusal_linger)
    return None


async def _read_request(
    stream: trio.abc.Stream, ws: wsproto.WSConnection, max_head: int
) -> Request | _Refusal | None:
    """The upgrade request, read up to ``max_head`` bytes; a refusal when it is too long or
    not an upgrade request; None when the client closed first."""
    received = 0
    while True:
        for event in ws.events():
            if isinstance(event, Request):
                return event
        data = await stream.receive_some(max_head + 1 - received)
        if not data:
            return None
        received += len(data)
        if received > max_head:
            return _Refusal(431, f"the request head is over {max_head} bytes")
        try:
            ws.receive_data(_as_bytes(data))
        except wsproto.utilities.RemoteProtocolError as exc:
            hint = exc.event_hint
            if isinstance(hint, RejectConnection):
                headers = tuple(
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in hint.headers
                )
                return _Refusal(hint.status_code, f"not a WebSocket upgrade: {exc}", headers)
            return _Refusal(400, f"not a WebSocket upgrade: {exc}")
        except UnicodeError:
            # wsproto decodes the Host header as IDNA, and lets a bad one through like this.
            return _Refusal(400, "not a WebSocket upgrade: the Host header is no host name")


def _admit(
    request: Request, settings: _Settings, guards: _Guards, ip: str, address: str
) -> _Refusal | None:
    """None to accept the upgrade request, else the answer that refuses it (logged)."""
    key = address_key(ip)
    now = trio.current_time()
    wait = guards.backoff.wait(key, now)
    if wait > 0:
        guards.log_refusal(
            "auth",
            ip,
            logging.WARNING,
            "refusing WebSocket handshake from %s: too many failed authentications "
            "(%.3g s of back-off left)",
            address,
            wait,
        )
        retry = (("Retry-After", str(math.ceil(wait))),)
        return _Refusal(429, "too many failed authentications; try again later", retry)
    keys = sum(1 for name, _ in request.extra_headers if name == b"sec-websocket-key")
    if keys != 1:
        refusal = _Refusal(400, "not a WebSocket upgrade: more than one Sec-WebSocket-Key")
        guards.log_refusal(
            "request",
            ip,
            logging.WARNING,
            "refusing WebSocket handshake from %s: %s",
            address,
            refusal.reason,
        )
        return refusal
    verdict = _authorize(request.extra_headers, settings)
    if verdict is None:
        guards.backoff.succeeded(key)
        return None
    status, reason = verdict
    headers: tuple[tuple[str, str], ...] = ()
    detail = ""
    if status == 401:
        headers = (("WWW-Authenticate", 'Bearer realm="librorum"'),)
        failures, wait = guards.backoff.failed(key, now)
        if wait:
            headers = (*headers, ("Retry-After", str(math.ceil(wait))))
            detail = f" ({failures} failures in a row: backing off for {wait:g} s)"
    guards.log_refusal(
        "auth",
        ip,
        logging.WARNING,
        "rejecting WebSocket handshake from %s: %s%s",
        address,
        reason,
        detail,
    )
    return _Refusal(status, reason, headers)


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
    ws: _WebSocket, settings: _Settings, gate: _Gate, ip: str, address: str
) -> None:
    peer = PeerInfo("websocket", address=address, authenticated=settings.token is not None)
    transport = WsTransport(
        ws,
        peer,
        close_grace=settings.close_grace,
        first_message_size=settings.first_message_size,
        check_frames=settings.check_frames,
    )
    if not gate.establish(ip):
        logger.warning("refusing WebSocket connection from %s: connection limit", address)
        error = ConnectionLimitError("too many connections; try later")
        with contextlib.suppress(ConnectionClosed):
            frame = refusal_frame(ErrorCode.CONNECTION_LIMIT, str(error))
            with trio.move_on_after(settings.close_grace):
                await transport.send_frames([(frame,)])
        await transport.aclose(error=error)
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
    ws: _WebSocket,
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
            except _Closed:
                return
        if scope.cancelled_caught:
            why = f"the peer did not answer a ping within {pong_timeout:g} s"
            logger.info("closing WebSocket %s: %s", transport.peer.address, why)
            await transport._close(why, code=int(WsCloseCode.INTERNAL_ERROR))
            return


# --- The client --------------------------------------------------------------------------------


class _Rejected(Exception):  # noqa: N818 - internal signal, never escapes the module
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


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
        UnauthorizedError: the server refused the token (401) or the origin (403), or makes
            this address wait after too many failed attempts (429).
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
    connection = _WebSocket(
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
        # 429: this address failed authentication too often and must wait (Retry-After).
        if exc.status in (401, 403, 429):
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
