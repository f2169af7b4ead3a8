"""Clients that hold on without doing anything, against a real daemon process over each
transport (RELIABILITY.md #25 and the stalled-request attack): each attacker is dropped at
its deadline, the daemon's memory does not grow with what attackers announce, and a fresh
client keeps being served meanwhile. Deadlines are configured short so each attack lasts a
few seconds; the figures give the measured times, memory and latencies.

The attacks: a WRITE whose DATA never comes; slowloris (a frame, or a WebSocket message,
announcing 1 MiB, then a byte every 0.3 s; on WebSocket while answering pings); and
connections that send nothing at all.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from librorum.client.aio import open_client
from librorum.errors import ConnectionClosed, ConnectionTimeoutError, ErrorCode, TimeoutError_
from librorum.protocol.constants import Command
from librorum.protocol.header import pack_header
from librorum.protocol.messages import FileWrite
from librorum.protocol.session import (
    ClientSession,
    ConnectionEnded,
    ErrorReceived,
    HelloAccepted,
)
from librorum.testing import Transport
from librorum.transport import FrameTransport, connect_uds, connect_websocket
from tests.figures import FigureBook
from tests.rawws import BINARY, RawWebSocket, header, trickle, ws_frame
from tests.reliability.harness import DaemonProcess

MIB = 1 << 20


async def handshake(
    daemon: DaemonProcess, transport: Transport
) -> tuple[FrameTransport, ClientSession]:
    channel: FrameTransport
    if transport == "uds":
        channel = await connect_uds(daemon.socket_path)
    else:
        assert daemon.url is not None
        channel = await connect_websocket(daemon.url, token=daemon.token_file.read_text().strip())
    session = ClientSession()
    session.hello()
    await channel.send_frames(session.frames_to_send())
    while True:
        data = await channel.receive_some()
        assert data, "closed during the handshake"
        session.receive_data(data)
        if any(isinstance(e, HelloAccepted) for e in session.events()):
            return channel, session


async def until_ended(channel: FrameTransport, session: ClientSession) -> list[object]:
    """Read until the daemon ends the connection; returns every event."""
    events: list[object] = []
    while True:
        try:
            data = await channel.receive_some()
        except Exception:
            data = b""
        session.receive_data(data)
        events += list(session.events())
        if not data or any(isinstance(e, ConnectionEnded) for e in events):
            return events


async def probe(daemon: DaemonProcess, transport: Transport, latencies: list[float]) -> None:
    """A fresh client: connect, one request, leave; its time goes to ``latencies``."""
    started = time.monotonic()
    if transport == "uds":
        opened = open_client(transport="local", socket_path=daemon.socket_path)
    else:
        opened = open_client(transport="remote", url=daemon.url, token_file=daemon.token_file)
    async with opened as client:
        await client.stat("/")
    latencies.append(time.monotonic() - started)


async def probe_while(
    daemon: DaemonProcess,
    transport: Transport,
    attack_over: trio.Event,
    latencies: list[float],
    failures: list[str],
) -> None:
    """Probe every 50 ms until the attack is over (bounded by the attackers' deadlines)."""
    while not attack_over.is_set():
        try:
            await probe(daemon, transport, latencies)
        except Exception as exc:
            failures.append(repr(exc))
        with trio.move_on_after(0.05):
            await attack_over.wait()


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class Attack:
    """What the attackers of one attack share: how many are in place, when each was
    dropped."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.placed = 0
        self.all_placed = trio.Event()
        self.dropped: list[float] = []

    def in_place(self) -> None:
        """An attacker has done its setup (connected, sent its header...)."""
        self.placed += 1
        if self.placed == self.count:
            self.all_placed.set()


async def run_attack(
    daemon: DaemonProcess,
    transport: Transport,
    attack: Attack,
    attacker: Callable[[int, Attack], Awaitable[None]],
) -> tuple[list[float], list[str], int]:
    """Run ``attack.count`` attackers; once all are in place, probe with a fresh client until
    they are all dropped. Returns the probe latencies and failures and the daemon's RSS growth
    (its peak during the attack over its RSS before)."""
    latencies: list[float] = []
    failures: list[str] = []
    before = daemon.rss()
    peak = before
    over = trio.Event()

    async def watch_rss() -> None:
        nonlocal peak
        while not over.is_set():
            peak = max(peak, daemon.rss())
            with trio.move_on_after(0.01):
                await over.wait()

    async def probe_when_placed() -> None:
        with trio.move_on_at(trio.current_time() + 30):  # everyone in place within 30 s
            await attack.all_placed.wait()
        await probe_while(daemon, transport, over, latencies, failures)

    async with trio.open_nursery() as outer:
        outer.start_soon(watch_rss)
        outer.start_soon(probe_when_placed)
        async with trio.open_nursery() as nursery:
            for index in range(attack.count):
                nursery.start_soon(attacker, index, attack)
        over.set()
    return latencies, failures, peak - before


@pytest.mark.parametrize("transport", ["uds", "websocket"])
async def test_stalled_writes_and_half_sent_frames(
    transport: Transport, tmp_path: Path, figures: FigureBook
) -> None:
    stream_timeout, frame_timeout, handshake_timeout = 1.5, 1.5, 1.0
    settings = {
        "stream_timeout": stream_timeout,
        "frame_timeout": frame_timeout,
        "handshake_timeout": handshake_timeout,
        "reclaim_after": 0.5,
        "max_connections": 300,
        "max_connections_per_uid": 300,
        "max_connections_per_ip": 300,
        "max_unauthenticated": 300,
    }
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            daemon = DaemonProcess(tmp_path, settings=settings)
            await daemon.start(nursery)
            await probe(daemon, transport, [])  # warm up the client side
            assert daemon.url is not None
            address = _address(daemon.url)

            # 1. HELLO, then a WRITE whose DATA never comes: the WRITE ends with TIMEOUT
            #    at the stream deadline, and the connection then idles.
            async def stalled_write(index: int, attack: Attack) -> None:
                channel, session = await handshake(daemon, transport)
                try:
                    sid = session.start_request(FileWrite(f"/stalled-{index}", size=MIB), end=False)
                    await channel.send_frames(session.frames_to_send())
                    started = time.monotonic()
                    attack.in_place()
                    while True:
                        session.receive_data(await channel.receive_some())
                        ends = [e for e in session.events() if isinstance(e, ErrorReceived)]
                        if ends:
                            break
                    [end] = ends
                    assert end.session_id == sid
                    assert isinstance(end.exception, TimeoutError_)
                    attack.dropped.append(time.monotonic() - started)
                finally:
                    await channel.aclose()

            writes = Attack(64)
            writes_seen = await run_attack(daemon, transport, writes, stalled_write)

            # 2. Slowloris: a frame (on WebSocket, a message) announcing 1 MiB, then a byte
            #    every 0.3 s: closed at the frame deadline, having cost the daemon what it
            #    received, not 1 MiB.
            async def slowloris(index: int, attack: Attack) -> None:
                if transport == "websocket":
                    await websocket_slowloris(address, daemon, index, attack, frame_timeout)
                    return
                channel, session = await handshake(daemon, transport)
                try:
                    # DATA may be as large as max_payload (control frames are capped lower).
                    header = pack_header(Command.DATA, 0, MIB, session_id=1000 + index)
                    started = time.monotonic()
                    await channel.send_frames([(header,)])
                    attack.in_place()
                    with trio.move_on_after(frame_timeout * 4):
                        async with trio.open_nursery() as trickle:

                            async def drip() -> None:
                                while True:
                                    await trio.sleep(0.3)
                                    try:
                                        await channel.send_frames([(b"\0",)])
                                    except ConnectionClosed:
                                        return  # dropped: the reader below says why

                            trickle.start_soon(drip)
                            events = await until_ended(channel, session)
                            trickle.cancel_scope.cancel()
                    [end] = [e for e in events if isinstance(e, ConnectionEnded)]
                    assert isinstance(end.error, ConnectionTimeoutError), end
                    attack.dropped.append(time.monotonic() - started)
                finally:
                    await channel.aclose()

            loris = Attack(256)
            loris_seen = await run_attack(daemon, transport, loris, slowloris)

            # 3. Connected, and then nothing at all: closed at the handshake deadline.
            async def silent(index: int, attack: Attack) -> None:
                started = time.monotonic()
                if transport == "websocket":
                    stream = await trio.open_tcp_stream(*address)
                    async with stream:
                        attack.in_place()
                        with trio.move_on_after(handshake_timeout * 4):
                            assert await stream.receive_some(4096) == b"", "closed, unanswered"
                            attack.dropped.append(time.monotonic() - started)
                    return
                channel = await connect_uds(daemon.socket_path)
                try:
                    attack.in_place()
                    events = await until_ended(channel, ClientSession())
                    [end] = [e for e in events if isinstance(e, ConnectionEnded)]
                    assert isinstance(end.error, ConnectionTimeoutError), end
                    attack.dropped.append(time.monotonic() - started)
                finally:
                    await channel.aclose()

            quiet = Attack(256)
            quiet_seen = await run_attack(daemon, transport, quiet, silent)
            assert await daemon.stop() == 0
    assert daemon.tracebacks() == []

    for name, attack, (latencies, failures, growth), deadline in (
        ("stalled_write", writes, writes_seen, stream_timeout),
        ("slowloris", loris, loris_seen, frame_timeout),
        ("silent", quiet, quiet_seen, handshake_timeout),
    ):
        dropped, count = attack.dropped, attack.count
        # Every attacker was dropped, at its deadline (plus scheduling), not later.
        assert len(dropped) == count
        assert max(dropped) < deadline + 3.0
        # A fresh client was served throughout.
        assert failures == []
        assert latencies
        # What an attacker costs is what it sent, not what it announced.
        assert growth < count * 256 * 1024 + 16 * MIB
        figures.record(
            f"attacks.{transport}_{name}",
            {
                "attackers": count,
                "deadline_s": deadline,
                "dropped": len(dropped),
                "max_time_to_drop_s": round(max(dropped), 2),
                "rss_growth_mib": round(growth / MIB, 1),
                "fresh_client_probes": len(latencies),
                "fresh_client_failures": len(failures),
                "fresh_client_p50_ms": round(statistics.median(latencies) * 1000, 1),
                "fresh_client_p99_ms": round(p99(latencies) * 1000, 1),
            },
        )


def _address(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("ws://").partition(":")
    return host, int(port)


async def websocket_slowloris(
    address: tuple[str, int], daemon: DaemonProcess, index: int, attack: Attack, deadline: float
) -> None:
    """A WebSocket message announcing one maximal LBRU frame, trickled a byte every 0.3 s
    while the pings are answered: dropped at the message deadline, close code 1008."""
    peer = await RawWebSocket.open(address, daemon.token_file.read_text().strip())
    try:
        assert peer.status == 101
        await peer.hello()
        # The WebSocket header (declaring the whole message) and the LBRU header; the rest
        # of the payload never comes but for the drip (what it says does not matter).
        lbru = header(Command.DATA, MIB, session_id=1000 + index)
        started = time.monotonic()
        await peer.send(ws_frame(BINARY, lbru, declared=len(lbru) + MIB))
        attack.in_place()
        with trio.move_on_after(deadline * 4):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle, peer.send, (b"\0" for _ in range(MIB)), 0.3)
                outcome = await peer.outcome()  # answers the pings meanwhile
                nursery.cancel_scope.cancel()
        assert outcome.errors == [ErrorCode.CONNECTION_TIMEOUT], outcome
        assert outcome.close_code == 1008, outcome
        attack.dropped.append(time.monotonic() - started)
    finally:
        await peer.aclose()
