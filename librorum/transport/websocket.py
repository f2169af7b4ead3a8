"""LBRU over WebSocket, the adapter: :class:`WsTransport`, one LBRU frame per binary
message, over :class:`WebSocketConnection`. The listener is in
:mod:`librorum.transport.ws_server`, the connectors in :mod:`librorum.transport.ws_client`.

Both sides run one small WebSocket connection on wsproto, :class:`WebSocketConnection`, driven
by its reader: no task of its own; the task that reads also answers pings, matches pongs to the
pings sent, and handles the close. The server used to run trio-websocket's connection, whose
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

Throughput (the receive buffer, copies and masking): both sides read
:data:`~librorum.limits.WS_RECEIVE_BUFFER` (1 MiB) at a time; 4 KiB reads halve throughput.
wsproto copies every payload four to five times on the way in and out, so once a connection
is established its frame payloads go through :mod:`librorum.transport._wsframes` instead: taken
out of the receive buffer without a copy and unmasked in one pass. Each read stops at the end
of the frame it is in, and a message's payload is read into one buffer of its final size,
which is the message (no reassembly). On send over plain TCP, a frame goes to the kernel as
its parts in one ``sendmsg`` (header and small parts joined, large payloads as they are), and a
payload that is a file region by ``os.sendfile`` (the server's DATA frames of a READ, from the
chunk files: unmasked, they are the file's bytes); under TLS the parts are joined. RFC 6455
requires clients to mask every frame (and servers to refuse unmasked ones), so masking cannot
be skipped: it runs in compiled code (``websockets``' C routine, about 20 GB/s), falling back
to pure Python (0.5-0.9 GB/s) where that is missing.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import socket
import struct
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Final, NoReturn, cast

import trio
import wsproto
import wsproto.utilities
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason as WsCloseCode, Opcode

from librorum.errors import (
    ConnectionClosed,
    ConnectionLimitError,
    ConnectionTimeoutError,
    FrameTooLargeError,
    LibrorumError,
    LocalProtocolError,
    RemoteProtocolError,
    UnavailableError,
)
from librorum.limits import (
    CLOSE_GRACE,
    RECEIVE_SIZE,
)
from librorum.protocol.constants import HEADER_SIZE
from librorum.protocol.framing import FileRegion
from librorum.transport._wsframes import accelerate, frame_buffers
from librorum.transport.base import (
    PEER_ERRORS,
    Buffer,
    FileFrameParts,
    FrameParts,
    PeerInfo,
    sendfile_some,
)

_NORMAL_CLOSURE: Final = int(WsCloseCode.NORMAL_CLOSURE)
_ABNORMAL_CLOSURE: Final = int(WsCloseCode.ABNORMAL_CLOSURE)
#: Close codes after which the peer is gone cleanly: receive_some returns b"".
_CLEAN_CLOSE: Final = frozenset({_NORMAL_CLOSURE, int(WsCloseCode.GOING_AWAY)})
#: Offset and struct of the payload_size field in an LBRU header.
_PAYLOAD_SIZE: Final = struct.Struct("!I")
_PAYLOAD_SIZE_OFFSET: Final = 8
#: EPIPE instead of SIGPIPE if the peer is gone (Python ignores SIGPIPE, an embedder may not).
_SEND_FLAGS: Final = socket.MSG_NOSIGNAL
#: Linux rejects a sendmsg with more buffers than this (IOV_MAX).
_IOV_MAX: Final = 1024
#: Buffers smaller than this are joined with their neighbours in a batch of messages: copying a
#: small buffer costs less than an entry of its own in a vectored write.
_COALESCE_BELOW: Final = 16 << 10


class WsClosed(Exception):  # noqa: N818 - internal signal, never escapes the module
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
WS_PEER_ERRORS: Final = (*PEER_ERRORS, WsClosed, wsproto.utilities.RemoteProtocolError)


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
        ws: WebSocketConnection,
        peer: PeerInfo,
        *,
        close_grace: float = CLOSE_GRACE,
        first_message_size: int | None = None,
        check_frames: bool = True,
    ) -> None:
        self.peer: Final = peer
        #: File regions are worth passing only where os.sendfile sends them: a server over
        #: plain TCP. Under TLS (or on a client, which masks) their bytes would be read back
        #: into memory on the event loop's thread; the server sends pieces it read in a
        #: worker thread instead.
        self.sends_file_regions: Final = ws.sends_from_files
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

    async def send_frames(self, frames: Sequence[FileFrameParts]) -> None:
        """Send each frame as one binary message (its parts joined), in order. A payload that
        is a :class:`~librorum.protocol.framing.FileRegion` is sent from its file: with
        ``os.sendfile`` over plain TCP on the server side (unmasked, the payload is the file's
        bytes as they are), read into memory otherwise (TLS, or a client, which masks); its
        descriptor must stay open until this returns.

        Cancellation: messages fully sent stay sent; a cancel during a message may leave half
        a WebSocket frame on the wire, so the transport is then broken (further sends raise
        ConnectionClosed) and must be closed.

        Raises:
            ConnectionClosed: the connection is closed or broken, or a file region ended
                before its length (the transport is then broken).
        """
        async with self._send_lock:
            if self._broken is not None:
                msg = f"cannot send: {self._broken}"
                raise ConnectionClosed(msg)
            try:
                with self._errors("send"):
                    await self._ws.send_messages(frames)
                    if self._later_message_size is not None:
                        # Our first frame is out: the handshake is over (see __init__).
                        self._ws.limit_messages(self._later_message_size)
                        self._later_message_size = None
            finally:
                if self._ws.send_broken:
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
            except WsClosed as exc:
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
            await self.close_because("the connection was closed")
        else:
            await self.close_because(f"closed on error: {error}", close_code_for(error), str(error))

    async def close_because(self, why: str, code: int = _NORMAL_CLOSURE, reason: str = "") -> None:
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
        except WsClosed as exc:
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


def as_bytes(data: bytes | bytearray) -> bytes:
    # wsproto's stubs say bytes, but it only appends the data to a bytearray, so a bytearray
    # (what trio's SSLStream returns) works as is; copying 1 MiB reads to please a stub would
    # cost real time.
    return cast("bytes", data)


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


class WebSocketConnection:
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
        # A plain TCP stream's socket, written with sendmsg (a frame's header and its large
        # payload parts in one call, none of them copied to join them); None under TLS.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
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
        self._closed: WsClosed | None = None
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
            WsClosed: the connection is closed or closing, by either side, or was lost.
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
                    raise WsClosed(self._closed.code, self._closed.reason)
                if (
                    self._decoder is not None
                    and self._partial is None
                    and self._ws.state is ConnectionState.OPEN
                ):
                    small = self._decoder.take_small_message()
                    if small is not None:
                        self._message_started = None
                        return small
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
            self._ws.receive_data(as_bytes(data))
            return
        msg = f"a WebSocket message was not complete within {self._message_timeout:g} s"
        raise self._fail(ConnectionTimeoutError(msg))

    async def _read(self, size: int) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(size)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if self._closed is None:
                self._closed = WsClosed(_ABNORMAL_CLOSURE, f"connection lost: {exc}")
            raise WsClosed(self._closed.code, self._closed.reason) from exc
        if not data:
            if self._closed is None:
                reason = "connection closed without a close frame"
                self._closed = WsClosed(_ABNORMAL_CLOSURE, reason)
            raise WsClosed(self._closed.code, self._closed.reason)
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
            with contextlib.suppress(WsClosed):
                await self._send_event(event.response())
        elif state is not ConnectionState.CLOSED:
            # wsproto reports bytes it refuses as a CloseConnection event that no close frame
            # carried, the state unchanged; its parser is finished, so nothing more is read.
            self._unparsable = True
            raise self._fail(_violation(event.code, event.reason or "invalid frame"))
        # (CLOSED: the peer's answer to our close frame.)
        self._closed = WsClosed(event.code, event.reason or "")
        raise WsClosed(event.code, event.reason or "")

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

    async def send_messages(self, messages: Sequence[FileFrameParts]) -> None:
        """Send each of ``messages`` (the parts of one) as one binary message, in order, each
        in one frame (masked on the client side). Over plain TCP all of them go to the kernel
        in as few ``sendmsg`` calls as it takes, as their parts (small ones joined, large ones
        as they are, ``os.sendfile`` for a file region): many small messages cost one write,
        an unmasked payload is not copied, a masked one once. Under TLS each message is joined
        and written on its own, and a client reads a file region into memory to mask it.

        Cancellation: the messages fully written stay written; a cancel that cuts a message
        ends sending (see ``_send_bytes``).

        Raises:
            WsClosed: the connection is closed or closing, an earlier write was interrupted,
                or a file region ended before its length (EIO).
        """
        masked = self._ws.client
        frames: list[list[Buffer | FileRegion]] = []
        for message in messages:
            parts = message
            if (masked or self._socket is None) and any(isinstance(p, FileRegion) for p in parts):
                try:
                    parts = [_read_region(p) if isinstance(p, FileRegion) else p for p in parts]
                except OSError as exc:
                    reason = f"cannot read a file region: {exc}"
                    self._closed = WsClosed(_ABNORMAL_CLOSURE, reason)
                    raise WsClosed(self._closed.code, self._closed.reason) from exc
            frames.append(frame_buffers(Opcode.BINARY, parts, masked=masked))
        async with self._send_lock:
            if self._closed is not None or self._ws.state is not ConnectionState.OPEN:
                closed = self._closed or WsClosed(_ABNORMAL_CLOSURE, "the connection is closing")
                raise WsClosed(closed.code, closed.reason)
            if self._socket is None:
                for frame in frames:
                    await self._send_bytes(*frame)
                return
            items, ends = _batch(frames)
            await self._send_bytes(*items, ends=ends)

    @property
    def sends_from_files(self) -> bool:
        """Whether a file region's bytes go out with ``os.sendfile``: on the server side of a
        plain TCP connection (a client masks its frames, TLS encrypts them)."""
        return self._socket is not None and not self._ws.client

    @property
    def send_broken(self) -> bool:
        """Whether a write was cut short in the middle of a frame: nothing more can be sent."""
        return self._send_broken

    async def ping(self) -> None:
        """Send a ping and wait for its pong, which the task in :meth:`get_message` reads.

        Cancellation: safe; the ping is forgotten.

        Raises:
            WsClosed: the connection is closed or closing.
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
                raise WsClosed(_ABNORMAL_CLOSURE, "the connection is closing") from exc
            await self._send_bytes(data)

    async def _send_bytes(self, *buffers: Buffer | FileRegion, ends: Sequence[int] = ()) -> None:
        """Write ``buffers``, in order (file regions only over plain TCP); the caller holds the
        send lock. A write cut short by a cancel or a failure may leave part of a frame on the
        wire: nothing more is sent after that. ``ends``: the offsets in the bytes at which
        frames end (one frame when empty), so that a cancel between two frames of a batch
        leaves sending usable."""
        if self._send_broken:
            raise WsClosed(_ABNORMAL_CLOSURE, "an earlier write was interrupted mid-frame")
        self._send_broken = True
        # Bytes written so far, counted by the vectored path (-1: not counted, as trio's
        # send_all does not say how far it got when cancelled).
        sent = [0]
        try:
            if self._socket is not None and (
                len(buffers) > 1 or isinstance(buffers[0], FileRegion)
            ):
                await _send_vectored(self._socket, list(buffers), sent)
            else:
                sent[0] = -1
                # (TLS: the record layer copies anyway, so one join costs little.)
                data = cast("list[Buffer]", buffers)
                await self._stream.send_all(data[0] if len(data) == 1 else b"".join(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if self._closed is None:
                self._closed = WsClosed(_ABNORMAL_CLOSURE, f"connection lost: {exc}")
            raise WsClosed(self._closed.code, self._closed.reason) from exc
        except trio.Cancelled:
            # Cancelled between two frames of a batch (or before any byte): nothing is cut.
            if sent[0] >= 0 and (sent[0] == 0 or sent[0] in ends):
                self._send_broken = False
            raise
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
                    self._closed = WsClosed(code, reason or "")
                if not self._receiving:
                    await self._await_close_frame()
        except (WsClosed, trio.BrokenResourceError, trio.ClosedResourceError):
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
                self._ws.receive_data(as_bytes(data))


async def _send_vectored(
    sock: trio.socket.SocketType, items: list[Buffer | FileRegion], sent: list[int]
) -> None:
    """Write all of ``items`` with as few calls as the socket takes: the buffers between file
    regions in ``sendmsg`` calls of at most IOV_MAX buffers, each region with
    ``os.sendfile``; resumed after partial writes. ``sent[0]`` counts the bytes written, as
    they are (what a cancel left behind).

    Cancellation: as trio's ``send_all``: part of the items may have been written.

    Raises:
        OSError: the write failed (the peer is gone: EPIPE, ECONNRESET), or a file region
            ended before its length (EIO).
        trio.ClosedResourceError: the socket was closed meanwhile.
    """
    index = 0
    while index < len(items):
        item = items[index]
        if isinstance(item, FileRegion):
            skip = 0
            while skip < item.length:
                done = await sendfile_some(sock, item, skip)
                skip += done
                sent[0] += done
            index += 1
            continue
        views: list[memoryview] = []
        while index < len(items) and not isinstance(items[index], FileRegion):
            views.append(memoryview(cast("Buffer", items[index])).cast("B"))
            index += 1
        while views:
            done = await sock.sendmsg(views[:_IOV_MAX], (), _SEND_FLAGS)
            sent[0] += done
            while done:
                size = views[0].nbytes
                if done < size:
                    views[0] = views[0][done:]
                    break
                done -= size
                del views[0]


def _batch(frames: list[list[Buffer | FileRegion]]) -> tuple[list[Buffer | FileRegion], list[int]]:
    """The items of many frames for one vectored write, runs of small buffers joined (across
    frames: many small messages become one buffer), and the offset at which each frame ends."""
    items: list[Buffer | FileRegion] = []
    ends: list[int] = []
    run: list[Buffer] = []
    total = 0
    for frame in frames:
        for item in frame:
            size = item.nbytes if isinstance(item, memoryview) else len(item)
            total += size
            if not isinstance(item, FileRegion) and size < _COALESCE_BELOW:
                run.append(item)
                continue
            if run:
                items.append(b"".join(run) if len(run) > 1 else run[0])
                run = []
            items.append(item)
        ends.append(total)
    if run:
        items.append(b"".join(run) if len(run) > 1 else run[0])
    return items, ends


def _read_region(region: FileRegion) -> bytes:
    """The bytes of ``region``, read from its file (for a frame that cannot be sent from it).

    Raises:
        OSError: the read failed, or the file ended before the region did (EIO).
    """
    data = os.pread(region.fd, region.length, region.offset)
    if len(data) == region.length:
        return data
    parts = [data]
    done = len(data)
    while done < region.length:
        more = os.pread(region.fd, region.length - done, region.offset + done)
        if not more:
            msg = f"file region ended {region.length - done} bytes early"
            raise OSError(errno.EIO, msg)
        parts.append(more)
        done += len(more)
    return b"".join(parts)


def socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType:
    """The TCP socket under a plain or TLS stream (our listeners make nothing else)."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        msg = f"expected a socket stream, got {type(stream).__name__}"
        raise TypeError(msg)
    return stream.socket
