"""The blocking client: the same requests as the async client, one at a time, on plain
sockets (no event loop, no thread per call).

Use::

    with connect() as client:
        client.write("/notes/a.txt", b"hello")
        data = client.read("/notes/a.txt")

Its request logic is generated from the async client's (:mod:`librorum.client._sync_client`,
by ``scripts/unasync.py``), so the two behave alike; it drives the same sans-I/O
:class:`~librorum.protocol.session.ClientSession` over a blocking Unix socket (vectored
``sendmsg``, ``recv_into`` a reused 1 MiB buffer) or a WebSocket spoken with wsproto over a
blocking TCP (or TLS) socket, one binary message per frame
(:mod:`librorum.client._sync_driver`).

Not thread-safe: use one :class:`SyncClient` per thread. Requests are sequential; while a
read stream is open, no other request may start on the same client.

Every socket operation is bounded by ``timeout`` (default 30 s). A receive that times out
raises :class:`~librorum.errors.ConnectionTimeoutError` and cancels the request on the server;
a send that times out (or is interrupted, e.g. by KeyboardInterrupt) may have cut a frame in
half, so the connection is closed and the next request opens a new one.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from librorum.client._common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_WINDOW,
    DEFAULT_RESUME_ATTEMPTS,
    DEFAULT_TIMEOUT,
    RECONNECT_ATTEMPTS,
    RECONNECT_DEADLINE,
)
from librorum.client._endpoints import TransportChoice, resolve_endpoints
from librorum.client._sync_client import SyncClient
from librorum.client._sync_streams import SyncListIterator, SyncLogFollower, SyncReadStream

__all__ = ["SyncClient", "SyncListIterator", "SyncLogFollower", "SyncReadStream", "connect"]


def connect(
    target: str | Path | None = None,
    *,
    transport: TransportChoice = "auto",
    socket_path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    reconnect: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_window: int = DEFAULT_READ_WINDOW,
    resume_attempts: int = DEFAULT_RESUME_ATTEMPTS,
    reconnect_attempts: int = RECONNECT_ATTEMPTS,
    reconnect_deadline: float = RECONNECT_DEADLINE,
    pass_fds: bool = True,
) -> SyncClient:
    """Connect to a Librorum daemon with a blocking client (a context manager; or call
    :meth:`SyncClient.close`). The arguments are those of :func:`librorum.client.open_client`.

    Raises:
        ConnectionClosed: no daemon answered at any endpoint.
        UnauthorizedError: the daemon refused the token, or the local socket is not ours.
        ValueError: contradictory arguments.
    """
    endpoints = resolve_endpoints(
        target,
        transport=transport,
        socket_path=socket_path,
        url=url,
        token=token,
        token_file=token_file,
        ssl_context=ssl_context,
    )
    client = SyncClient(
        endpoints,
        reconnect=reconnect,
        timeout=timeout,
        connect_timeout=connect_timeout,
        read_window=read_window,
        resume_attempts=resume_attempts,
        reconnect_attempts=reconnect_attempts,
        reconnect_deadline=reconnect_deadline,
        pass_fds=pass_fds,
    )
    try:
        client.__enter__()  # the first connection, now
    except BaseException:
        client.close()
        raise
    return client
