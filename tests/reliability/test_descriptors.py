"""Descriptor exhaustion and the connection cap (RELIABILITY.md #26), against a real daemon
process started under a low RLIMIT_NOFILE: too low to serve anybody, it refuses to start
with one line naming the limit needed; low, it lowers its caps to fit (one WARNING), refuses
the connection over the cap cleanly, keeps serving the others, and recovers once they go."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from librorum.errors import ConnectionLimitError
from librorum.limits import FD_BASE, FD_RESERVE
from librorum.protocol.messages import Ping
from librorum.protocol.session import ClientSession, ConnectionEnded, ReplyReceived
from librorum.transport import FrameTransport, connect_uds
from tests.figures import FigureBook
from tests.reliability.harness import DaemonProcess


async def test_too_few_descriptors_refuse_to_start(tmp_path: Path, figures: FigureBook) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            daemon = DaemonProcess(tmp_path, nofile=64)
            await daemon.start(nursery, wait=False)
            status = await daemon.wait()
    assert status == 1
    lines = daemon.log.strip().splitlines()
    [line] = [line for line in lines if line.startswith("librorum:")]
    assert "too few file descriptors: the limit is 64" in line
    assert "ulimit -n" in line
    assert daemon.tracebacks() == []
    assert "serving" not in daemon.log
    figures.record("descriptors.too_low_refuses_to_start", {"nofile": 64, "exit_status": status})


async def hello(daemon: DaemonProcess) -> tuple[FrameTransport, ClientSession, list[object]]:
    """A connection and the events of its handshake (HelloAccepted, or the refusal)."""
    channel = await connect_uds(daemon.socket_path)
    session = ClientSession()
    session.hello()
    await channel.send_frames(session.frames_to_send())
    events: list[object] = []
    while not events:
        data = await channel.receive_some()
        session.receive_data(data)
        events = list(session.events())
        if not data:
            events.append(ConnectionEnded())
    return channel, session, events


async def ping(channel: FrameTransport, session: ClientSession) -> None:
    sid = session.start_request(Ping(b"x"))
    await channel.send_frames(session.frames_to_send())
    while True:
        session.receive_data(await channel.receive_some())
        if any(isinstance(e, ReplyReceived) and e.session_id == sid for e in session.events()):
            return


async def test_a_low_descriptor_limit_lowers_the_caps(tmp_path: Path, figures: FigureBook) -> None:
    nofile = 160
    # Two listeners share what is left after the daemon's own needs.
    cap = (nofile - FD_BASE - FD_RESERVE) // 2
    # Idle connections must not give way to newcomers here: the refusal is under test.
    settings = {"reclaim_after": 3600.0}
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            daemon = DaemonProcess(tmp_path, nofile=nofile, settings=settings)
            await daemon.start(nursery)
            assert f"serving at most {cap} connections per listener" in daemon.log, daemon.log
            baseline_fds = daemon.fd_count()
            held: list[tuple[FrameTransport, ClientSession]] = []
            refusal: object = None
            try:
                while refusal is None and len(held) <= cap:
                    channel, session, events = await hello(daemon)
                    if isinstance(events[0], ConnectionEnded):
                        refusal = events[0]
                        await channel.aclose()
                    else:
                        held.append((channel, session))
                accepted = len(held)
                # Refused cleanly, with the reason; the daemon is alive and serves the rest.
                assert isinstance(refusal, ConnectionEnded), refusal
                assert isinstance(refusal.error, ConnectionLimitError), (refusal, len(held))
                for channel, session in held:
                    await ping(channel, session)
            finally:
                for channel, _ in held:
                    await channel.aclose()
            # Recovery: as soon as the held connections are gone, a new one gets in.
            started = time.monotonic()
            while True:
                channel, session, events = await hello(daemon)
                if not isinstance(events[0], ConnectionEnded):
                    break
                await channel.aclose()
                await trio.sleep(0.01)
            recovery = time.monotonic() - started
            await ping(channel, session)
            await channel.aclose()
            # Nothing leaked: the daemon is back to its descriptors before the test (it
            # closes its ends as it notices ours closed: poll another process, briefly).
            for _ in range(200):
                fds_after = daemon.fd_count()
                if fds_after <= baseline_fds:
                    break
                await trio.sleep(0.05)
            assert await daemon.stop() == 0
    assert accepted == cap, daemon.log_tail()
    assert fds_after <= baseline_fds, (fds_after, baseline_fds)
    assert daemon.tracebacks() == [], daemon.log
    figures.record(
        "descriptors.low_limit",
        {
            "nofile": nofile,
            "cap_per_listener": cap,
            "accepted": accepted,
            "refused_cleanly": True,
            "recovery_ms": round(recovery * 1000, 1),
            "fds_leaked": fds_after - baseline_fds,
        },
    )
