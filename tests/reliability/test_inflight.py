"""The global in-flight budget under load (RELIABILITY.md #27), against a real daemon
process: 64 clients upload 16 MiB each at once, streamed. Sampled every 10 ms: the upload
bytes the daemon holds (NODE_STATUS ``inflight_bytes``) and its resident memory. Every
upload must succeed (slowed, not dropped), the held bytes stay within the budget (plus the
initial window each upload has from its first frame), the daemon's peak RSS stays under
300 MiB, and its memory goes back near its idle size once the burst is over.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import blake3
import trio

from librorum.client.aio import open_client
from librorum.limits import INITIAL_UPLOAD_WINDOW, MAX_INFLIGHT_BYTES
from tests.figures import FigureBook
from tests.reliability.harness import DaemonProcess

MIB = 1 << 20
UPLOADS = 64
SIZE = 16 * MIB


def body(index: int) -> bytes:
    seed = hashlib.blake2b(index.to_bytes(4, "big")).digest()
    return seed * (SIZE // len(seed))


async def test_64_concurrent_uploads_stay_within_the_budget(
    tmp_path: Path, figures: FigureBook
) -> None:
    settings = {"max_connections_per_uid": 128}
    bodies = [body(i) for i in range(UPLOADS)]
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            # The daemon's own memory: not measured by coverage, whose tracer adds its own.
            daemon = DaemonProcess(tmp_path, settings=settings, coverage=False)
            await daemon.start(nursery)
            socket_path = daemon.socket_path
            async with open_client(transport="local", socket_path=socket_path) as observer:
                # Warm the daemon up (imports, the store, thread pools), then take its size.
                await observer.write("/warm", bodies[0][: 4 * MIB])
                await observer.delete("/warm")
                await observer.mkdir("/u")
                idle_rss = daemon.rss()
                samples = 0
                peak_held = 0
                peak_rss = idle_rss
                done = trio.Event()

                async def sample() -> None:
                    nonlocal samples, peak_held, peak_rss
                    while not done.is_set():
                        status = await observer.status()
                        peak_held = max(peak_held, status.inflight_bytes)
                        peak_rss = max(peak_rss, daemon.rss())
                        samples += 1
                        with trio.move_on_after(0.01):
                            await done.wait()

                async def upload(index: int) -> None:
                    async with open_client(
                        transport="local", socket_path=socket_path, pass_fds=False
                    ) as client:
                        await client.write(f"/u/{index}", bodies[index], size=SIZE)

                started = time.monotonic()
                async with trio.open_nursery() as sampler:
                    sampler.start_soon(sample)
                    async with trio.open_nursery() as uploads:
                        for index in range(UPLOADS):
                            uploads.start_soon(upload, index)
                    done.set()
                elapsed = time.monotonic() - started
                status = await observer.status()
                daemon_peak = status.inflight_peak_bytes
                # Every upload stored, intact (hashes, not a re-download of 1 GiB).
                for index in range(UPLOADS):
                    info = await observer.stat(f"/u/{index}")
                    assert info.size == SIZE
                    assert info.content_hash == blake3.blake3(bodies[index]).digest()
                # Memory goes back: give the allocator a moment after the last request.
                after_rss = daemon.rss()
                for _ in range(50):
                    if after_rss - idle_rss <= 64 * MIB:
                        break
                    await trio.sleep(0.1)
                    after_rss = daemon.rss()
                final_peak_rss = daemon.peak_rss()
            assert await daemon.stop() == 0
    assert daemon.tracebacks() == []
    allowed = MAX_INFLIGHT_BYTES + UPLOADS * INITIAL_UPLOAD_WINDOW
    figures.record(
        "inflight.64_uploads",
        {
            "uploads": UPLOADS,
            "mib_each": SIZE // MIB,
            "budget_mib": MAX_INFLIGHT_BYTES // MIB,
            "peak_held_mib_sampled": round(peak_held / MIB, 1),
            "peak_held_mib_daemon": round(daemon_peak / MIB, 1),
            "samples": samples,
            "idle_rss_mib": round(idle_rss / MIB, 1),
            "peak_rss_mib": round(final_peak_rss / MIB, 1),
            "rss_after_mib": round(after_rss / MIB, 1),
            "throughput_mb_s": round(UPLOADS * SIZE / elapsed / 1e6, 1),
            "dropped": 0,
        },
    )
    assert samples > 10
    assert peak_held <= daemon_peak <= allowed
    assert final_peak_rss < 300 * MIB
    assert after_rss - idle_rss <= 64 * MIB
