"""The async (trio) client: many requests multiplexed on one LBRU connection.

Use::

    async with open_client() as client:
        info = await client.write("/notes/a.txt", b"hello")
        data = await client.read("/notes/a.txt")

The request logic is in :mod:`librorum.client._async_client` (from which the blocking client
is generated), the connection's tasks, locks and limits in
:mod:`librorum.client._async_driver`.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

from librorum.client._async_client import Client
from librorum.client._async_streams import ListIterator, LogFollower, ReadStream
from librorum.client._common import (
    CLOSE_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_WINDOW,
    DEFAULT_RESUME_ATTEMPTS,
    DEFAULT_TIMEOUT,
    RECONNECT_ATTEMPTS,
    RECONNECT_DEADLINE,
)
from librorum.client._endpoints import TransportChoice, resolve_endpoints

__all__ = ["Client", "ListIterator", "LogFollower", "ReadStream", "open_client"]


@asynccontextmanager
async def open_client(
    target: str | Path | None = None,
    *,
    transport: TransportChoice = "auto",
    socket_path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    reconnect: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    # A per-request progress deadline kept for the client's lifetime, not a deadline for
    # this call (which callers bound with trio.fail_after as usual).
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_window: int = DEFAULT_READ_WINDOW,
    resume_attempts: int = DEFAULT_RESUME_ATTEMPTS,
    reconnect_attempts: int = RECONNECT_ATTEMPTS,
    reconnect_deadline: float = RECONNECT_DEADLINE,
    pass_fds: bool = True,
) -> AsyncIterator[Client]:
    """Connect to a Librorum daemon for the duration of the block.

    Args:
        target: a socket path or a ``ws://`` / ``wss://`` URL.
        transport: ``auto`` uses the local Unix socket when a daemon answers there and the
            remote URL otherwise; ``local`` / ``remote`` use only one.
        socket_path: the Unix socket; default ``$LIBRORUM_SOCKET``, else
            ``$XDG_RUNTIME_DIR/librorum/librorum.sock``, else
            ``/tmp/librorum-<uid>/librorum.sock``.
        url: the WebSocket URL; default ``$LIBRORUM_URL``.
        token: the bearer token for a remote daemon; default: read from ``token_file`` or
            ``$LIBRORUM_TOKEN_FILE``.
        reconnect: open a new connection (with backoff) for requests made after the
            connection dropped; otherwise they raise ConnectionClosed.
        ssl_context: for ``wss://`` URLs.
        timeout: seconds a request may wait for the server's progress (and a send may take).
        connect_timeout: seconds to connect and complete the handshake.
        read_window: bytes the server may send ahead on each READ.
        resume_attempts: times a resumable upload resumes after disconnects.
        reconnect_attempts: connection attempts when a request finds the connection
            dropped (immediately, then with backoff from 0.05 s doubling to 2 s).
        reconnect_deadline: seconds those attempts may take in all.
        pass_fds: over the Unix socket, write a local file of 1 MiB or more by passing its
            descriptor instead of streaming the bytes (when the daemon offers it; spec 8).
            The file must not change until the write returns. A sealed memfd goes the same
            way (write its /proc/self/fd path); buffers in memory are streamed. The daemon
            copies the content into its chunk files and hashes the copy.

    Raises:
        ConnectionClosed: no daemon answered at any endpoint.
        UnauthorizedError: the remote daemon refused the token.
        ValueError: contradictory arguments (e.g. ``transport="remote"`` without a URL).

    Cancellation: leaving the block (normally, by an exception, or cancelled) closes the
    connections; requests still in flight in other tasks end with ConnectionClosed.
    """
    endpoints = await trio.to_thread.run_sync(
        partial(
            resolve_endpoints,
            target,
            transport=transport,
            socket_path=socket_path,
            url=url,
            token=token,
            token_file=token_file,
            ssl_context=ssl_context,
        )
    )
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        client = Client(
            nursery,
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
            await client.__aenter__()  # the first connection, now
            yield client
        except BaseException as exc:
            # Re-raised below, outside the nursery: the caller sees its own exception, not an
            # ExceptionGroup wrapping it (the connection tasks never raise).
            body_error = exc
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()  # never blocks: each connection closes in its task
            # Each connection closes itself within CLOSE_TIMEOUT; this bounds the rest.
            nursery.cancel_scope.deadline = trio.current_time() + 2 * CLOSE_TIMEOUT
    if body_error is not None:
        raise body_error
