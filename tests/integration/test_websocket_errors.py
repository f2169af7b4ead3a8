"""A real daemon against a hostile WebSocket peer: every kind of bad input gets its LBRU
ERROR frame on session 0 and the matching close code (spec 2.2), the daemon logs one line for
it and no traceback, and it keeps serving.

The peer is :class:`tests.rawws.RawWebSocket`, which sends frames built by hand.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from librorum.errors import ConnectionLimitError, ErrorCode
from librorum.limits import MAX_CONNECTIONS_PER_IP
from librorum.protocol.constants import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    MAX_HANDSHAKE_PAYLOAD,
    Command,
)
from librorum.protocol.framing import encode_frame
from librorum.testing import TestDaemon, open_test_daemon
from librorum.transport import connect_websocket

from ..rawws import (
    BINARY,
    CONTINUATION,
    END,
    LBRU_CASES,
    PING,
    PING_PAYLOAD,
    UPGRADE,
    WEBSOCKET_CASES,
    Case,
    RawWebSocket,
    attack,
    data_message,
    header,
    http_exchange,
    status_of,
    trickle,
    ws_frame,
)

DEADLINE = 30.0


@asynccontextmanager
async def daemon_and_address(
    tmp_path: Path, **overrides: object
) -> AsyncIterator[tuple[TestDaemon, tuple[str, int], str]]:
    async with open_test_daemon(tmp_path, **overrides) as daemon:
        assert daemon.running.websocket is not None
        token = daemon.token_file.read_text().strip()
        yield daemon, daemon.running.websocket, token


async def assert_one_clean_line(daemon: TestDaemon, caplog: pytest.LogCaptureFixture) -> None:
    """Once the connection is over: no traceback, nothing above INFO, and its end logged once
    with a reason."""
    await daemon.running.server.wait_idle()
    records = [r for r in caplog.records if r.name.startswith("librorum")]
    assert [r for r in records if r.exc_info or r.levelno >= logging.WARNING] == []
    # The connection's one INFO line, at its end, with the reason after its figures.
    closed = [r for r in records if "bytes out: " in r.getMessage()]
    assert len(closed) == 1, [r.getMessage() for r in records]


async def assert_still_serving(daemon: TestDaemon) -> None:
    async with daemon.client("websocket") as client:
        await client.ping()


@pytest.mark.parametrize("name", [*LBRU_CASES, *WEBSOCKET_CASES])
async def test_bad_input_gets_its_error_frame_and_close_code(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    case = LBRU_CASES.get(name) or WEBSOCKET_CASES[name]
    with trio.fail_after(DEADLINE), caplog.at_level(logging.INFO, "librorum"):
        async with daemon_and_address(tmp_path) as (daemon, address, token):
            outcome = await attack(address, token, case)
            assert outcome.errors == [case.error]
            assert outcome.close_code == case.close_code
            await assert_one_clean_line(daemon, caplog)
            await assert_still_serving(daemon)


@pytest.mark.parametrize(
    ("size", "error", "close_code"),
    [
        # Before HELLO, the whole message is at most 20 + 4096 bytes. A HELLO padded to the
        # limit passes the transport (and is refused by the session: malformed payload)...
        (HEADER_SIZE + MAX_HANDSHAKE_PAYLOAD, ErrorCode.PROTOCOL_ERROR, 1002),
        # ...one byte more is refused at the WebSocket frame header.
        (HEADER_SIZE + MAX_HANDSHAKE_PAYLOAD + 1, ErrorCode.FRAME_TOO_LARGE, 1009),
    ],
)
async def test_the_pre_hello_budget_is_20_plus_4096_bytes(
    size: int, error: ErrorCode, close_code: int, tmp_path: Path
) -> None:
    payload = size - HEADER_SIZE
    case = Case(
        ws_frame(BINARY, header(Command.HELLO, payload, session_id=0) + bytes(payload)),
        error,
        close_code,
        hello=False,
    )
    with trio.fail_after(DEADLINE):
        async with daemon_and_address(tmp_path) as (_daemon, address, token):
            outcome = await attack(address, token, case)
            assert (outcome.errors, outcome.close_code) == ([error], close_code)


async def test_after_hello_a_message_is_one_maximal_frame(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with daemon_and_address(tmp_path) as (_daemon, address, token):
            # Exactly one maximal frame goes through (DATA for a stream that already ended is
            # discarded: spec 3.3), and the connection goes on...
            ws = await RawWebSocket.open(address, token)
            await ws.hello()
            await ws.send(data_message(HEADER_SIZE + DEFAULT_MAX_PAYLOAD))
            await ws.send_message(encode_frame(Command.PING, PING_PAYLOAD, session_id=2, flags=END))
            reply = await ws.next_frame()
            assert reply is not None
            assert (reply.command, reply.session_id) == (Command.PING, 2)
            await ws.aclose()
            # ...a byte more is too large for the transport.
            case = Case(
                data_message(HEADER_SIZE + DEFAULT_MAX_PAYLOAD + 1), ErrorCode.FRAME_TOO_LARGE, 1009
            )
            outcome = await attack(address, token, case)
            assert (outcome.errors, outcome.close_code) == ([ErrorCode.FRAME_TOO_LARGE], 1009)


async def test_a_message_trickling_in_fragments_meets_the_frame_deadline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # One byte per fragment, a ping between fragments, never the last one: the connection
    # used to be held forever (the LBRU frame deadline never saw a partial frame).
    frame = encode_frame(Command.STAT, bytes(100), session_id=1, flags=END)
    with trio.fail_after(DEADLINE), caplog.at_level(logging.INFO, "librorum"):
        async with daemon_and_address(tmp_path, frame_timeout=0.5) as (daemon, address, token):
            ws = await RawWebSocket.open(address, token)
            await ws.hello()
            start = trio.current_time()
            await ws.send(ws_frame(BINARY, frame[:HEADER_SIZE], fin=False))
            pieces = [
                ws_frame(CONTINUATION, bytes([byte]), fin=False) + ws_frame(PING, b"still here")
                for byte in frame[HEADER_SIZE:]
            ]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle, ws.send, pieces, 0.05)
                outcome = await ws.outcome()
                nursery.cancel_scope.cancel()
            elapsed = trio.current_time() - start
            assert outcome.errors == [ErrorCode.CONNECTION_TIMEOUT]
            assert outcome.close_code == 1008
            assert 0.5 <= elapsed < 5
            await assert_one_clean_line(daemon, caplog)
            await assert_still_serving(daemon)


async def test_the_33rd_connection_from_one_address_gets_503(tmp_path: Path) -> None:
    bearer = b"Authorization: Bearer %s\r\n"
    with trio.fail_after(DEADLINE):
        async with daemon_and_address(tmp_path) as (daemon, address, token):
            held = [await RawWebSocket.open(address, token) for _ in range(MAX_CONNECTIONS_PER_IP)]
            assert {ws.status for ws in held} == {101}
            response = await http_exchange(address, UPGRADE + bearer % token.encode() + b"\r\n")
            assert status_of(response) == 503
            assert b"\r\nRetry-After: " in response
            with pytest.raises(ConnectionLimitError):
                await connect_websocket(daemon.url, token=token)
            for ws in held:
                await ws.aclose()
            await assert_still_serving(daemon)
