"""SHUTDOWN (spec 5.22): administrators only; the reply comes first, then the daemon drains."""

from __future__ import annotations

import os
from pathlib import Path

import trio
import trio.testing

from librorum.errors import ErrorCode
from librorum.protocol.messages import NodeStatus, NodeStatusReply, Shutdown, ShutdownReply
from librorum.protocol.session import ErrorReceived, GoAwayReceived, ReplyReceived
from librorum.server.app import Server
from librorum.store import open_store
from librorum.testing import memory_transport_pair, test_config
from librorum.transport.base import PeerInfo
from tests.server.conftest import DEADLINES, Peer


async def test_shutdown_is_for_administrators_and_replies_before_the_drain(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    config = test_config(tmp_path, **DEADLINES)
    config.data_dir.mkdir(parents=True, mode=0o700)
    with trio.fail_after(30):
        async with (
            open_store(config.data_dir / "store", min_free_space=0) as store,
            trio.open_nursery() as nursery,
        ):
            server = Server(config, store)

            def connect(uid: int) -> Peer:
                server_end, client_end = memory_transport_pair(
                    peer=PeerInfo("uds", uid=uid, authenticated=True)
                )
                nursery.start_soon(server.handle, server_end)
                return Peer(client_end)

            # Another uid (allowed on the socket, not an administrator): FORBIDDEN, and the
            # daemon goes on; so does the connection.
            stranger = connect(os.getuid() + 1)
            await stranger.hello()
            refused = await stranger.until_final(await stranger.request(Shutdown()))
            assert isinstance(refused, ErrorReceived)
            assert refused.exception.code is ErrorCode.FORBIDDEN
            assert "administrators" in str(refused.exception)
            assert not server.shutdown_requested.is_set()
            status = await stranger.until_final(await stranger.request(NodeStatus()))
            assert isinstance(status, ReplyReceived)
            assert isinstance(status.message, NodeStatusReply)
            assert status.message.server_errors == 0
            assert status.message.client_errors == 1  # FORBIDDEN is the request's error

            # The daemon's own uid: the reply, with the grace and the pid.
            admin = connect(os.getuid())
            await admin.hello()
            sid = await admin.request(Shutdown())
            reply = await admin.until_final(sid)
            assert isinstance(reply, ReplyReceived)
            assert reply.message == ShutdownReply(
                grace_ms=int(DEADLINES["shutdown_grace"] * 1000), pid=os.getpid()
            )
            assert server.shutdown_requested.is_set()
            # What serve() does next: the drain, GOAWAY on every connection.
            nursery.start_soon(server.drain)
            events = await admin.until_closed()
            assert any(isinstance(event, GoAwayReceived) for event in events)
            # The stranger's connection is drained too (it has nothing in flight).
            assert any(isinstance(event, GoAwayReceived) for event in await stranger.until_closed())
            nursery.cancel_scope.cancel()
