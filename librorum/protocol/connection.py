"""The machinery both ends of an LBRU connection share (spec 3, 4 and 6): decoding, the
outbox, the table of streams in flight, credit windows, and failing the connection.

:class:`BaseSession` is the base of :class:`~librorum.protocol.session.ServerSession` and
:class:`~librorum.protocol.session.ClientSession`, which add what each role sends and accepts;
import those (and :class:`State`) from :mod:`librorum.protocol.session`. Sans-I/O: no clock,
no sockets, no trio.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Generic, TypeVar

from librorum.errors import (
    BadFlagsError,
    FlowControlError,
    LibrorumError,
    LocalProtocolError,
    RemoteProtocolError,
    error_for_code,
)
from librorum.protocol.constants import (
    FLAG_END,
    HANDSHAKE_VERSION,
    MAX_CONTROL_PAYLOAD,
    MAX_PAYLOAD_SIZE_FIELD,
    MAX_TEXT_BYTES,
    MIN_MAX_PAYLOAD,
    Command,
    ErrorClass,
    ErrorCode,
    error_class,
)
from librorum.protocol.converter import decode_payload, encode_message, message_type
from librorum.protocol.events import (
    ConnectionEnded,
    DataReceived,
    Event,
    WindowGranted,
)
from librorum.protocol.framing import CLOSED, NEED_DATA, FileRegion, FrameDecoder, Payload
from librorum.protocol.header import pack_header
from librorum.protocol.messages import (
    COMMAND_OF,
    ErrorMessage,
    Message,
    WindowUpdate,
)
from librorum.protocol.stream import Stream, StreamInput, StreamState, next_state

#: One frame, as (header, payload) parts for a vectored write.
FrameParts = tuple[bytes, Payload]
#: What one side's outbox holds beyond in-memory payloads (the server's: file regions).
_Out = TypeVar("_Out", Payload, Payload | FileRegion)


class State(enum.Enum):
    """Where a connection is (spec 4)."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    #: GOAWAY sent or received: requests in flight finish, no new ones start.
    DRAINING = "draining"
    CLOSED = "closed"


class BaseSession(Generic[_Out]):
    """The parts both roles share: decoding, the outbox, the stream table, windows."""

    def __init__(self) -> None:
        self._decoder = FrameDecoder()
        self._outbox: list[tuple[bytes, _Out]] = []
        self._streams: dict[int, Stream] = {}
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
        self._queue_message(ErrorMessage(code, error_text(exc)), self._error_flags(), 0)
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
        return self._direction | FLAG_END

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
        if flags & FLAG_END:
            msg = "WINDOW never carries END"
            raise BadFlagsError(msg)
        increment = self._decode(Command.WINDOW, flags, payload)
        assert isinstance(increment, WindowUpdate)
        stream = self._streams.get(session_id)
        if stream is None or stream.command not in self._outbound_data_commands:
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
        end = bool(flags & FLAG_END)
        state = next_state(stream.state, self._inbound_data[end])
        if state is None:
            msg = f"DATA on session {session_id}, which takes no more DATA"
            raise RemoteProtocolError(msg)
        if len(payload) > stream.receive_window:
            msg = (
                f"{len(payload)} bytes of DATA on session {session_id} exceed its window "
                f"of {stream.receive_window}"
            )
            raise FlowControlError(msg)
        stream.receive_window -= len(payload)
        stream.state = state
        if state is StreamState.CLOSED:
            del self._streams[session_id]  # a READ completes with its last DATA
        return DataReceived(session_id, payload, end)

    #: The inputs DATA from the peer is, without and with END (indexed by ``end``).
    _inbound_data: tuple[StreamInput, StreamInput]
    #: The states in which the peer may still send DATA (and credit for it counts).
    _peer_data_states: frozenset[StreamState]
    #: The requests whose DATA this side sends (a WINDOW for any other is ignored).
    _outbound_data_commands: frozenset[Command]

    def _peer_done(self, stream: Stream) -> bool:
        """Whether the peer sends no more DATA on ``stream`` (it sent END, or never does)."""
        return stream.state not in self._peer_data_states

    # Sending DATA and credit -----------------------------------------------------------------

    def send_window(self, session_id: int) -> int:
        """Bytes of DATA this side may send on ``session_id`` now (0 if not in flight)."""
        stream = self._streams.get(session_id)
        return 0 if stream is None else stream.send_window

    def receive_window(self, session_id: int) -> int:
        """Bytes of DATA the peer may still send on ``session_id`` (0 if not in flight, or
        once it sent its last DATA): the credit this side has given and not seen used."""
        stream = self._streams.get(session_id)
        return 0 if stream is None or self._peer_done(stream) else stream.receive_window

    def grant(self, session_id: int, increment: int) -> None:
        """Let the peer send ``increment`` more bytes on ``session_id`` (call after consuming
        them). Does nothing for a session that is no longer in flight."""
        stream = self._streams.get(session_id)
        if stream is None or self._peer_done(stream) or increment <= 0:
            return
        stream.receive_window += increment
        self._queue_message(WindowUpdate(increment), self._direction, session_id)

    def _check_send_window(self, stream: Stream, size: int) -> None:
        if size > stream.send_window or size > self.max_payload:
            msg = (
                f"{size} bytes exceed the window ({stream.send_window}) or the frame "
                f"size ({self.max_payload})"
            )
            raise LocalProtocolError(msg)


def error_text(exc: BaseException) -> str:
    """An error message within MAX_TEXT_BYTES of UTF-8 (spec 9.1), cut on a character."""
    text = str(exc)
    data = text.encode()
    if len(data) <= MAX_TEXT_BYTES:
        return text
    return data[: MAX_TEXT_BYTES - 3].decode(errors="ignore") + "..."


def remote_error(report: ErrorMessage) -> LibrorumError:
    return error_for_code(report.code, report.message)


def is_connection_error(code: int) -> bool:
    """Whether an error code ends the connection (spec 7.1)."""
    return error_class(code) is ErrorClass.CONNECTION
