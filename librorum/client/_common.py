"""What the async and the sync client share: limits, the per-request state fed by events,
event routing, error copies and the reconnect schedule.

Nothing here does I/O or knows about trio: both clients drive the same sans-I/O
:class:`~librorum.protocol.session.ClientSession` and route its events through
:func:`route_event` into :class:`RequestState` objects, one per session in flight.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, Generic, TypeAlias, TypeVar

from librorum import limits
from librorum.errors import (
    ConnectionClosed,
    LibrorumError,
    RemoteProtocolError,
    UnavailableError,
)
from librorum.protocol.constants import Command
from librorum.protocol.framing import Payload
from librorum.protocol.messages import HelloReply, Message
from librorum.protocol.session import (
    ClientSession,
    ConnectionEnded,
    DataReceived,
    ErrorReceived,
    Event,
    GoAwayReceived,
    HelloAccepted,
    ReplyReceived,
    State,
    WindowGranted,
)

# --- Limits: every one is a keyword argument of the clients with these defaults. ---------------

#: Seconds a request waits for the server to make progress (a reply, a window grant, the next
#: chunk of a read) before it gives up with ConnectionTimeoutError. Also bounds each send.
DEFAULT_TIMEOUT: Final = 30.0
#: Seconds to open a connection and complete the HELLO exchange.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
#: Reconnect backoff: the first retry is immediate, then this delay doubling up to the maximum.
RECONNECT_INITIAL_DELAY: Final = 0.05
RECONNECT_MAX_DELAY: Final = 2.0
#: Connection attempts per reconnect, and the time after which no new attempt starts.
RECONNECT_ATTEMPTS: Final = 8
RECONNECT_DEADLINE: Final = 15.0
#: After a failed send, how long the client keeps reading what the server sent before it
#: closed (an early ERROR, a GOAWAY refusal) before giving the connection up.
CLOSE_TIMEOUT: Final = 2.0
#: Times an interrupted resumable upload is resumed before the error is raised.
DEFAULT_RESUME_ATTEMPTS: Final = 5
#: Bytes of DATA the server may send on one READ before the client grants more; the client
#: grants credit back once half of it is consumed, so the pipe stays full. It is also what a
#: client may buffer per READ (16 MiB per open read stream). Larger than the protocol's
#: default (4 MiB): with 4 MiB socket buffers the server then never waits for a grant's round
#: trip while the client still has data to consume (measured: about 1.2-1.5x on local
#: downloads; 32 and 64 MiB gained nothing more).
DEFAULT_READ_WINDOW: Final = 16 << 20
#: Bytes per receive call (one maximal frame), and SO_SNDBUF / SO_RCVBUF of Unix sockets:
#: the daemon's values, so both ends of a connection agree.
RECEIVE_SIZE: Final = limits.RECEIVE_SIZE
SOCKET_BUFFER_SIZE: Final = limits.UDS_SOCKET_BUFFER
#: Small DATA payloads are merged into one buffer while queued, so that the queue of a READ
#: holds at most about window / COALESCE_BELOW items however small the server's frames are.
COALESCE_BELOW: Final = 64 << 10
#: Times a request is sent again on a new connection after a GOAWAY refused it, or after the
#: connection it waited for became unusable.
ROUTE_ATTEMPTS: Final = 3
#: Environment variables that choose the endpoint when the caller does not.
ENV_SOCKET: Final = "LIBRORUM_SOCKET"
ENV_URL: Final = "LIBRORUM_URL"
ENV_TOKEN_FILE: Final = "LIBRORUM_TOKEN_FILE"

#: ``progress(done_bytes, total_bytes_or_None)``, called after each chunk; an exception it
#: raises abandons the request (which is then cancelled on the server).
ProgressCallback: TypeAlias = Callable[[int, "int | None"], object]
#: A chunk handed to a reader: a buffer the caller owns.
Chunk: TypeAlias = bytes | bytearray

M = TypeVar("M", bound=Message)
S = TypeVar("S", bound="RequestState")


def backoff_delays(
    *,
    attempts: int = RECONNECT_ATTEMPTS,
    initial: float = RECONNECT_INITIAL_DELAY,
    maximum: float = RECONNECT_MAX_DELAY,
) -> Iterator[float]:
    """Delays before each connection attempt: 0 first, then ``initial`` doubling up to
    ``maximum``; ``attempts`` values in all."""
    delay = initial
    for attempt in range(attempts):
        if attempt == 0:
            yield 0.0
            continue
        yield delay
        delay = min(delay * 2, maximum)


def written_in_place(target: Path) -> bool:
    """Whether a download to ``target`` goes straight into it rather than into a temporary
    file renamed over it: a device, a FIFO or a socket that exists (``/dev/null``, a pipe)
    is something to write to, not a file to replace."""
    try:
        mode = os.stat(target).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def copy_error(exc: LibrorumError) -> LibrorumError:
    """A fresh instance of ``exc`` for one waiter, chained to the original: one exception
    object raised in several tasks would collect all their tracebacks."""
    new = type(exc)(exc.message, wire_code=exc.wire_code)
    new.__cause__ = exc
    return new


def lost(exc: LibrorumError, command: Command, endpoint: str) -> LibrorumError:
    """The error a request in flight gets when its connection ends with ``exc``."""
    if isinstance(exc, ConnectionClosed):
        msg = (
            f"connection to {endpoint} lost before the {command.name} reply arrived; "
            f"its outcome is unknown ({exc.message})"
        )
        new = ConnectionClosed(msg)
        new.__cause__ = exc
        return new
    return copy_error(exc)


def expect(message: Message | None, cls: type[M]) -> M:
    """Narrow a reply to the class its request expects.

    Raises:
        RemoteProtocolError: the reply is missing or of another class (a server bug: the
            session already checked that the command matches).
    """
    if not isinstance(message, cls):
        msg = f"expected a {cls.__name__} reply, got {type(message).__name__}"
        raise RemoteProtocolError(msg)
    return message


class ConnectionState(Generic[S]):
    """What both drivers' connections do alike, from their session and their requests.

    A subclass sets ``session``, ``endpoint``, ``requests`` (by session id), ``error`` (the
    connection's end), ``send_error`` (a send failed) and ``draining`` (GOAWAY received).
    """

    session: ClientSession
    endpoint: object
    requests: dict[int, S]
    error: LibrorumError | None
    send_error: LibrorumError | None
    draining: bool

    def end_requests(self, exc: LibrorumError) -> bool:
        """Record ``exc`` as the connection's end and end every request in flight with it.
        False when the connection had ended already: the first reason wins."""
        if self.error is not None:
            return False
        self.error = exc
        endpoint = str(self.endpoint)
        for request in self.requests.values():
            request.on_error(lost(exc, request.command, endpoint))
        self.requests.clear()
        return True

    @property
    def usable(self) -> bool:
        """Whether a new request may start here."""
        return (
            self.error is None
            and self.send_error is None
            and not self.draining
            and self.session.state is State.OPEN
        )

    @property
    def max_payload(self) -> int:
        return self.session.max_payload


class RequestState:
    """What one request in flight has received so far. The reader feeds it; the request's
    owner consumes it. Pure state: the async client adds a wake-up on top (:meth:`changed`).

    Memory is bounded: DATA queued here never exceeds the READ window the client granted
    (the session ends the connection with FLOW_CONTROL otherwise), and small payloads are
    merged (:data:`COALESCE_BELOW`) so the number of queued items is bounded too.
    """

    __slots__ = (
        "_tail",
        "buffered",
        "chunks",
        "command",
        "data_ended",
        "error",
        "finished",
        "reply",
        "session_id",
    )

    def __init__(self, session_id: int, command: Command) -> None:
        self.session_id = session_id
        self.command = command
        #: The first (READ) or only reply.
        self.reply: Message | None = None
        #: Set when the request ended with an error (ERROR frame or lost connection).
        self.error: LibrorumError | None = None
        #: No more frames will arrive for this request.
        self.finished = False
        #: The last DATA (or a READ reply with END) arrived.
        self.data_ended = False
        self.chunks: deque[Chunk] = deque()
        #: Bytes in ``chunks``.
        self.buffered = 0
        # A bytearray at the end of ``chunks`` that small payloads are appended to.
        self._tail: bytearray | None = None

    def changed(self) -> None:
        """Hook: something arrived. The async client wakes the owner here."""

    def result(self, cls: type[M]) -> M:
        """The reply, narrowed to ``cls``.

        Raises:
            LibrorumError: the request's error (the exception class of the ERROR's code, or
                ConnectionClosed / the connection error when the connection ended).
        """
        if self.error is not None:
            raise self.error
        return expect(self.reply, cls)

    def on_reply(self, message: Message, end: bool) -> None:
        self.reply = message
        if end:
            self.finished = True
            self.data_ended = True
        self.changed()

    def on_data(self, data: Payload, end: bool) -> None:
        size = len(data)
        if size:
            tail = self._tail
            if size < COALESCE_BELOW and tail is not None and len(tail) < COALESCE_BELOW:
                tail += data
            elif size < COALESCE_BELOW:
                # Our own buffer, so later small payloads can be appended to it.
                tail = bytearray(data)
                self.chunks.append(tail)
                self._tail = tail
            else:
                # Large payloads arrive in a buffer of their own: hand it over, no copy.
                self.chunks.append(data if not isinstance(data, memoryview) else bytes(data))
                self._tail = None
            self.buffered += size
        if end:
            self.data_ended = True
            self.finished = True
        self.changed()

    def on_error(self, exc: LibrorumError) -> None:
        if not self.finished:
            self.error = exc
            self.finished = True
        self.changed()

    def take_chunk(self) -> Chunk | None:
        """The oldest queued chunk, or ``None`` if nothing is queued."""
        if not self.chunks:
            return None
        chunk = self.chunks.popleft()
        if chunk is self._tail:
            self._tail = None
        self.buffered -= len(chunk)
        return chunk


#: What :func:`route_event` tells the driver about the connection.
GOAWAY: Final = "goaway"


def refused_by_goaway(error: LibrorumError | None, *, draining: bool) -> bool:
    """Whether a request that ended with ``error`` on a connection that is ``draining`` was
    refused because the server is going away (GOAWAY): such a request had no effect and may
    be sent again on a new connection (spec 5.15)."""
    return isinstance(error, UnavailableError) and draining


class RefusedByGoAway(Exception):  # noqa: N818 - an internal signal, never escapes the client
    """A WRITE was refused by a draining server before it started; ``error`` is the refusal,
    raised if the WRITE cannot be sent again."""

    def __init__(self, error: LibrorumError) -> None:
        super().__init__(str(error))
        self.error = error


def route_event(event: Event, requests: dict[int, S]) -> ConnectionEnded | str | None:
    """Hand one session event to the request it belongs to.

    Finished requests are removed from ``requests``. Returns the :class:`ConnectionEnded`
    event when the connection is over, :data:`GOAWAY` when the server started draining,
    otherwise ``None``. Events for sessions nobody waits for are dropped (the session
    already discards frames of forgotten sessions; this covers the rest).
    """
    if isinstance(event, DataReceived):
        state = requests.get(event.session_id)
        if state is not None:
            state.on_data(event.data, event.end)
            if event.end:
                del requests[event.session_id]
    elif isinstance(event, ReplyReceived):
        state = requests.get(event.session_id)
        if state is not None:
            state.on_reply(event.message, event.end)
            if event.end:
                del requests[event.session_id]
    elif isinstance(event, WindowGranted):
        state = requests.get(event.session_id)
        if state is not None:
            state.changed()
    elif isinstance(event, ErrorReceived):
        state = requests.pop(event.session_id, None)
        if state is not None:
            state.on_error(event.exception)
    elif isinstance(event, ConnectionEnded):
        return event
    elif isinstance(event, GoAwayReceived):
        return GOAWAY
    return None


def ending_error(ended: ConnectionEnded, endpoint: str, *, eof: bool) -> LibrorumError:
    """What the requests in flight are told when the connection ends with ``ended``.

    A server that vanished in the middle of a frame (killed while writing a DATA frame, say)
    breaks spec 2.1 only because it is gone: for the caller that is a lost connection
    (ConnectionClosed, which resumable uploads resume after), not a protocol violation.
    ``eof`` says the end came with the end of the stream.
    """
    error = ended.error
    if error is None:
        return ConnectionClosed(f"{endpoint} closed the connection")
    if eof and isinstance(error, RemoteProtocolError):
        closed = ConnectionClosed(f"{endpoint} closed the connection in the middle of a frame")
        closed.__cause__ = error
        return closed
    return error


def hello_outcome(session: ClientSession, endpoint: str) -> HelloReply | None:
    """The outcome of the HELLO exchange, from the events ``session`` has queued: the
    server's reply, or None while more bytes are needed.

    Raises:
        LibrorumError: the server refused the connection (its ERROR's class), or
            ConnectionClosed when it closed without a word.
    """
    while (event := session.next_event()) is not None:
        if isinstance(event, HelloAccepted):
            return event.reply
        if isinstance(event, ConnectionEnded):
            if event.error is not None:
                raise event.error
            msg = f"{endpoint} closed the connection during the handshake"
            raise ConnectionClosed(msg)
    return None
