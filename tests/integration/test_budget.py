"""The global in-flight budget (spec 9.2) against a real daemon over real sockets: many
uploads at once never make the daemon hold more upload data than its budget (plus the small
initial window each upload has from its first frame), and they are slowed, not dropped."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio

from librorum.limits import INITIAL_UPLOAD_WINDOW, UPLOAD_WINDOW_MIN
from librorum.protocol.messages import FileWrite
from librorum.testing import Transport, open_test_daemon
from tests.integration.test_stalls import raw_connection

MIB = 1 << 20


def content(index: int, size: int) -> bytes:
    seed = hashlib.blake2b(index.to_bytes(4, "big")).digest()
    return (seed * (size // len(seed) + 1))[:size]


@pytest.mark.parametrize("transport", ["uds", "websocket"])
async def test_concurrent_uploads_stay_within_the_budget(
    transport: Transport, tmp_path: Path
) -> None:
    uploads, size, budget_limit = 12, 6 * MIB, 3 * MIB
    settings = {"max_inflight_bytes": budget_limit, "max_connections_per_ip": 64}
    highest = 0
    with trio.fail_after(120):
        async with open_test_daemon(tmp_path, **settings) as daemon:
            budget = daemon.running.server.budget
            done = trio.Event()

            async def sample() -> None:
                nonlocal highest
                while not done.is_set():
                    highest = max(highest, budget.used)
                    await trio.sleep(0.001)

            async def upload(index: int) -> None:
                async with daemon.client(transport, pass_fds=False) as client:
                    # A buffer in memory is streamed as DATA frames (never passed as a file).
                    await client.write(f"/u{index}", content(index, size), size=size)

            async with trio.open_nursery() as sampler:
                sampler.start_soon(sample)
                async with trio.open_nursery() as nursery:
                    for index in range(uploads):
                        nursery.start_soon(upload, index)
                done.set()
            # Every upload completed, intact: slowed, not dropped.
            async with daemon.client(transport) as client:
                for index in range(uploads):
                    assert await client.read(f"/u{index}") == content(index, size)
            status = await _status(daemon)
            # Nothing held once they are done; the peak is what the daemon saw itself.
            assert budget.used == 0
            assert status.inflight_bytes == 0
            assert status.inflight_peak_bytes == budget.peak >= highest
    # Over the budget only by the initial windows the uploads had from their first frame.
    assert budget.peak <= budget_limit + uploads * INITIAL_UPLOAD_WINDOW
    # And the budget was the binding limit: without it the uploads could have held more (each
    # its initial window and at least the smallest share).
    assert uploads * (INITIAL_UPLOAD_WINDOW + UPLOAD_WINDOW_MIN) > budget_limit
    assert budget.peak > budget_limit // 2


async def _status(daemon):  # type: ignore[no-untyped-def]
    async with daemon.client() as client:
        return await client.status()


async def test_an_upload_earns_its_credit(tmp_path: Path) -> None:
    # A WRITE that sends nothing holds its initial window and no more: credit beyond it is
    # granted only as the store takes data.
    with trio.fail_after(30):
        async with open_test_daemon(tmp_path) as daemon:
            budget = daemon.running.server.budget
            channel, session = await raw_connection(daemon, "uds")
            try:
                sids = [
                    session.start_request(FileWrite(f"/idle{i}", size=MIB), end=False)
                    for i in range(4)
                ]
                await channel.send_frames(session.frames_to_send())
                await trio.testing.wait_all_tasks_blocked()
                assert budget.used == 4 * INITIAL_UPLOAD_WINDOW
                assert all(session.send_window(sid) == INITIAL_UPLOAD_WINDOW for sid in sids)
            finally:
                await channel.aclose()
            await daemon.running.server.wait_idle()
            assert budget.used == 0
