"""The events a session returns from :meth:`~librorum.protocol.session.ClientSession.next_event`
and :meth:`~librorum.protocol.session.ServerSession.next_event`, in their own module as h11
keeps its ``_events.py``: plain records of what arrived, with no behaviour.

:mod:`librorum.protocol.session` re-exports every name here.
"""

from __future__ import annotations

import attrs

from librorum.errors import LibrorumError
from librorum.protocol.constants import Command
from librorum.protocol.framing import Payload
from librorum.protocol.messages import GoAway, Hello, HelloReply, Message

__all__ = [
    "ConnectionEnded",
    "DataReceived",
    "ErrorReceived",
    "Event",
    "GoAwayReceived",
    "HelloAccepted",
    "HelloReceived",
    "ReplyReceived",
    "RequestReceived",
    "WindowGranted",
]


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
