"""The life of one request stream (spec 6.1), as a table you can read the spec off.

A stream is one request on its session id. Both ends of a connection keep one
:class:`Stream` per request in flight, and move it through the same states on the same
frames; only which frames each end sends and which it receives differ. The table
:data:`TRANSITIONS` maps (state, input) to the next state, in the manner of h2's
``h2/stream.py``. A pair that is not in the table is a frame that does not fit the stream's
state: the session raises the protocol error that the spec names for it, a
:class:`~librorum.errors.RemoteProtocolError` when the peer sent the frame and a
:class:`~librorum.errors.LocalProtocolError` when this side tried to.

The spec's states map to these as follows: "open" is :attr:`StreamState.OPEN`;
"half-closed" is :attr:`StreamState.HALF_CLOSED`, or for a READ
:attr:`StreamState.READ_PENDING` and then :attr:`StreamState.STREAMING` (its first reply
opens the DATA that follows); "idle" and "closed" are a session id with no stream in the
session's table.

Pure data and one function: no I/O, no clock.
"""

from __future__ import annotations

import enum
import types
from typing import Final

import attrs

from librorum.protocol.constants import STREAMED_REPLY_COMMANDS, Command


class StreamState(enum.Enum):
    """Where one request stream is (spec 6.1)."""

    # Members are singletons compared by identity, so identity hashing agrees with equality;
    # Enum's own __hash__ hashes the name in Python code, which doubled the cost of a table
    # lookup on every frame.
    __hash__ = object.__hash__

    #: The session id is not in flight (the state before the request frame).
    IDLE = "idle"
    #: A WRITE whose DATA still flows from the client (no END yet).
    OPEN = "open"
    #: The client sent its last frame; the server's final reply or ERROR is still to come.
    HALF_CLOSED = "half-closed"
    #: A READ whose request was sent: the server's first reply is still to come.
    READ_PENDING = "read-pending"
    #: A READ whose first reply was sent: DATA|REPLY frames follow until one carries END.
    STREAMING = "streaming"
    #: The final frame went: the session id is idle again.
    CLOSED = "closed"


class StreamInput(enum.Enum):
    """The frames that move a stream, whichever side sends them."""

    __hash__ = object.__hash__  # as StreamState's

    #: A request frame with END (every request but a WRITE whose content follows).
    REQUEST_END = "request-end"
    #: A WRITE without END: its content follows as DATA.
    WRITE_OPEN = "write-open"
    #: A READ request.
    READ_REQUEST = "read-request"
    #: DATA from the client (a WRITE's content), without and with END.
    DATA = "data"
    DATA_END = "data-end"
    #: A READ's first reply, without END: its DATA follows.
    FIRST_REPLY = "first-reply"
    #: DATA|REPLY from the server (a READ's content), without and with END.
    REPLY_DATA = "reply-data"
    REPLY_DATA_END = "reply-data-end"
    #: A reply with END, or an ERROR: the server's final frame for the request.
    FINAL_REPLY = "final-reply"
    #: A progress reply, without END, of a request that takes them (FSCK, spec 5.20).
    PROGRESS_REPLY = "progress-reply"


_S = StreamState
_I = StreamInput

#: (state, input) -> next state. A pair missing here is a frame the state does not allow.
TRANSITIONS: Final[types.MappingProxyType[tuple[StreamState, StreamInput], StreamState]] = (
    types.MappingProxyType(
        {
            # The request opens the stream; only a WRITE may leave it open for DATA.
            (_S.IDLE, _I.REQUEST_END): _S.HALF_CLOSED,
            (_S.IDLE, _I.WRITE_OPEN): _S.OPEN,
            (_S.IDLE, _I.READ_REQUEST): _S.READ_PENDING,
            # A WRITE's content, until the DATA that carries END.
            (_S.OPEN, _I.DATA): _S.OPEN,
            (_S.OPEN, _I.DATA_END): _S.HALF_CLOSED,
            # A READ: one first reply, then its content until the DATA|REPLY with END.
            (_S.READ_PENDING, _I.FIRST_REPLY): _S.STREAMING,
            (_S.STREAMING, _I.REPLY_DATA): _S.STREAMING,
            (_S.STREAMING, _I.REPLY_DATA_END): _S.CLOSED,
            # The final reply or an ERROR ends the request in any state: an early ERROR ends
            # an upload whose DATA still flows (spec 6.3), and a READ may end with a final
            # reply (length 0) or an ERROR at any point.
            (_S.OPEN, _I.FINAL_REPLY): _S.CLOSED,
            (_S.HALF_CLOSED, _I.FINAL_REPLY): _S.CLOSED,
            (_S.READ_PENDING, _I.FINAL_REPLY): _S.CLOSED,
            (_S.STREAMING, _I.FINAL_REPLY): _S.CLOSED,
            # Progress replies leave the request awaiting its final reply.
            (_S.HALF_CLOSED, _I.PROGRESS_REPLY): _S.HALF_CLOSED,
        }
    )
)


def next_state(state: StreamState, event: StreamInput) -> StreamState | None:
    """The state ``event`` moves a stream in ``state`` to, or ``None`` if the state does not
    allow it (the caller raises the error that fits who sent the frame)."""
    return TRANSITIONS.get((state, event))


@attrs.define
class Stream:
    """One request in flight, as either side tracks it."""

    command: Command
    #: Where the request is; a stream built from its command alone awaits its final reply.
    state: StreamState = StreamState.HALF_CLOSED
    #: Bytes of DATA this side may still send.
    send_window: int = 0
    #: Bytes of DATA the peer may still send.
    receive_window: int = 0

    @classmethod
    def open(cls, command: Command, *, end: bool) -> Stream:
        """The stream a request frame opens: a READ, a WRITE without END (its content
        follows), or any other request, which then awaits its final reply."""
        if command in STREAMED_REPLY_COMMANDS:
            opening = StreamInput.READ_REQUEST
        elif command is Command.WRITE and not end:
            opening = StreamInput.WRITE_OPEN
        else:
            opening = StreamInput.REQUEST_END
        state = TRANSITIONS[StreamState.IDLE, opening]
        return cls(command, state)
