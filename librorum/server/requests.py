"""A request in flight, and what its handler may use of the connection that runs it.

The command table (``commands.py``) and the connection driver (``connection.py``) meet here:
handlers are written against :class:`Driver`, which :class:`~librorum.server.connection.
Connection` implements, so neither module imports the other's internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import attrs
import trio

from librorum.activity import Activity
from librorum.protocol.constants import Command
from librorum.protocol.framing import Payload
from librorum.protocol.messages import Message
from librorum.protocol.session import ServerSession
from librorum.server.context import ServerContext
from librorum.service import Caller, Service
from librorum.transport.base import FileTransport


@attrs.define(eq=False)
class RequestState:
    """What the connection knows about one request in flight."""

    session_id: int
    command: Command
    cancel_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)
    #: The request reached the store (a cancel now aborts rather than prevents it).
    started: bool = False
    #: The request's normal final reply, once its effect is committed; sent even if the
    #: task is cancelled afterwards.
    reply: Message | None = None
    #: For READ: woken when the client grants credit.
    window: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    #: For WRITE: DATA from the reader to the upload task, and the upload task's end of it.
    data_in: trio.MemorySendChannel[Payload] | None = None
    data_out: trio.MemoryReceiveChannel[Payload] | None = None
    #: For WRITE: the client sent its last DATA (END).
    end_received: bool = False
    #: For a WRITE passing a descriptor (spec 8): the descriptor, owned by this request
    #: and closed when it ends.
    fd: int | None = None
    #: The request waits for its client (DATA, credit, or reading what was sent): the time
    #: it spends so is the client's, not ours (see ``Connection.waiting_on_client``).
    waiting_on_peer: bool = False
    #: For WRITE: bytes of the global in-flight budget held (credit granted and not used,
    #: plus DATA received and not yet taken by the store), and bytes the store has taken.
    reserved: int = 0
    consumed: int = 0
    #: For WRITE with DATA: counted among the uploads sharing the budget.
    budgeted: bool = False
    #: For WRITE, while the upload waits for budget with no credit out: set when DATA comes.
    wake: trio.Event | None = None
    #: What the live view shows of the request (spec 5.21): the connection binds it to the
    #: request's task, and the waits on the way (the store's, the streams') record in it.
    activity: Activity = attrs.field(
        default=attrs.Factory(lambda self: Activity(self.command.name), takes_self=True)
    )


class Driver(Protocol):
    """The connection, as a request handler sees it: the service to call, the session to
    answer on, what the daemon shares, and the writer's primitives that the streams in
    ``streams.py`` pace themselves with."""

    @property
    def service(self) -> Service: ...

    @property
    def session(self) -> ServerSession: ...

    @property
    def caller(self) -> Caller:
        """Who sends this connection's requests (for the service core's admin check)."""

    @property
    def context(self) -> ServerContext: ...

    @property
    def requests(self) -> Mapping[int, RequestState]:
        """The requests in flight that run in a task of their own, by session id."""

    @property
    def file_transport(self) -> FileTransport | None:
        """The transport, when it sends frames whose payloads are file regions."""

    def wake_writer(self) -> None:
        """Have the writer send what the session has queued."""

    async def wait_for_writer(self) -> None:
        """Wait while the session holds more than a few unsent frames (backpressure for
        producers of bulk data)."""

    async def wait_until_sent(self) -> None:
        """Wait until every frame queued so far is written, or can no longer be."""

    async def settle_output(self) -> None:
        """Wait until none of the frames queued so far can still be written (bounded by the
        close timeout, past which the transport is closed). Shielded."""
