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

The parts, each in its own module: the events (:mod:`librorum.protocol.events`, re-exported
here), each request's state machine (:mod:`librorum.protocol.stream`: a transitions table), and
the machinery both roles share (:mod:`librorum.protocol.connection`). This module holds the two
roles and what each may send and accept.
"""

from __future__ import annotations

from typing import Final

import attrs

from librorum.errors import (
    BadFlagsError,
    BusyError,
    LibrorumError,
    LocalProtocolError,
    MalformedPayloadError,
    RemoteProtocolError,
    SessionInUseError,
    UnavailableError,
    UnsupportedVersionError,
)
from librorum.protocol.connection import (
    BaseSession,
    FrameParts as FrameParts,
    State as State,
    error_text,
    is_connection_error as is_connection_error,
    remote_error,
)
from librorum.protocol.constants import (
    CONNECTION_SESSION,
    DEFAULT_INITIAL_WINDOW,
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MAX_STREAMS,
    DEFAULT_MAX_UPLOADS,
    FLAG_END,
    FLAG_FD,
    FLAG_REPLY,
    MAX_CONTROL_PAYLOAD,
    MAX_SESSION_ID,
    MIN_MAX_PAYLOAD,
    REQUEST_COMMANDS,
    STREAMED_REPLY_COMMANDS,
    SUPPORTED_VERSIONS,
    Command,
    Feature,
)
from librorum.protocol.converter import encode_message
from librorum.protocol.events import (
    ConnectionEnded as ConnectionEnded,
    DataReceived as DataReceived,
    ErrorReceived as ErrorReceived,
    Event as Event,
    GoAwayReceived as GoAwayReceived,
    HelloAccepted as HelloAccepted,
    HelloReceived as HelloReceived,
    ReplyReceived as ReplyReceived,
    RequestReceived as RequestReceived,
    WindowGranted as WindowGranted,
)
from librorum.protocol.framing import FileRegion, Payload
from librorum.protocol.messages import (
    COMMAND_OF,
    PROGRESS_REQUESTS,
    ErrorMessage,
    GoAway,
    Hello,
    HelloReply,
    Message,
)
from librorum.protocol.stream import Stream, StreamInput, StreamState, next_state

_REPLY_END: Final = FLAG_REPLY | FLAG_END


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


# --- Server ------------------------------------------------------------------------------------


class ServerSession(BaseSession[Payload | FileRegion]):
    """The server's end of one connection.

    Args:
        limits: what this server offers in its HELLO reply.
        features: feature bits this transport can carry (FD passing only on Unix sockets).
    """

    _inbound_data = (StreamInput.DATA, StreamInput.DATA_END)
    _peer_data_states = frozenset({StreamState.OPEN})
    _outbound_data_commands = STREAMED_REPLY_COMMANDS
    _direction = FLAG_REPLY

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
        if flags & FLAG_REPLY:
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
        if flags & FLAG_FD and (command is not Command.WRITE or not self.features):
            msg = f"an fd may ride only with WRITE when negotiated, not {command.name}"
            raise BadFlagsError(msg)
        if flags & FLAG_FD:
            self.fd_frames += 1
        if command in REQUEST_COMMANDS:
            return self._request(command, flags, session_id, payload)
        if command is Command.DATA:
            return self._data(session_id, flags, payload)
        if command is Command.WINDOW:
            return self._window_update(session_id, payload, flags)
        if command is Command.ERROR and session_id == CONNECTION_SESSION:
            report = self._decode(command, flags, payload)
            assert isinstance(report, ErrorMessage)
            self.state = State.CLOSED
            return ConnectionEnded(remote_error(report))
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
        end = bool(flags & FLAG_END)
        fd = bool(flags & FLAG_FD)
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
        stream = Stream.open(command, end=end)
        if command is Command.WRITE:
            if self._uploads >= self.limits.max_uploads:
                msg = f"{self.limits.max_uploads} uploads already in flight on this connection"
                self._refuse(session_id, BusyError(msg))
                return None
            self._uploads += 1
            stream.receive_window = 0 if end else self.limits.initial_window
        elif command in STREAMED_REPLY_COMMANDS:
            stream.send_window = self.client_window
        self._streams[session_id] = stream
        return RequestReceived(session_id, command, message, end, fd)

    def _refuse(self, session_id: int, exc: LibrorumError) -> None:
        """A request error before the request started: ERROR on its session; any DATA the
        client already sent for it will be discarded as for any ended stream."""
        self._queue_message(ErrorMessage(exc.wire_code, error_text(exc)), _REPLY_END, session_id)

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
            LocalProtocolError: the session is not in flight, or a non-final reply where the
                command has none (only the first reply of a READ or a LOG_STREAM, and the
                progress replies of an FSCK, leave the session open).
        """
        stream = self._stream(session_id)
        state = next_state(stream.state, _reply_input(stream.command, end))
        if state is None:
            msg = (
                "only a READ's first reply (or LOG_STREAM's) or a progress reply may leave the "
                "session open"
            )
            raise LocalProtocolError(msg)
        stream.state = state
        self._queue_message(message, _REPLY_END if end else FLAG_REPLY, session_id)
        if state is StreamState.CLOSED:
            self._close_stream(session_id)

    def send_data(self, session_id: int, data: Payload | FileRegion, *, end: bool = False) -> None:
        """Queue DATA of a READ: bytes, or a :class:`FileRegion` the transport sends from its
        file. ``len(data)`` must fit :meth:`send_window` and
        ``max_payload``; ``end`` completes the request.

        Raises:
            LocalProtocolError: not an open READ, or the data exceeds the window or frame size.
        """
        stream = self._stream(session_id)
        state = next_state(
            stream.state, StreamInput.REPLY_DATA_END if end else StreamInput.REPLY_DATA
        )
        if state is None:
            msg = f"session {session_id} is not a READ whose reply was sent"
            raise LocalProtocolError(msg)
        self._check_send_window(stream, len(data))
        stream.send_window -= len(data)
        stream.state = state
        self._queue(Command.DATA, _REPLY_END if end else FLAG_REPLY, session_id, data)
        if state is StreamState.CLOSED:
            self._close_stream(session_id)

    def send_error(self, session_id: int, exc: LibrorumError) -> None:
        """End the request on ``session_id`` with an ERROR. Does nothing if the session is no
        longer in flight (a CANCEL or a disconnect got there first)."""
        if session_id not in self._streams:
            return
        self._queue_message(ErrorMessage(exc.wire_code, error_text(exc)), _REPLY_END, session_id)
        self._close_stream(session_id)

    def is_in_flight(self, session_id: int) -> bool:
        return session_id in self._streams

    def goaway(self, reason: str, grace_ms: int) -> None:
        """Start draining: queue GOAWAY; new requests are refused with UNAVAILABLE; the
        connection is ``closed`` once the last request in flight completes."""
        if self.state is State.OPEN:
            self._queue_message(GoAway(reason, grace_ms), FLAG_REPLY, CONNECTION_SESSION)
            self.state = State.CLOSED if not self._streams else State.DRAINING

    def _stream(self, session_id: int) -> Stream:
        stream = self._streams.get(session_id)
        if stream is None:
            msg = f"session {session_id} is not in flight"
            raise LocalProtocolError(msg)
        return stream


# --- Client ------------------------------------------------------------------------------------


class ClientSession(BaseSession[Payload]):
    """The client's end of one connection."""

    _inbound_data = (StreamInput.REPLY_DATA, StreamInput.REPLY_DATA_END)
    _peer_data_states = frozenset({StreamState.READ_PENDING, StreamState.STREAMING})
    _outbound_data_commands = frozenset({Command.WRITE})
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
        self._queue_message(hello, FLAG_END, CONNECTION_SESSION)

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
        if is_reply or command not in REQUEST_COMMANDS:
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
        stream = Stream.open(command, end=end)
        if command is Command.WRITE:
            uploads = sum(1 for s in self._streams.values() if s.command is Command.WRITE)
            if uploads >= self.server.max_uploads:
                msg = f"{self.server.max_uploads} uploads already in flight"
                raise LocalProtocolError(msg)
            stream.send_window = 0 if end else self.server.initial_window
        elif command in STREAMED_REPLY_COMMANDS:
            stream.receive_window = self.read_window
        session_id = self._allocate_id()
        self._streams[session_id] = stream
        flags = (FLAG_END if end else 0) | (FLAG_FD if fd else 0)
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
            LocalProtocolError: the data exceeds the window or the frame size, or the session
                is not a WRITE whose content is still open (it sent END, or never takes DATA).
        """
        stream = self._streams.get(session_id)
        if stream is None:
            return
        self._check_send_window(stream, len(data))
        state = next_state(stream.state, StreamInput.DATA_END if end else StreamInput.DATA)
        if state is None:
            msg = f"session {session_id} is not a WRITE whose content is still open"
            raise LocalProtocolError(msg)
        stream.send_window -= len(data)
        stream.state = state
        self._queue(Command.DATA, FLAG_END if end else 0, session_id, data)
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
            if not flags & FLAG_REPLY:
                msg = f"{command.name} from the server lacks the REPLY flag"
                raise RemoteProtocolError(msg)
            if command is Command.DATA:
                return self._data(session_id, flags, payload)
            return self._window_update(session_id, payload, flags)
        if session_id == CONNECTION_SESSION:
            return self._connection_frame(command, flags, payload)
        if not flags & FLAG_REPLY:
            msg = f"{command.name} from the server lacks the REPLY flag"
            raise RemoteProtocolError(msg)
        stream = self._streams.get(session_id)
        if stream is None:
            return None  # a reply for a request this side forgot (cancelled): discard
        end = bool(flags & FLAG_END)
        if command is Command.ERROR:
            report = self._decode(command, flags, payload)
            assert isinstance(report, ErrorMessage)
            self._streams.pop(session_id)
            if is_connection_error(report.code):
                # Spec 7.3: a connection-class code ends the connection wherever it comes.
                self.state = State.CLOSED
                self.error = remote_error(report)
                return ConnectionEnded(self.error)
            return ErrorReceived(session_id, remote_error(report))
        if command is not stream.command:
            msg = f"{command.name} reply on session {session_id}, a {stream.command.name}"
            raise RemoteProtocolError(msg)
        message = self._decode(command, flags, payload)
        state = next_state(stream.state, _reply_input(stream.command, end))
        if state is None:
            msg = f"non-final {command.name} reply on session {session_id}"
            raise RemoteProtocolError(msg)
        stream.state = state
        if state is StreamState.CLOSED:
            self._streams.pop(session_id)
        return ReplyReceived(session_id, command, message, end)

    def _connection_frame(self, command: Command, flags: int, payload: Payload) -> Event | None:
        if command is Command.HELLO and self.state is State.HANDSHAKE and flags & FLAG_REPLY:
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
            error = remote_error(report)
            self.error = error
            return ConnectionEnded(error)
        if command is Command.GOAWAY and self.state is State.OPEN and flags == FLAG_REPLY:
            goaway = self._decode(command, flags, payload)
            assert isinstance(goaway, GoAway)
            self.goaway_received = goaway
            self.state = State.DRAINING
            return GoAwayReceived(goaway)
        msg = f"unexpected {command.name} on session 0 in state {self.state.value}"
        raise RemoteProtocolError(msg)


def _reply_input(command: Command, end: bool) -> StreamInput:
    """What a reply frame is to the stream: final (END), a progress reply of a request that
    takes them (spec 5.20), or a READ's first reply."""
    if end:
        return StreamInput.FINAL_REPLY
    if command in PROGRESS_REQUESTS:
        return StreamInput.PROGRESS_REPLY
    return StreamInput.FIRST_REPLY
