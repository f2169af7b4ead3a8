"""Test support: a real daemon on temporary paths, clients connected to it, and a frame
transport over any byte stream.

For users who test their code against Librorum, and for the project's own end-to-end tests::

    async with open_test_daemon(tmp_path) as daemon:
        async with daemon.client("uds") as client:         # or "websocket"
            await client.write("/a.txt", b"hello")

The daemon listens on a Unix socket under the given directory and on WebSocket at
127.0.0.1 with an ephemeral port, with a fresh token; signals are left alone. With pytest,
the fixtures in :mod:`librorum.pytest_plugin` (registered automatically) wrap this.

To drive one server connection without sockets (deterministic, under a mock clock),
serve a :class:`StreamTransport` over one end of an in-memory stream and talk LBRU bytes
into the other end::

    client_end, server_end = trio.testing.memory_stream_pair()
    nursery.start_soon(server.handle, StreamTransport(server_end))
    await client_end.send_all(hello_frame + request_frames)
"""

from __future__ import annotations

from librorum.testing.daemon import (
    TestDaemon as TestDaemon,
    Transport as Transport,
    open_test_daemon as open_test_daemon,
    test_config as test_config,
)
from librorum.testing.streams import (
    StreamTransport as StreamTransport,
    memory_transport_pair as memory_transport_pair,
)
