"""Both clients' HELLO exchange with a server that refused the connection (spec 2.4): it sends
one ERROR on session 0 and closes, possibly before the client's HELLO arrives. The client's
send then fails, but the refusal is still there to read, and it is the error to report (not
"Broken pipe").

The transports here are doubles replaying what the socket gives in that order: a failed send,
then the refusal frame, then the end of the stream. The sessions are the real ones."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from librorum.client._async_driver import AsyncConnection
from librorum.client._endpoints import LocalEndpoint
from librorum.client._sync_driver import SyncConnection
from librorum.errors import ConnectionClosed, ErrorCode, UnauthorizedError
from librorum.protocol.framing import Payload
from librorum.transport import refusal_frame

ENDPOINT = LocalEndpoint(Path("/run/librorum.sock"))
REFUSAL = refusal_frame(ErrorCode.UNAUTHORIZED, "uid 1000 is not allowed")
BROKEN_PIPE = "send to unix:/run/librorum.sock failed: Broken pipe"


class RefusedTransport:
    """The socket of a connection the server refused and closed before HELLO arrived."""

    def __init__(self, incoming: list[bytes]) -> None:
        self.incoming = incoming
        self.sends = 0

    def send_frames(self, frames: Sequence[Sequence[Payload]]) -> None:
        self.sends += 1
        raise ConnectionClosed(BROKEN_PIPE)

    def receive_some(self, max_bytes: int = 0) -> bytes:
        if not self.incoming:
            msg = "receive from unix:/run/librorum.sock failed: Connection reset by peer"
            raise ConnectionClosed(msg)
        return self.incoming.pop(0)

    def close(self) -> None:
        pass


class AsyncRefusedTransport(RefusedTransport):
    async def send_frames(self, frames: Sequence[Sequence[Payload]]) -> None:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        super().send_frames(frames)

    async def receive_some(self, max_bytes: int = 0) -> bytes:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        return super().receive_some(max_bytes)


def test_sync_client_reports_the_refusal_not_the_failed_send() -> None:
    transport = RefusedTransport([REFUSAL, b""])
    conn = SyncConnection(transport, ENDPOINT, read_window=1 << 20)  # type: ignore[arg-type]
    with pytest.raises(UnauthorizedError, match="uid 1000 is not allowed"):
        conn.handshake()
    assert transport.sends == 1


def test_sync_client_without_a_refusal_reports_the_failed_send() -> None:
    for incoming in ([b""], []):
        conn = SyncConnection(RefusedTransport(incoming), ENDPOINT, read_window=1 << 20)  # type: ignore[arg-type]
        with pytest.raises(ConnectionClosed, match="Broken pipe"):
            conn.handshake()


async def test_async_client_reports_the_refusal_not_the_failed_send() -> None:
    transport = AsyncRefusedTransport([REFUSAL, b""])
    conn = AsyncConnection(transport, ENDPOINT, timeout=5, read_window=1 << 20)  # type: ignore[arg-type]
    with pytest.raises(UnauthorizedError, match="uid 1000 is not allowed"):
        await conn.handshake()


async def test_async_client_without_a_refusal_reports_the_failed_send() -> None:
    for incoming in ([b""], []):
        transport = AsyncRefusedTransport(incoming)
        conn = AsyncConnection(transport, ENDPOINT, timeout=5, read_window=1 << 20)  # type: ignore[arg-type]
        with pytest.raises(ConnectionClosed, match="Broken pipe"):
            await conn.handshake()
