"""A request in flight, and what its handler may use of the connection that runs it.

The command table (``commands.py``) and the connection driver (``connection.py``) meet here:
handlers are written against :class:`Driver`, which :class:`~librorum.server.connection.
Connection` implements, so neither module imports the other's internals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import attrs
import trio

from librorum.protocol.constants import Command
from librorum.protocol.framing import Payload
from librorum.protocol.messages import FileReadReply, Message
from librorum.protocol.session import ServerSession
from librorum.service import Reader, Service


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


class Driver(Protocol):
    """The connection, as a request handler sees it: the service to call, the session to
    answer on, and the two streams (content out under the client's credit, content in under
    the credit the server grants)."""

    @property
    def service(self) -> Service: ...

    @property
    def session(self) -> ServerSession: ...

    @property
    def requests(self) -> Mapping[int, RequestState]:
        """The requests in flight that run in a task of their own, by session id."""

    async def send_content(self, state: RequestState, reply: FileReadReply, reader: Reader) -> None:
        """Send a READ's first reply, then the reader's range as DATA frames as the client
        grants credit (from the chunk files themselves where the transport sends files).
        Returns once no frame queued can still point into the reader.

        Raises:
            CorruptDataError, StoreIOError: from the reader, before any byte of that chunk.
            TimeoutError_: the client granted no credit, or read nothing, for the stream
                deadline.
            InternalError: the reader gave fewer bytes than the reply announced.
        """

    async def receive_content(
        self, state: RequestState, sink: Callable[[Payload], Awaitable[None]]
    ) -> None:
        """Hand a WRITE's DATA to ``sink`` piece by piece, granting the client credit as the
        sink takes it, until the client's END.

        Raises:
            TimeoutError_: the client, holding credit, sent no DATA for the stream deadline.
            CancelledError: the DATA ended without END (the connection is going away).
            LibrorumError: whatever ``sink`` raises.
        """
