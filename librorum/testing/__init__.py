"""Test support: a real daemon on temporary paths, clients connected to it, and frame
transports that run a real server connection without sockets.

For users who test their code against Librorum, and for the project's own end-to-end tests::

    async with open_test_daemon(tmp_path) as daemon:
        async with daemon.client("uds") as client:         # or "websocket"
            await client.write("/a.txt", b"hello")

The daemon listens on a Unix socket under the given directory and on WebSocket at
127.0.0.1 with an ephemeral port, with a fresh token; signals are left alone. With pytest,
the fixtures in :mod:`librorum.pytest_plugin` (registered automatically) wrap this.

To drive one server connection without sockets (deterministic, under a mock clock), serve
one end of a :func:`memory_transport_pair` and talk LBRU frames into the other end. Each
direction holds a bounded number of bytes, so a peer that does not read stops its sender as
a socket buffer would; with ``carries_files=True`` the pair passes descriptors as a Unix
socket does (spec 8)::

    server_end, client_end = memory_transport_pair()
    nursery.start_soon(server.handle, server_end)
    await client_end.send_frames(session.frames_to_send())

:class:`StreamTransport` does the same over any trio byte stream (the fuzz target's).
"""

from __future__ import annotations

from librorum.testing.daemon import (
    TestDaemon as TestDaemon,
    Transport as Transport,
    open_test_daemon as open_test_daemon,
    test_config as test_config,
)
from librorum.testing.memory import (
    MEMORY_CAPACITY as MEMORY_CAPACITY,
    DirectionStatistics as DirectionStatistics,
    MemoryTransport as MemoryTransport,
    MemoryTransportStatistics as MemoryTransportStatistics,
    memory_transport_pair as memory_transport_pair,
)
from librorum.testing.streams import StreamTransport as StreamTransport
