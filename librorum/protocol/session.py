"""Connection state machines for both ends of an LBRU connection (spec sections 3.3, 4 and 6).

Sans-I/O, in h2's shape: feed received bytes with ``receive_data``, pull events with
``next_event``, call methods to reply/send, then hand ``frames_to_send()`` to the transport in
one batch (one write for many small frames). No clock, no sockets, no trio.

What the state machines own (so that the server and both clients cannot get it wrong):

* the handshake: HELLO first, once; version and limits negotiated; the decoder switched over;
* the session table: which ids are in flight, SESSION_IN_USE on reuse, stream and upload caps
  (refused with BUSY), refusal of new requests after GOAWAY (UNAVAILABLE);
* flow control: per-stream credit in both directions, FLOW_CONTROL on overrun;
* the rules of which frame may come from which side and when; every violation becomes an
  ERROR frame queued for the peer: on the request's session for request errors (the
  connection stays up), on session 0 for connection errors (``closed`` becomes true and the
  driver closes the transport after sending).

Frames for sessions that are no longer in flight (DATA still arriving after the server ended an
upload, a WINDOW for a finished READ) are discarded, as spec 3.3 requires; they are bounded by
the stream's window.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Final, Generic, TypeVar

import attrs

from librorum.errors import (
    BadFlagsError,
    BusyError,
    FlowControlError,
    LibrorumError,
    LocalProtocolError,
    MalformedPayloadError,
    RemoteProtocolError,
    SessionInUseError,
    UnavailableError,
    UnsupportedVersionError,
    error_for_code,
)
from librorum.protocol.constants import (
    CONNECTION_SESSION,
    DEFAULT_INITIAL_WINDOW,
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_STREAMS,
    DEFAULT_MAX_UPLOADS,
    HANDSHAKE_VERSION,
    MAX_CONTROL_PAYLOAD,
    MAX_PAYLOAD_SIZE_FIELD,
    MAX_SESSION_ID,
    MAX_TEXT_BYTES,
    MIN_MAX_PAYLOAD,
    SUPPORTED_VERSIONS,
    Command,
    ErrorClass,
    ErrorCode,
    Feature,
    Flags,
    error_class,
)
from librorum.protocol.converter import decode_payload, encode_message, message_type
from librorum.protocol.framing import CLOSED, NEED_DATA, FileRegion, FrameDecoder, Payload
from librorum.protocol.header import pack_header
from librorum.protocol.messages import (
    COMMAND_OF,
    ErrorMessage,
    GoAway,
    Hello,
    HelloReply,
    Message,
    WindowUpdate,
)

#: One frame, as (header, payload) parts for a vectored write.
FrameParts = tuple[bytes, Payload]
#: What one side's outbox holds beyond in-memory payloads (the server's: file regions).
_Out = TypeVar("_Out", Payload, Payload | FileRegion)

_END: Final = int(Flags.END)
_REPLY: Final = int(Flags.REPLY)
_FD: Final = int(Flags.FD)
_REPLY_END: Final = _REPLY | _END

#: Commands that open a request; every other command travels on an existing session or 0.
_REQUEST_COMMANDS: Final = frozenset(
    {
        Command.WRITE,
        Command.READ,
        Command.LIST,
        Command.NODE_STATUS,
        Command.STAT,
        Command.MKDIR,
        Command.DELETE,
        Command.RENAME,
        Command.UPLOAD_STATUS,
        Command.PING,
        Command.CANCEL,
    }
)


class State(enum.Enum):
    """Where a connection is (spec 4)."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    #: GOAWAY sent or received: requests in flight finish, no new ones start.
    DRAINING = "draining"
    CLOSED = "closed"


# --- Events ------------------------------------------------------------------------------------


@attrs.define
class HelloReceived:
    """Server side: the client's HELLO; answer with :meth:`ServerSession.accept_hello`."""

    hello: Hello


@attrs.define
class HelloAccepted:
    """Client side: the server's HELLO reply; the connection is open."""

    reply: HelloReply


@attrs.define
class RequestReceived:
    """Server side: a request opened ``session_id``. ``end`` is false when DATA follows (a
    WRITE with content); ``fd`` is true when a descriptor rides with the frame."""

    session_id: int
    command: Command
    message: Message
    end: bool
    fd: bool = False


@attrs.define
class ReplyReceived:
    """Client side: a reply on ``session_id``; ``end`` closes the session (for READ the first
    reply has ``end`` false and DATA follows)."""

    session_id: int
    command: Command
    message: Message
    end: bool


@attrs.define
class DataReceived:
    """DATA on an open stream. The receiver grants credit back with ``grant`` once it has
    consumed the bytes."""

    session_id: int
    data: Payload
    end: bool


@attrs.define
class WindowGranted:
    """The peer granted ``increment`` more bytes of DATA on ``session_id``."""

    session_id: int
    increment: int


@attrs.define
class ErrorReceived:
    """An ERROR frame: on a request's session it ends that request; on session 0 it ends
    the connection (``exception`` says why)."""

    session_id: int
    exception: LibrorumError


@attrs.define
class GoAwayReceived:
    """Client side: the server is shutting down; no new requests on this connection."""

    goaway: GoAway


@attrs.define
class ConnectionEnded:
    """The peer closed the connection (cleanly between frames, or after a connection error,
    in which case ``error`` is set and an ERROR frame may be queued for the peer)."""

    error: LibrorumError | None = None


Event = (
    HelloReceived
    | HelloAccepted
    | RequestReceived
    | ReplyReceived
    | DataReceived
    | WindowGranted
    | ErrorReceived
    | GoAwayReceived
    | ConnectionEnded
)


# --- Shared machinery --------------------------------------------------------------------------


@attrs.define
class _Stream:
    command: Command
    #: Bytes of DATA this side may still send.
    send_window: int = 0
    #: Bytes of DATA the peer may still send.
    receive_window: int = 0
    #: The peer sent END (or never sends DATA on this stream).
    peer_done: bool = True
    #: A READ whose first reply went out (server) or came in (client).
    started: bool = False


@attrs.frozen
class ServerLimits:
    """What a server offers in HELLO replies (spec 4.2, 9)."""

    versions: tuple[int, ...] = SUPPORTED_VERSIONS
    max_payload: int = DEFAULT_MAX_PAYLOAD
    initial_window: int = DEFAULT_INITIAL_WINDOW
    max_streams: int = DEFAULT_MAX_STREAMS
    max_uploads: int = DEFAULT_MAX_UPLOADS
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    features: int = 0
    server: str = "librorum"


class _Session(Generic[_Out]):
    """The parts both roles share: decoding, the outbox, the stream table, windows."""

    def __init__(self) -> None:
        self._decoder = FrameDecoder()
        self._outbox: list[tuple[bytes, _Out]] = []
        self._streams: dict[int, _Stream] = {}
        self.state = State.HANDSHAKE
        self.version = HANDSHAKE_VERSION
        self.max_payload = MIN_MAX_PAYLOAD
        self.features = 0
        #: Set when the connection failed: the reason, for the driver's log.
        self.error: LibrorumError | None = None
        #: Frames decoded so far: a WebSocket driver checks each message held exactly one.
        self.frames_received = 0

    # Outbox ----------------------------------------------------------------------------------

    def frames_to_send(self) -> list[tuple[bytes, _Out]]:
        """Take the frames queued since the last call (send them in order, in one batch)."""
        out, self._outbox = self._outbox, []
        return out

    @property
    def queued_frames(self) -> int:
        """Frames queued and not yet taken by :meth:`frames_to_send`."""
        return len(self._outbox)

    def _queue(self, command: Command, flags: int, session_id: int, payload: _Out) -> None:
        if self.state is State.CLOSED:
            return  # the connection is over: its last frame (an ERROR or a reply) is queued
        # encode_frame_parts, open-coded: the payload may be a FileRegion (only its length
        # goes into the header).
        header = pack_header(command, flags, len(payload), session_id, self.version)
        self._outbox.append((header, payload))

    def _queue_message(self, message: Message, flags: int, session_id: int) -> None:
        command = COMMAND_OF[type(message)][0]
        self._queue(command, flags, session_id, encode_message(message))

    # Receiving -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the connection is over: send what is queued, then close the transport."""
        return self.state is State.CLOSED

    def in_flight(self) -> int:
        """Sessions in flight on this connection."""
        return len(self._streams)

    @property
    def partial_frame(self) -> bool:
        """Whether part of a frame is buffered: the driver's frame deadline is running."""
        return self._decoder.buffered > 0

    def receive_data(self, data: Payload) -> None:
        """Feed bytes from the transport; ``b""`` means the peer closed its side."""
        if self.state is not State.CLOSED:
            self._decoder.receive_data(data)

    def events(self) -> Iterator[Event]:
        """Every event the buffered bytes produce, until more data is needed."""
        while (event := self.next_event()) is not None:
            yield event

    def next_event(self) -> Event | None:
        """The next event, or ``None`` when more data is needed (or the connection ended and
        its :class:`ConnectionEnded` was already returned)."""
        while self.state is not State.CLOSED:
            try:
                frame = self._decoder.next_frame()
                if frame is NEED_DATA:
                    return None
                if frame is CLOSED:
                    self.state = State.CLOSED
                    return ConnectionEnded()
                self.frames_received += 1
                event = self._handle(frame.command, frame.flags, frame.session_id, frame.payload)
            except RemoteProtocolError as exc:
                return self._fail(exc)
            if event is not None:
                return event
        return None

    def _fail(self, exc: LibrorumError) -> ConnectionEnded:
        """A connection error: queue ERROR on session 0 for the peer and close. The frame
        carries a connection-class code (spec 7.1): a request-class cause, such as a
        malformed WINDOW payload, travels as PROTOCOL_ERROR."""
        code = exc.wire_code if is_connection_error(exc.wire_code) else ErrorCode.PROTOCOL_ERROR
        self._queue_message(ErrorMessage(code, _text(exc)), self._error_flags(), 0)
        self.state = State.CLOSED
        self.error = exc
        return ConnectionEnded(exc)

    def fail(self, exc: LibrorumError) -> None:
        """End the connection because of ``exc`` (a local decision, e.g. a deadline): queues
        ERROR on session 0; send it, then close."""
        if self.state is not State.CLOSED:
            self._fail(exc)

    #: REPLY for frames the server sends, 0 for the client's.
    _direction: int

    def _error_flags(self) -> int:
        return self._direction | _END

    def _handle(
        self, command: Command, flags: int, session_id: int, payload: Payload
    ) -> Event | None:
        raise NotImplementedError

    def _decode(self, command: Command, flags: int, payload: Payload) -> Message:
        return decode_payload(payload, message_type(command, flags))

    def _apply_negotiated(self, version: int, max_payload: int) -> None:
        self.version = version
        self.max_payload = max_payload
        self._decoder.set_limits(
            expected_version=version,
            max_payload=max_payload,
            max_control_payload=min(MAX_CONTROL_PAYLOAD, max_payload),
        )
        self.state = State.OPEN

    def _window_update(self, session_id: int, payload: Payload, flags: int) -> Event | None:
        if flags & _END:
            msg = "WINDOW never carries END"
            raise BadFlagsError(msg)
        increment = self._decode(Command.WINDOW, flags, payload)
        assert isinstance(increment, WindowUpdate)
        stream = self._streams.get(session_id)
        if stream is None or stream.command is not self._outbound_data_command:
            return None  # a finished stream, or one that sends no DATA: discarded (spec 3.3)
        stream.send_window += increment.increment
        if stream.send_window > MAX_PAYLOAD_SIZE_FIELD:
            msg = f"window of session {session_id} grew past 2**32-1"
            raise FlowControlError(msg)
        return WindowGranted(session_id, increment.increment)

    def _data(self, session_id: int, flags: int, payload: Payload) -> Event | None:
        stream = self._streams.get(session_id)
        if stream is None:
            return None  # the stream already ended on this side: discard (spec 3.3)
        if (
            stream.peer_done
            or stream.command is not self._inbound_data_command
            or (stream.command is Command.READ and not stream.started)
        ):
            msg = f"DATA on session {session_id}, which takes no more DATA"
            raise RemoteProtocolError(msg)
        if len(payload) > stream.receive_window:
            msg = (
                f"{len(payload)} bytes of DATA on session {session_id} exceed its window "
                f"of {stream.receive_window}"
            )
            raise FlowControlError(msg)
        stream.receive_window -= len(payload)
        end = bool(flags & _END)
        if end:
            stream.peer_done = True
            if stream.command is Command.READ:
                del self._streams[session_id]  # a READ completes with its last DATA
        return DataReceived(session_id, payload, end)

    _inbound_data_command: Command
    _outbound_data_command: Command

    # Sending DATA and credit -----------------------------------------------------------------

    def send_window(self, session_id: int) -> int:
        """Bytes of DATA this side may send on ``session_id`` now (0 if not in flight)."""
        stream = self._streams.get(session_id)
        return 0 if stream is None else stream.send_window

    def receive_window(self, session_id: int) -> int:
        """Bytes of DATA the peer may still send on ``session_id`` (0 if not in flight, or
        once it sent its last DATA): the credit this side has given and not seen used."""
        stream = self._streams.get(session_id)
        return 0 if stream is None or stream.peer_done else stream.receive_window

    def grant(self, session_id: int, increment: int) -> None:
        """Let the peer send ``increment`` more bytes on ``session_id`` (call after consuming
        them). Does nothing for a session that is no longer in flight."""
        stream = self._streams.get(session_id)
        if stream is None or stream.peer_done or increment <= 0:
            return
        stream.receive_window += increment
        self._queue_message(WindowUpdate(increment), self._direction, session_id)


def _text(exc: BaseException) -> str:
    """An error message within MAX_TEXT_BYTES of UTF-8 (spec 9.1), cut on a character."""
    text = str(exc)
    data = text.encode()
    if len(data) <= MAX_TEXT_BYTES:
        return text
    return data[: MAX_TEXT_BYTES - 3].decode(errors="ignore") + "..."


# --- Server ------------------------------------------------------------------------------------


class ServerSession(_Session[Payload | FileRegion]):
    """The server's end of one connection.

    Args:
        limits: what this server offers in its HELLO reply.
        features: feature bits this transport can carry (FD passing only on Unix sockets).
    """

    _inbound_data_command = Command.WRITE
    _outbound_data_command = Command.READ
    _direction = _REPLY

    def __init__(self, limits: ServerLimits = ServerLimits(), *, features: int = 0) -> None:
        super().__init__()
        self.limits = limits
        self._transport_features = features
        self._uploads = 0
        #: Negotiated values (valid once OPEN).
        self.client_window = DEFAULT_INITIAL_WINDOW
        #: WRITE frames with the FD flag decoded so far, whether the request was then accepted
        #: or refused: each owns one descriptor, in order (spec 8.1), so the driver matches
        #: descriptors to frames by this count and closes the refused ones' at once.
        self.fd_frames = 0

    def accept_hello(self, hello: Hello) -> HelloReply:
        """Answer a HELLO: pick the version, negotiate limits, queue the reply, open the
        connection. With no common version, queues ERROR UNSUPPORTED_VERSION and closes
        (``closed`` becomes true).

        Raises:
            LocalProtocolError: not in the handshake state.
        """
        if self.state is not State.HANDSHAKE:
            msg = "HELLO was already answered"
            raise LocalProtocolError(msg)
        common = sorted(set(hello.versions) & set(self.limits.versions))
        if not common:
            offered = ", ".join(map(str, self.limits.versions))
            msg = f"no common protocol version: this server speaks {offered}"
            self._fail(UnsupportedVersionError(msg))
            raise self.error  # type: ignore[misc]  # just set by _fail
        limits = self.limits
        reply = HelloReply(
            version=common[-1],
            max_payload=min(limits.max_payload, hello.max_payload),
            initial_window=limits.initial_window,
            max_streams=limits.max_streams,
            max_uploads=limits.max_uploads,
            max_file_size=limits.max_file_size,
            features=hello.features & limits.features & self._transport_features,
            server=limits.server,
        )
        self._queue_message(reply, _REPLY_END, CONNECTION_SESSION)
        self.features = reply.features
        self.client_window = hello.initial_window
        self._apply_negotiated(reply.version, reply.max_payload)
        return reply

    def _handle(
        self, command: Command, flags: int, session_id: int, payload: Payload
    ) -> Event | None:
        if flags & _REPLY:
            msg = f"{command.name} frame from the client carries the REPLY flag"
            raise RemoteProtocolError(msg)
        if self.state is State.HANDSHAKE:
            if command is not Command.HELLO or session_id != CONNECTION_SESSION:
                msg = f"the first frame must be HELLO on session 0, got {command.name}"
                raise RemoteProtocolError(msg)
            try:
                hello = self._decode(command, flags, payload)
            except MalformedPayloadError as exc:
                raise RemoteProtocolError(str(exc)) from exc  # a bad HELLO ends the connection
            assert isinstance(hello, Hello)
            if hello.max_payload < MIN_MAX_PAYLOAD:
                msg = f"HELLO max_payload {hello.max_payload} is below {MIN_MAX_PAYLOAD}"
                raise RemoteProtocolError(msg)
            return HelloReceived(hello)
        if flags & _FD and (command is not Command.WRITE or not self.features):
            msg = f"an fd may ride only with WRITE when negotiated, not {command.name}"
            raise BadFlagsError(msg)
        if flags & _FD:
            self.fd_frames += 1
        if command in _REQUEST_COMMANDS:
            return self._request(command, flags, session_id, payload)
        if command is Command.DATA:
            return self._data(session_id, flags, payload)
        if command is Command.WINDOW:
            return self._window_update(session_id, payload, flags)
        if command is Command.ERROR and session_id == CONNECTION_SESSION:
            report = self._decode(command, flags, payload)
            assert isinstance(report, ErrorMessage)
            self.state = State.CLOSED
            return ConnectionEnded(_remote_error(report))
        msg = f"a client may not send {command.name} on session {session_id}"
        raise RemoteProtocolError(msg)

    def _request(
        self, command: Command, flags: int, session_id: int, payload: Payload
    ) -> Event | None:
        if session_id == CONNECTION_SESSION:
            msg = f"{command.name} on session 0, which is the connection's"
            raise RemoteProtocolError(msg)
        if session_id in self._streams:
            msg = f"session {session_id} is still in flight"
            raise SessionInUseError(msg)
        end = bool(flags & _END)
        fd = bool(flags & _FD)
        if fd and not end:
            msg = "a WRITE carrying an fd must also carry END"
            raise BadFlagsError(msg)
        if not end and command is not Command.WRITE:
            msg = f"{command.name} is a one-frame request and must carry END"
            raise BadFlagsError(msg)
        try:
            message = self._decode(command, flags, payload)
        except MalformedPayloadError as exc:
            self._refuse(session_id, exc)
            return None
        if self.state is State.DRAINING:
            self._refuse(session_id, UnavailableError("server is shutting down"))
            return None
        if len(self._streams) >= self.limits.max_streams:
            msg = f"{self.limits.max_streams} requests already in flight on this connection"
            self._refuse(session_id, BusyError(msg))
            return None
        stream = _Stream(command)
        if command is Command.WRITE:
            if self._uploads >= self.limits.max_uploads:
                msg = f"{self.limits.max_uploads} uploads already in flight on this connection"
                self._refuse(session_id, BusyError(msg))
                return None
            self._uploads += 1
            stream.peer_done = end
            stream.receive_window = 0 if end else self.limits.initial_window
        elif command is Command.READ:
            stream.send_window = self.client_window
        self._streams[session_id] = stream
        return RequestReceived(session_id, command, message, end, fd)

    def _refuse(self, session_id: int, exc: LibrorumError) -> None:
        """A request error before the request started: ERROR on its session; any DATA the
        client already sent for it will be discarded as for any ended stream."""
        self._queue_message(ErrorMessage(exc.wire_code, _text(exc)), _REPLY_END, session_id)

    def _close_stream(self, session_id: int) -> None:
        stream = self._streams.pop(session_id, None)
        if stream is not None and stream.command is Command.WRITE:
            self._uploads -= 1
        if self.state is State.DRAINING and not self._streams:
            self.state = State.CLOSED

    # Replies -----------------------------------------------------------------------------------

    def reply(self, session_id: int, message: Message, *, end: bool = True) -> None:
        """Queue a reply on ``session_id``; ``end`` (the default) completes the request.

        Raises:
            LocalProtocolError: the session is not in flight, or a non-final reply for a
                request other than READ.
        """
        stream = self._stream(session_id)
        if not end:
            if stream.command is not Command.READ or stream.started:
                msg = "only a READ's first reply may leave the session open"
                raise LocalProtocolError(msg)
            stream.started = True
        self._queue_message(message, _REPLY_END if end else _REPLY, session_id)
        if end:
            self._close_stream(session_id)

    def send_data(self, session_id: int, data: Payload | FileRegion, *, end: bool = False) -> None:
        """Queue DATA of a READ: bytes, or a :class:`FileRegion` the transport sends from its
        file. ``len(data)`` must fit :meth:`send_window` and
        ``max_payload``; ``end`` completes the request.

        Raises:
            LocalProtocolError: not an open READ, or the data exceeds the window or frame size.
        """
        stream = self._stream(session_id)
        if stream.command is not Command.READ or not stream.started:
            msg = f"session {session_id} is not a READ whose reply was sent"
            raise LocalProtocolError(msg)
        if len(data) > stream.send_window or len(data) > self.max_payload:
            msg = (
                f"{len(data)} bytes exceed the window ({stream.send_window}) or the frame "
                f"size ({self.max_payload})"
            )
            raise LocalProtocolError(msg)
        stream.send_window -= len(data)
        self._queue(Command.DATA, _REPLY_END if end else _REPLY, session_id, data)
        if end:
            self._close_stream(session_id)

    def send_error(self, session_id: int, exc: LibrorumError) -> None:
        """End the request on ``session_id`` with an ERROR. Does nothing if the session is no
        longer in flight (a CANCEL or a disconnect got there first)."""
        if session_id not in self._streams:
            return
        self._queue_message(ErrorMessage(exc.wire_code, _text(exc)), _REPLY_END, session_id)
        self._close_stream(session_id)

    def is_in_flight(self, session_id: int) -> bool:
        return session_id in self._streams

    def goaway(self, reason: str, grace_ms: int) -> None:
        """Start draining: queue GOAWAY; new requests are refused with UNAVAILABLE; the
        connection is ``closed`` once the last request in flight completes."""
        if self.state is State.OPEN:
            self._queue_message(GoAway(reason, grace_ms), _REPLY, CONNECTION_SESSION)
            self.state = State.CLOSED if not self._streams else State.DRAINING

    def _stream(self, session_id: int) -> _Stream:
        stream = self._streams.get(session_id)
        if stream is None:
            msg = f"session {session_id} is not in flight"
            raise LocalProtocolError(msg)
        return stream


# --- Client ------------------------------------------------------------------------------------


class ClientSession(_Session[Payload]):
    """The client's end of one connection."""

    _inbound_data_command = Command.READ
    _outbound_data_command = Command.WRITE
    _direction = 0

    def __init__(self) -> None:
        super().__init__()
        self._next_id = 1
        self.server: HelloReply | None = None
        self.read_window = DEFAULT_INITIAL_WINDOW
        self._offered_max_payload = DEFAULT_MAX_PAYLOAD
        #: Set when the server sent GOAWAY.
        self.goaway_received: GoAway | None = None

    def hello(
        self,
        *,
        features: int = int(Feature.NONE),
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        initial_window: int = DEFAULT_INITIAL_WINDOW,
        client: str = "librorum",
    ) -> None:
        """Queue the HELLO that opens the connection."""
        self.read_window = initial_window
        self._offered_max_payload = max_payload
        hello = Hello(SUPPORTED_VERSIONS, max_payload, initial_window, features, client)
        self._queue_message(hello, _END, CONNECTION_SESSION)

    def start_request(self, message: Message, *, end: bool = True, fd: bool = False) -> int:
        """Queue a request and return its session id. A WRITE whose content follows as DATA
        passes ``end=False``.

        Raises:
            LocalProtocolError: the connection is not open, the message is not a request or
                does not fit a control frame (e.g. a path of 64 KiB), the stream or upload cap
                would be exceeded (wait for a request to finish), or ``fd`` is set for
                anything but a WRITE with END on a connection that negotiated FD_PASSING or
                MEMFD.
            UnavailableError: the server sent GOAWAY.
        """
        if self.state is State.DRAINING:
            msg = "the server is shutting down this connection"
            raise UnavailableError(msg)
        if self.state is not State.OPEN or self.server is None:
            msg = f"cannot start a request in state {self.state.value}"
            raise LocalProtocolError(msg)
        command, is_reply = COMMAND_OF[type(message)]
        if is_reply or command not in _REQUEST_COMMANDS:
            msg = f"{type(message).__name__} is not a request"
            raise LocalProtocolError(msg)
        # The server ends the whole connection on a frame over the control limit (spec 3.1,
        # check 5), failing every other request on it too: refuse this one alone, here.
        payload = encode_message(message)
        limit = min(MAX_CONTROL_PAYLOAD, self.max_payload)
        if len(payload) > limit:
            msg = (
                f"the {command.name} request takes {len(payload)} bytes, over the control "
                f"frame limit of {limit}"
            )
            raise LocalProtocolError(msg)
        if len(self._streams) >= self.server.max_streams:
            msg = f"{self.server.max_streams} requests already in flight"
            raise LocalProtocolError(msg)
        if fd and (command is not Command.WRITE or not end or not self.features):
            msg = "a descriptor rides only with a WRITE carrying END, once a fd feature is on"
            raise LocalProtocolError(msg)
        stream = _Stream(command)
        if command is Command.WRITE:
            uploads = sum(1 for s in self._streams.values() if s.command is Command.WRITE)
            if uploads >= self.server.max_uploads:
                msg = f"{self.server.max_uploads} uploads already in flight"
                raise LocalProtocolError(msg)
            stream.send_window = 0 if end else self.server.initial_window
        elif command is Command.READ:
            stream.receive_window = self.read_window
            stream.peer_done = False
        session_id = self._allocate_id()
        self._streams[session_id] = stream
        flags = (_END if end else 0) | (_FD if fd else 0)
        self._queue(command, flags, session_id, payload)
        return session_id

    def _allocate_id(self) -> int:
        session_id = self._next_id
        while session_id in self._streams:
            session_id = session_id % MAX_SESSION_ID + 1
        self._next_id = session_id % MAX_SESSION_ID + 1
        return session_id

    def send_data(self, session_id: int, data: Payload, *, end: bool = False) -> None:
        """Queue DATA of a WRITE. ``len(data)`` must fit :meth:`send_window` and
        ``max_payload``. If the server already ended the request (an early ERROR), the data
        is dropped: the ERROR event tells the outcome.

        Raises:
            LocalProtocolError: the data exceeds the window or the frame size.
        """
        stream = self._streams.get(session_id)
        if stream is None:
            return
        if len(data) > stream.send_window or len(data) > self.max_payload:
            msg = (
                f"{len(data)} bytes exceed the window ({stream.send_window}) or the frame "
                f"size ({self.max_payload})"
            )
            raise LocalProtocolError(msg)
        stream.send_window -= len(data)
        self._queue(Command.DATA, _END if end else 0, session_id, data)
        if end:
            stream.send_window = 0

    def forget(self, session_id: int) -> None:
        """Stop tracking a request locally (after CANCEL's reply, or when abandoning it):
        anything that still arrives for it is discarded."""
        self._streams.pop(session_id, None)

    def _handle(
        self, command: Command, flags: int, session_id: int, payload: Payload
    ) -> Event | None:
        if command is Command.DATA or command is Command.WINDOW:
            if not flags & _REPLY:
                msg = f"{command.name} from the server lacks the REPLY flag"
                raise RemoteProtocolError(msg)
            if command is Command.DATA:
                return self._data(session_id, flags, payload)
            return self._window_update(session_id, payload, flags)
        if session_id == CONNECTION_SESSION:
            return self._connection_frame(command, flags, payload)
        if not flags & _REPLY:
            msg = f"{command.name} from the server lacks the REPLY flag"
            raise RemoteProtocolError(msg)
        stream = self._streams.get(session_id)
        if stream is None:
            return None  # a reply for a request this side forgot (cancelled): discard
        end = bool(flags & _END)
        if command is Command.ERROR:
            report = self._decode(command, flags, payload)
            assert isinstance(report, ErrorMessage)
            self._streams.pop(session_id)
            if is_connection_error(report.code):
                # Spec 7.3: a connection-class code ends the connection wherever it comes.
                self.state = State.CLOSED
                self.error = _remote_error(report)
                return ConnectionEnded(self.error)
            return ErrorReceived(session_id, _remote_error(report))
        if command is not stream.command:
            msg = f"{command.name} reply on session {session_id}, a {stream.command.name}"
            raise RemoteProtocolError(msg)
        message = self._decode(command, flags, payload)
        if end:
            self._streams.pop(session_id)
        elif command is Command.READ and not stream.started:
            stream.started = True
        else:
            msg = f"non-final {command.name} reply on session {session_id}"
            raise RemoteProtocolError(msg)
        return ReplyReceived(session_id, command, message, end)

    def _connection_frame(self, command: Command, flags: int, payload: Payload) -> Event | None:
        if command is Command.HELLO and self.state is State.HANDSHAKE and flags & _REPLY:
            reply = self._decode(command, flags, payload)
            assert isinstance(reply, HelloReply)
            if (
                reply.version not in SUPPORTED_VERSIONS
                or not MIN_MAX_PAYLOAD <= reply.max_payload <= self._offered_max_payload
            ):
                msg = f"server chose version {reply.version} / max_payload {reply.max_payload}"
                raise RemoteProtocolError(msg)
            self.server = reply
            self.features = reply.features
            self._apply_negotiated(reply.version, reply.max_payload)
            return HelloAccepted(reply)
        if command is Command.ERROR:
            report = self._decode(command, flags, payload)
            assert isinstance(report, ErrorMessage)
            self.state = State.CLOSED
            error = _remote_error(report)
            self.error = error
            return ConnectionEnded(error)
        if command is Command.GOAWAY and self.state is State.OPEN and flags == _REPLY:
            goaway = self._decode(command, flags, payload)
            assert isinstance(goaway, GoAway)
            self.goaway_received = goaway
            self.state = State.DRAINING
            return GoAwayReceived(goaway)
        msg = f"unexpected {command.name} on session 0 in state {self.state.value}"
        raise RemoteProtocolError(msg)


def _remote_error(report: ErrorMessage) -> LibrorumError:
    return error_for_code(report.code, report.message)


def is_connection_error(code: int) -> bool:
    """Whether an error code ends the connection (spec 7.1)."""
    return error_class(code) is ErrorClass.CONNECTION
