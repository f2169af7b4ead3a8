"""Helpers for the transport tests: real sockets only (Unix sockets in a temporary directory,
WebSocket on 127.0.0.1 port 0), servers started with ``nursery.start`` so that a test begins
only once the listener accepts."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from librorum.protocol import Command, Frame, FrameDecoder
from librorum.protocol.constants import DEFAULT_MAX_PAYLOAD, MAX_CONTROL_PAYLOAD, VERSION
from librorum.protocol.converter import decode_message
from librorum.protocol.framing import encode_frame_parts
from librorum.protocol.messages import ErrorMessage
from librorum.transport import FrameTransport, serve_uds, serve_websocket

#: Every test's deadline: far above what any of them needs, so only a hang trips it.
DEADLINE = 20.0
TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def sock_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A socket path in a fresh directory that does not exist yet (serve_uds creates it).
    tmp_path_factory keeps the path short: sun_path holds 107 bytes."""
    return tmp_path_factory.mktemp("u") / "run" / "librorum.sock"


def data_frame(payload: bytes | memoryview, session_id: int = 1) -> tuple[bytes, Any]:
    return encode_frame_parts(Command.DATA, payload, session_id=session_id)


def decoder() -> FrameDecoder:
    return FrameDecoder(
        expected_version=VERSION,
        max_payload=DEFAULT_MAX_PAYLOAD,
        max_control_payload=MAX_CONTROL_PAYLOAD,
    )


async def receive_frames(transport: FrameTransport, count: int) -> list[Frame]:
    """Read until ``count`` frames arrived (or the peer closed). On a message-framed transport
    check that each message is exactly one frame."""
    frames: list[Frame] = []
    dec = decoder()
    while len(frames) < count:
        data = await transport.receive_some()
        dec.receive_data(data)
        if not data:
            break
        got = list(dec)
        if transport.message_framed:
            assert len(got) == 1, "one WebSocket message must be one frame"
            assert dec.buffered == 0
        frames.extend(got)
    return frames


def error_of(frame: Frame) -> ErrorMessage:
    assert frame.command == Command.ERROR
    message = decode_message(frame.command, frame.flags, frame.payload)
    assert isinstance(message, ErrorMessage)
    return message


async def echo(transport: FrameTransport) -> None:
    """Send back whatever arrives, until the peer closes."""
    while True:
        data = await transport.receive_some()
        if not data:
            return
        await transport.send_frames([(bytes(data),)])


@asynccontextmanager
async def running(
    serve: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
) -> AsyncIterator[Any]:
    """Run a listener for the duration of the block; yield what it passed to started()."""
    async with trio.open_nursery() as nursery:
        started = await nursery.start(partial(serve, *args, **kwargs))
        yield started
        nursery.cancel_scope.cancel()


def start_fails(exc_type: type[BaseException], match: str) -> Any:
    """Expect starting a listener with :func:`running` to fail: the error comes out of the
    helper's nursery, hence wrapped in an exception group (trio's strict groups)."""
    return pytest.RaisesGroup(pytest.RaisesExc(exc_type, match=match))


def uds_server(handler: Any, path: Path, **kwargs: Any) -> Any:
    kwargs.setdefault("allowed_uids", {os.getuid()})
    return running(serve_uds, handler, path, **kwargs)


def ws_server(handler: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("token", TOKEN)
    # These handlers are not LBRU servers: the pre-HELLO budget (a small first message) is
    # the daemon's, tested where it applies.
    kwargs.setdefault("first_message_size", None)
    return running(serve_websocket, handler, "127.0.0.1", 0, **kwargs)


def ws_url(address: tuple[str, int], path: str = "/") -> str:
    host, port = address
    return f"ws://{host}:{port}{path}"
