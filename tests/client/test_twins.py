"""The async and the blocking client are twins: the blocking one is generated from the async
one and both connect through the same handshakes, so what one reports the other reports too.
Each test runs both against the same scripted server on loopback (the blocking client in a
worker thread) and expects the same error.

These are the places where the two used to disagree."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from librorum.client import connect, open_client
from librorum.errors import LibrorumError, UnauthorizedError

from .conftest import TEST_TIMEOUT
from .test_sync_websocket import Peer, serve

Connector = Callable[[str], Awaitable[None]]


async def connect_async(url: str) -> None:
    async with open_client(url, transport="remote", reconnect=False, connect_timeout=5):
        pass


async def connect_blocking(url: str) -> None:
    def body() -> None:
        connect(url, transport="remote", reconnect=False, connect_timeout=5).close()

    await trio.to_thread.run_sync(body)


CLIENTS = pytest.mark.parametrize("connect_with", [connect_async, connect_blocking])


def refuse_until_eof(head: bytes, body: bytes) -> Callable[[Peer], Awaitable[None]]:
    """A server that answers the upgrade with ``head`` and a body that ends when it closes
    the connection (no Content-Length): the client sees the status, then EOF."""

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.stream.send_all(head + b"\r\n\r\n" + body)

    return script


@CLIENTS
async def test_a_401_whose_body_ends_at_eof_is_unauthorized(
    nursery: trio.Nursery, connect_with: Connector
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server = await serve(nursery, refuse_until_eof(b"HTTP/1.1 401 Unauthorized", b"bad token"))
        with pytest.raises(UnauthorizedError, match=r"HTTP 401\): bad token"):
            await connect_with(server.url)


@CLIENTS
async def test_a_429_is_unauthorized(nursery: trio.Nursery, connect_with: Connector) -> None:
    """An address that failed authentication too often must wait: not a reason to retry."""
    with trio.fail_after(TEST_TIMEOUT):
        head = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 9"
        server = await serve(nursery, refuse_until_eof(head, b"slow down"))
        with pytest.raises(UnauthorizedError, match=r"HTTP 429\): slow down"):
            await connect_with(server.url)


@CLIENTS
@pytest.mark.parametrize("url", ["ws://:7878", "ws://localhost:port", "wss://"])
async def test_a_bad_url_is_a_value_error_before_any_connection(
    connect_with: Connector, url: str
) -> None:
    with trio.fail_after(TEST_TIMEOUT), pytest.raises(ValueError, match=r"WebSocket URL|port"):
        await connect_with(url)


@CLIENTS
async def test_an_ssl_context_for_an_unencrypted_url_is_refused(
    nursery: trio.Nursery, connect_with: Connector
) -> None:
    async def never(peer: Peer) -> None:
        raise AssertionError("the client must not connect")

    with trio.fail_after(TEST_TIMEOUT):
        server = await serve(nursery, never)

        async def with_context(url: str) -> None:
            context = ssl.create_default_context()
            if connect_with is connect_async:
                async with open_client(url, transport="remote", ssl_context=context):
                    pass
            else:
                await trio.to_thread.run_sync(
                    partial(connect, url, transport="remote", ssl_context=context)
                )

        with pytest.raises(LibrorumError, match="unencrypted URL"):
            await with_context(server.url)
