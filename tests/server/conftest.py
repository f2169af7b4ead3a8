"""The server under test: one real server over a real store in ``tmp_path``, each of its
connections served over an in-memory transport pair, under trio's autojump mock clock.

Only the ``server`` fixture knows how a server is put together; the tests talk to it in
frames alone (a :class:`Peer` is a client session driven by hand), so they hold whatever
shape the server's insides take.

Time: the clock jumps to the next deadline whenever every task waits. The store does its
blocking work in worker threads, which trio counts as waiting; the ``clock`` fixture holds
the clock still while such a call runs, so that store work takes no time, as it must not
for a test about the server's deadlines.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import trio
import trio.testing

from librorum.errors import ConnectionClosed, LibrorumError
from librorum.protocol.messages import FileWrite, HelloReply, Message
from librorum.protocol.session import (
    ClientSession,
    ConnectionEnded,
    ErrorReceived,
    Event,
    HelloAccepted,
    ReplyReceived,
)
from librorum.server.app import Server
from librorum.store import open_store
from librorum.testing import (
    MEMORY_CAPACITY,
    MemoryTransport,
    memory_transport_pair,
    test_config,
)
from librorum.transport.base import PeerInfo

T = TypeVar("T")

#: The deadlines the server is configured with: all different, so that a test catches one
#: deadline applied in place of another.
DEADLINES = {
    "handshake_timeout": 7.0,
    "frame_timeout": 11.0,
    "stream_timeout": 40.0,
    "idle_timeout_ws": 70.0,
    "idle_timeout_uds": 130.0,
    "shutdown_grace": 13.0,
}
#: How far from its deadline a test accepts an event: the clock jumps to deadlines exactly,
#: so this only absorbs float rounding.
TOLERANCE = 1e-3
#: Virtual seconds a test may take at most: far beyond every deadline above, so only a hang
#: trips it.
TEST_DEADLINE = 3600.0


def at(expected: float) -> object:
    """A time equal to ``expected`` as far as the clock can tell (for ``==``)."""
    return pytest.approx(expected, abs=TOLERANCE)


@attrs.define(eq=False)
class ServerUnderTest:
    """A server and the nursery its connections run in."""

    _server: Server
    _nursery: trio.Nursery

    def connect(
        self,
        *,
        kind: str = "uds",
        carries_files: bool = False,
        capacity_to_server: int = MEMORY_CAPACITY,
        capacity_to_client: int = MEMORY_CAPACITY,
        peer: PeerInfo | None = None,
    ) -> MemoryTransport:
        """A new connection to the server: the client's end of an in-memory pair whose
        server end the server serves from now on (``peer``: who the server is told the
        client is; by default this process's uid)."""
        server_end, client_end = memory_transport_pair(
            kind=kind,
            carries_files=carries_files,
            capacity_to_server=capacity_to_server,
            capacity_to_client=capacity_to_client,
            peer=peer,
        )
        self._nursery.start_soon(self._server.handle, server_end)
        return client_end

    async def wait_closed(self) -> None:
        """Wait until the server has ended every connection (and released what each held)."""
        await self._server.wait_idle()

    async def shut_down(self) -> None:
        """What SIGTERM does to the connections: GOAWAY on each, the requests in flight get
        the shutdown grace, what still runs after it is cancelled. Returns when the
        connections are closed (or the close grace ran out)."""
        await self._server.drain()


@pytest.fixture
def clock(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> trio.testing.MockClock:
    """The autojump clock, held still while a worker thread runs (see the module's
    docstring): ``trio.to_thread.run_sync`` sets the autojump threshold to infinity for as
    long as any call to it is under way."""
    run_sync = trio.to_thread.run_sync
    running = 0

    async def run_sync_holding_the_clock(
        fn: Callable[..., T], *args: object, **kwargs: object
    ) -> T:
        nonlocal running
        running += 1
        autojump_clock.autojump_threshold = math.inf
        try:
            return await run_sync(fn, *args, **kwargs)
        finally:
            running -= 1
            if not running:
                autojump_clock.autojump_threshold = 0

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync_holding_the_clock)
    return autojump_clock


@pytest.fixture
async def server(tmp_path: Path, clock: trio.testing.MockClock) -> AsyncIterator[ServerUnderTest]:
    """The server, configured with :data:`DEADLINES`, over an open store in ``tmp_path``
    (as ``librorum.server.app.serve`` builds it); its connections are cancelled at the end
    of the test, before the store closes."""
    config = test_config(tmp_path, **DEADLINES)
    config.data_dir.mkdir(parents=True, mode=0o700)
    async with (
        open_store(config.data_dir / "store", min_free_space=config.min_free_space) as store,
        trio.open_nursery() as nursery,
    ):
        yield ServerUnderTest(Server(config, store), nursery)
        nursery.cancel_scope.cancel()


# --- The client side ---------------------------------------------------------------------------


class Peer:
    """A client driven by hand: the sans-I/O client session over the client end of an
    in-memory connection. It reads only when a test asks it to."""

    def __init__(self, transport: MemoryTransport) -> None:
        self.transport = transport
        self.session = ClientSession()
        #: When the server's end was seen closed (EOF), on the trio clock.
        self.closed_at: float | None = None
        #: Whether a ConnectionEnded event was returned (one per connection).
        self.ended = False

    @classmethod
    async def connect(
        cls,
        server: ServerUnderTest,
        *,
        read_window: int = 1 << 20,
        features: int = 0,
        **options: Any,
    ) -> Peer:
        """A connection past its handshake: ``options`` as ``ServerUnderTest.connect``, the
        others as :meth:`hello`."""
        peer = cls(server.connect(**options))
        await peer.hello(read_window=read_window, features=features)
        return peer

    async def hello(self, *, read_window: int = 1 << 20, features: int = 0) -> HelloReply:
        """Send HELLO and read until its reply."""
        self.session.hello(initial_window=read_window, features=features)
        await self.flush()
        while True:
            for event in await self.next_events():
                if isinstance(event, HelloAccepted):
                    return event.reply
                assert not isinstance(event, ConnectionEnded), event

    async def flush(self) -> None:
        """Send what the session has queued."""
        await self.transport.send_frames(self.session.frames_to_send())

    async def request(self, message: Message, *, end: bool = True) -> int:
        """Start a request and send it; returns its session id."""
        sid = self.session.start_request(message, end=end)
        await self.flush()
        return sid

    async def next_events(self) -> list[Event]:
        """The events of the next receive; the server's close shows as ConnectionEnded."""
        data = await self.transport.receive_some()
        self.session.receive_data(data)
        events = list(self.session.events())
        self.ended = self.ended or any(isinstance(e, ConnectionEnded) for e in events)
        if not data:
            self.closed_at = trio.current_time()
            if not self.ended:
                self.ended = True
                events.append(ConnectionEnded())
        return events

    async def until_final(self, sid: int) -> ReplyReceived | ErrorReceived:
        """Read until request ``sid`` ends; its final event."""
        while True:
            for event in await self.next_events():
                if isinstance(event, ErrorReceived) and event.session_id == sid:
                    return event
                if isinstance(event, ReplyReceived) and event.session_id == sid and event.end:
                    return event
                assert not isinstance(event, ConnectionEnded), event

    async def until_closed(self) -> list[Event]:
        """Read until the server closes the connection; every event on the way (the last
        one is the single ConnectionEnded)."""
        events: list[Event] = []
        while self.closed_at is None:
            events += await self.next_events()
        return events

    async def connection_error(self) -> LibrorumError | None:
        """Read until the server closes the connection; the connection error it reported
        (its ERROR on session 0), ``None`` for a plain close."""
        events = await self.until_closed()
        [ended] = [e for e in events if isinstance(e, ConnectionEnded)]
        return ended.error

    async def write(self, path: str, content: bytes) -> ReplyReceived | ErrorReceived:
        """A WRITE whose content streams as DATA, as fast as the server grants credit; its
        final event."""
        if not content:
            return await self.exchange(FileWrite(path, size=0))
        sid = await self.request(FileWrite(path, size=len(content)), end=False)
        view = memoryview(content)
        while True:
            while view and (room := self.session.send_window(sid)):
                piece = view[: min(room, self.session.max_payload)]
                view = view[len(piece) :]
                self.session.send_data(sid, piece, end=not view)
            await self.flush()
            for event in await self.next_events():
                if isinstance(event, (ReplyReceived, ErrorReceived)) and event.session_id == sid:
                    return event
                assert not isinstance(event, ConnectionEnded), event

    async def exchange(self, message: Message) -> ReplyReceived | ErrorReceived:
        """One unary request and its final event."""
        return await self.until_final(await self.request(message))


async def closed_while(action: Callable[[], Awaitable[object]]) -> float:
    """Run ``action`` (a send that the server will never take) until the server closes the
    connection under it; returns when that happened, on the trio clock."""
    try:
        await action()
    except ConnectionClosed:
        return trio.current_time()
    msg = "the action completed: the connection was not closed under it"
    raise AssertionError(msg)
