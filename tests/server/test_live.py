"""REQUESTS (spec 5.21), the live view, against a real server over a real store, its
connections in memory, on the real clock (the requests under test wait on their peers, which a
mock clock would jump past to their deadlines).

Each test puts a request into a wait for real (a client that stops sending, a client that
grants no credit, a path lock taken in the store's own lock table) and waits, bounded, until
the snapshot shows it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from librorum.activity import Activity
from librorum.errors import ErrorCode
from librorum.protocol.messages import (
    FileRead,
    FileReadReply,
    FileWrite,
    MakeDirectory,
    MakeDirectoryReply,
    Ping,
    RequestEntry,
    Requests,
    RequestsReply,
)
from librorum.protocol.session import ErrorReceived, ReplyReceived
from librorum.server.app import Server
from librorum.service import Peer as LivePeer
from librorum.store import Store, open_store
from librorum.testing import memory_transport_pair, test_config
from librorum.transport.base import PeerInfo

from .conftest import Peer, ServerUnderTest

#: Real seconds a test may take at most.
DEADLINE = 20.0


class Live:
    """A server, its store, and a way in for a peer of any credentials."""

    def __init__(self, server: Server, store: Store, nursery: trio.Nursery) -> None:
        self.server = server
        self.store = store
        self.under_test = ServerUnderTest(server, nursery)
        self._nursery = nursery

    async def peer(self, peer: PeerInfo | None = None, **hello: int) -> Peer:
        """A connection past its handshake, from ``peer`` (default: our own uid, local)."""
        kind = peer.kind if peer is not None else "uds"
        server_end, client_end = memory_transport_pair(kind=kind, peer=peer)
        self._nursery.start_soon(self.server.handle, server_end)
        client = Peer(client_end)
        await client.hello(**hello)
        return client


@pytest.fixture
async def live(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Live]:
    """The server over its store; parametrized indirectly, the in-flight budget in bytes."""
    budget = getattr(request, "param", None)
    overrides = {} if budget is None else {"max_inflight_bytes": budget}
    config = test_config(tmp_path, **overrides)
    config.data_dir.mkdir(parents=True, mode=0o700)
    async with (
        open_store(config.data_dir / "store", min_free_space=0) as store,
        trio.open_nursery() as nursery,
    ):
        yield Live(Server(config, store), store, nursery)
        nursery.cancel_scope.cancel()


async def snapshot(admin: Peer, limit: int = 1000) -> RequestsReply:
    final = await admin.exchange(Requests(limit))
    assert isinstance(final, ReplyReceived), final
    assert isinstance(final.message, RequestsReply)
    return final.message


async def wait_for_entry(admin: Peer, test: Callable[[RequestEntry], bool]) -> RequestEntry:
    """Poll REQUESTS until an entry passes ``test`` (bounded by the caller's deadline)."""
    while True:
        reply = await snapshot(admin)
        for entry in reply.requests:
            if test(entry):
                return entry
        await trio.sleep(0.01)


async def test_an_upload_whose_client_stops_sending_waits_on_the_peer(live: Live) -> None:
    with trio.fail_after(DEADLINE):
        writer = await live.peer()
        admin = await live.peer()
        sid = await writer.request(FileWrite("/stalled.bin", size=4 << 20), end=False)
        sent = writer.session.send_window(sid)  # the initial window, then nothing more
        assert sent > 0
        writer.session.send_data(sid, b"x" * sent)
        await writer.flush()
        entry = await wait_for_entry(
            admin, lambda e: e.command == "WRITE" and e.moved == sent and e.waiting == "peer"
        )
        assert entry.path == "/stalled.bin"
        assert entry.transport == "uds"
        assert entry.uid == os.getuid()
        assert entry.session == sid
        assert entry.address is None
        reply = await snapshot(admin)
        assert reply.total == 1  # REQUESTS itself is never listed
        assert reply.connections == 2


async def test_a_second_writer_of_a_locked_path_waits_on_the_path_lock(live: Live) -> None:
    path_locks = live.store._path_locks  # the store's own table: the first writer is us
    with trio.fail_after(DEADLINE):
        writer = await live.peer()
        admin = await live.peer()
        async with path_locks.hold(["/locked"]):
            sid = await writer.request(MakeDirectory("/locked"))
            entry = await wait_for_entry(admin, lambda e: e.waiting == "path lock")
            assert entry.command == "MKDIR"
            assert entry.path == "/locked"
            assert entry.session == sid
        # Released: the waiting request goes on and completes.
        final = await writer.until_final(sid)
        assert isinstance(final, ReplyReceived)
        assert isinstance(final.message, MakeDirectoryReply)
        assert (await snapshot(admin)).total == 0


async def test_a_read_whose_client_grants_no_window_waits_on_peer_credit(live: Live) -> None:
    window = 64 << 10
    with trio.fail_after(DEADLINE):
        writer = await live.peer()
        final = await writer.write("/big.bin", os.urandom(1 << 20))
        assert isinstance(final, ReplyReceived), final
        reader = await live.peer(read_window=window)
        admin = await live.peer()
        sid = await reader.request(FileRead("/big.bin"))
        entry = await wait_for_entry(admin, lambda e: e.waiting == "peer credit")
        assert entry.command == "READ"
        assert entry.path == "/big.bin"
        assert entry.session == sid
        assert entry.moved == window
        events = await reader.next_events()
        assert any(
            isinstance(e, ReplyReceived) and isinstance(e.message, FileReadReply) for e in events
        )


@pytest.mark.parametrize("live", [256 << 10], indirect=True, ids=["budget-256KiB"])
async def test_an_upload_held_back_by_the_budget_waits_on_the_budget(live: Live) -> None:
    """One upload that sends nothing holds its initial window, the whole budget; a second
    one sends its own window, which the store takes, and then gets no credit."""
    with trio.fail_after(DEADLINE):
        idle = await live.peer()
        busy = await live.peer()
        admin = await live.peer()
        await idle.request(FileWrite("/idle.bin", size=1 << 20), end=False)
        sid = await busy.request(FileWrite("/busy.bin", size=1 << 20), end=False)
        sent = busy.session.send_window(sid)
        busy.session.send_data(sid, b"b" * sent)
        await busy.flush()
        entry = await wait_for_entry(admin, lambda e: e.waiting == "budget")
        assert entry.path == "/busy.bin"
        assert entry.moved == sent


@pytest.mark.parametrize(
    "peer",
    [
        PeerInfo("uds", uid=os.getuid() + 1, pid=4242, authenticated=True),
        PeerInfo("websocket", address="192.0.2.1:5000", authenticated=False),
    ],
    ids=["another-uid", "websocket-without-token"],
)
async def test_requests_is_forbidden_to_others(live: Live, peer: PeerInfo) -> None:
    with trio.fail_after(DEADLINE):
        stranger = await live.peer(peer)
        final = await stranger.exchange(Requests())
        assert isinstance(final, ErrorReceived), final
        assert final.exception.code == ErrorCode.FORBIDDEN
        assert "administrators" in str(final.exception)
        # The connection stays: a PING still answers.
        assert isinstance(await stranger.exchange(Ping(b"still here")), ReplyReceived)


async def test_a_websocket_peer_with_the_token_is_listed_by_address(live: Live) -> None:
    remote = PeerInfo("websocket", address="192.0.2.1:5000", authenticated=True)
    with trio.fail_after(DEADLINE):
        admin = await live.peer(remote)
        writer = await live.peer(remote)
        sid = await writer.request(FileWrite("/remote.bin", size=10), end=False)
        entry = await wait_for_entry(admin, lambda e: e.session == sid)
        assert entry.transport == "websocket"
        assert entry.address == "192.0.2.1:5000"
        assert entry.uid is None


async def test_the_snapshot_stays_within_its_limit_and_one_control_frame(live: Live) -> None:
    """5,000 requests in flight with 4 KiB paths: the reply lists the oldest that fit one
    control frame, oldest first, and counts them all."""
    registry = live.server.service.live
    for c in range(50):
        connection = registry.open_connection(LivePeer("uds", uid=1000, pid=c))
        for sid in range(1, 101):
            activity = Activity("WRITE", "/" + "p" * 4000)
            activity.started -= c * 1000 + sid  # distinct ages: connection 0's are youngest
            connection.requests[sid] = activity
    with trio.fail_after(DEADLINE):
        admin = await live.peer()
        # Had the reply outgrown a control frame, the server could not have sent it.
        reply = await snapshot(admin)
        assert reply.total == 5000
        assert 0 < len(reply.requests) < 1000
        ages = [entry.age_ms for entry in reply.requests]
        assert ages == sorted(ages, reverse=True)  # the oldest first
        assert reply.requests[0].pid == 49
        limited = await snapshot(admin, limit=7)
        assert len(limited.requests) == 7
        assert limited.total == 5000
