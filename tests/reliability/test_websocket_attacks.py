"""The WebSocket attack campaign (RELIABILITY.md #21 and #34) against a real daemon process.

One daemon, every class of bad input a remote peer can send, each checked for its exact
answer: malformed and oversized upgrade requests (the HTTP status), frames and messages that
break LBRU or RFC 6455 (the LBRU ERROR code and the WebSocket close code), a message and an
HTTP request trickled past their deadlines, a connection over the per-address cap (503), the
authentication rejection matrix, and 1,000 wrong tokens in a row from one address (the
back-off). Afterwards the daemon must still serve, its log must hold no traceback, and its
descriptors must be back where they started.

Attackers come from different loopback addresses (all of 127.0.0.0/8 reaches the daemon), so
that the per-address cap and back-off of one class do not touch another.

Figures (figures.json): ``websocket.bad_input``, ``websocket.auth``, ``websocket.brute_force``.
"""

from __future__ import annotations

import math
from pathlib import Path

import trio

from librorum.client.aio import open_client
from librorum.errors import ErrorCode
from librorum.protocol.constants import HEADER_SIZE, Command
from librorum.protocol.framing import encode_frame
from librorum.transport._throttle import AuthBackoff
from tests.figures import FigureBook
from tests.rawws import (
    BINARY,
    CONTINUATION,
    END,
    LBRU_CASES,
    UPGRADE,
    WEBSOCKET_CASES,
    RawWebSocket,
    attack,
    http_exchange,
    request_cases,
    status_of,
    trickle,
    ws_frame,
)
from tests.reliability.harness import DaemonProcess

#: The campaign's own time limit (it takes 10-20 s on the development machine).
CAMPAIGN_TIMEOUT = 60.0
#: Short deadlines so that the trickling attackers are dropped quickly.
SETTINGS: dict[str, int | float] = {
    "frame_timeout": 1.0,
    "handshake_timeout": 1.0,
    "max_connections_per_ip": 4,
}
BRUTE_FORCE_ATTEMPTS = 1000
MIB = 1 << 20


async def trickled_message(address: tuple[str, int], token: str) -> bool:
    """A message whose fragments come a byte at a time, pings between them: ERROR
    CONNECTION_TIMEOUT and close 1008 once the frame deadline has passed."""
    frame = encode_frame(Command.STAT, bytes(200), session_id=1, flags=END)
    ws = await RawWebSocket.open(address, token, local_address="127.0.0.2")
    await ws.hello()
    await ws.send(ws_frame(BINARY, frame[:HEADER_SIZE], fin=False))
    pieces = [ws_frame(CONTINUATION, bytes([byte]), fin=False) for byte in frame[HEADER_SIZE:]]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle, ws.send, pieces, 0.1)
        outcome = await ws.outcome()
        nursery.cancel_scope.cancel()
    return (outcome.errors, outcome.close_code) == ([ErrorCode.CONNECTION_TIMEOUT], 1008)


async def trickled_request(address: tuple[str, int]) -> bool:
    """Slowloris on the upgrade request: closed, unanswered, at the handshake deadline."""
    stream = await trio.open_tcp_stream(*address, local_address="127.0.0.2")
    start = trio.current_time()
    pieces = [bytes([byte]) for byte in UPGRADE + b"X-Slow: " + b"a" * 1000]
    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(trickle, stream.send_all, pieces, 0.05)
        answer = await stream.receive_some(4096)
        nursery.cancel_scope.cancel()
    elapsed = trio.current_time() - start
    return answer == b"" and SETTINGS["handshake_timeout"] <= elapsed < 5


async def over_the_address_cap(address: tuple[str, int], token: str) -> bool:
    """One connection more than an address may hold: 503 with a Retry-After."""
    held = [
        await RawWebSocket.open(address, token, local_address="127.0.0.5")
        for _ in range(int(SETTINGS["max_connections_per_ip"]))
    ]
    extra = await RawWebSocket.open(address, token, local_address="127.0.0.5")
    refused = extra.status == 503 and extra.header(b"retry-after") is not None
    for ws in [*held, extra]:
        await ws.aclose()
    return refused and {ws.status for ws in held} == {101}


async def rejection_matrix(address: tuple[str, int], token: str) -> dict[str, int]:
    """RELIABILITY #34: the status of each credential case (no expiring tokens exist)."""
    bearer = [(b"authorization", b"Bearer " + token.encode())]
    cases: dict[str, tuple[str | None, list[tuple[bytes, bytes]], str]] = {
        "no_token": (None, [], "/"),
        "wrong_token": ("not-the-token", [], "/"),
        "token_in_query": (None, [], f"/?token={token}"),
        "wrong_origin": (None, [*bearer, (b"origin", b"https://evil.example")], "/"),
        "origin_without_token": (None, [(b"origin", b"https://evil.example")], "/"),
    }
    statuses = {}
    for name, (guess, headers, target) in cases.items():
        request = UPGRADE.replace(b"GET / ", b"GET " + target.encode() + b" ")
        for key, value in headers:
            request += key + b": " + value + b"\r\n"
        if guess is not None:
            request += b"Authorization: Bearer " + guess.encode() + b"\r\n"
        response = await http_exchange(address, request + b"\r\n", local_address="127.0.0.3")
        statuses[name] = status_of(response)
    return statuses


async def test_websocket_attack_campaign(tmp_path: Path, figures: FigureBook) -> None:
    with trio.fail_after(CAMPAIGN_TIMEOUT):
        async with trio.open_nursery() as nursery:
            daemon = DaemonProcess(tmp_path, settings=SETTINGS)
            await daemon.start(nursery)
            assert daemon.url is not None
            host, port = daemon.url.removeprefix("ws://").rsplit(":", 1)
            address = (host, int(port))
            token = daemon.token_file.read_text().strip()
            fds_before = daemon.fd_count()
            rss_before = daemon.rss()

            # RELIABILITY #21: every class of bad input, and its exact answer.
            results: dict[str, bool] = {}
            for name, case in {**LBRU_CASES, **WEBSOCKET_CASES}.items():
                outcome = await attack(address, token, case)
                results[name] = outcome.errors == [case.error] and (
                    outcome.close_code == case.close_code
                )
            results["message trickled past the deadline"] = await trickled_message(address, token)
            for name, (request, status) in request_cases(token).items():
                response = await http_exchange(address, request, local_address="127.0.0.2")
                results[name] = status_of(response) == status
            results["request trickled past the deadline"] = await trickled_request(address)
            results["over the per-address cap"] = await over_the_address_cap(address, token)
            oversize = [n for n in LBRU_CASES if "MiB" in n or "KiB before" in n]
            oversize_1009 = all(results[n] for n in oversize)

            # RELIABILITY #34: the rejection matrix, then brute force from one address.
            statuses = await rejection_matrix(address, token)
            expected = {
                "no_token": 401,
                "wrong_token": 401,
                "token_in_query": 401,
                "wrong_origin": 403,
                "origin_without_token": 401,
            }
            answers: dict[int, int] = {}
            checked_before_backoff = 0
            start = trio.current_time()
            for attempt in range(BRUTE_FORCE_ATTEMPTS):
                ws = await RawWebSocket.open(address, f"guess-{attempt}", local_address="127.0.0.4")
                answers[ws.status] = answers.get(ws.status, 0) + 1
                if ws.status == 401 and answers.get(429, 0) == 0:
                    checked_before_backoff += 1
                await ws.aclose()
            brute_seconds = trio.current_time() - start

            # Afterwards: still serving, nothing leaked, nothing logged badly.
            async with open_client(
                transport="remote", url=daemon.url, token=token, reconnect=False
            ) as client:
                await client.write("/after", b"still here")
                assert await client.read("/after") == b"still here"
            # Refusals linger and closes wait a little; the daemon is another process, so its
            # /proc is all there is to watch.
            with trio.move_on_after(10):
                while daemon.fd_count() > fds_before:  # noqa: ASYNC110 - polled, see above
                    await trio.sleep(0.05)
            fds_leaked = max(0, daemon.fd_count() - fds_before)
            rss_growth = (daemon.rss() - rss_before) / MIB
            assert await daemon.stop() == 0

    brute_warnings = [
        line for line in daemon.log.splitlines() if "WARNING" in line and "127.0.0.4:" in line
    ]
    # Allowed per minute after the back-off starts: the daemon's own policy (its defaults),
    # replayed for a guesser that retries the moment Retry-After allows.
    per_minute = _attempts_in(AuthBackoff(), 60.0)
    correct = sum(results.values())
    figures.record(
        "websocket.bad_input",
        {
            "classes": len(results),
            "closed_correctly": correct,
            "oversize_closed_1009": oversize_1009,
            "tracebacks": len(daemon.tracebacks()),
            "fds_leaked": fds_leaked,
            "rss_growth_mib": round(rss_growth, 1),
        },
    )
    figures.record(
        "websocket.auth",
        {
            "cases": len(expected),
            "rejected_correctly": sum(statuses[k] == v for k, v in expected.items()),
            **{f"status_{name}": status for name, status in statuses.items()},
        },
    )
    figures.record(
        "websocket.brute_force",
        {
            "attempts": BRUTE_FORCE_ATTEMPTS,
            "answered_401": answers.get(401, 0),
            "answered_429": answers.get(429, 0),
            "checked_before_backoff": checked_before_backoff,
            "seconds": round(brute_seconds, 2),
            "checked_in_first_minute": per_minute,
            "warnings_logged": len(brute_warnings),
        },
    )
    assert [name for name, ok in results.items() if not ok] == []
    assert statuses == expected
    assert daemon.tracebacks() == []
    assert fds_leaked == 0
    assert checked_before_backoff == 6  # 5 allowed, and the one that starts the back-off
    assert answers.get(401, 0) <= 6 + math.ceil(math.log2(brute_seconds + 1)) + 1
    assert len(brute_warnings) == 1


def _attempts_in(backoff: AuthBackoff, seconds: float) -> int:
    now = 0.0
    checked = 0
    while now < seconds:
        wait = backoff.wait("guesser", now)
        if wait:
            now += wait
            continue
        backoff.failed("guesser", now)
        checked += 1
    return checked
