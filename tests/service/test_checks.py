"""The service's checks over a real store: fsck and repair for administrators only, one at a
time, with figures; the background scrub yields to traffic, keeps its pace, quarantines what
it finds, and resumes where it stood after a restart.

Time is trio's autojump clock, held still while worker threads run (the server tests'
``clock`` fixture): the scrub's waits (traffic, pacing) take no real time, its disk work no
virtual time."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from librorum.errors import BusyError, ForbiddenError
from librorum.service import INTERNAL, Caller, ScrubSettings, Service
from librorum.service.checks import SCRUB_STEP_CHUNKS
from librorum.store import FsckProgress, Store, open_store
from tests.server.conftest import clock as clock  # a fixture

CHUNK = 4096


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(tmp_path / "store", chunk_size=CHUNK) as s:
        yield s


def damage(store: Store, content: bytes, index: int) -> None:
    import blake3

    digest = blake3.blake3(content[index * CHUNK : (index + 1) * CHUNK]).hexdigest()
    path = store.data_dir / "chunks" / digest[:2] / digest
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))


async def test_fsck_and_repair_record_their_figures(store: Store) -> None:
    service = Service(store)
    content = os.urandom(4 * CHUNK)
    await store.write_bytes("/f", content)
    assert (await service.fsck(INTERNAL)).ok
    figures = (await service.node_status()).checks
    assert figures.last_fsck_ns > 0
    assert figures.last_fsck_ok
    assert figures.fsck_chunks_verified == 4
    damage(store, content, 2)
    repaired = await service.repair(INTERNAL)
    assert repaired.reupload == ["/f"]
    figures = (await service.node_status()).checks
    assert figures.last_fsck_repair
    assert not figures.last_fsck_ok
    assert (figures.last_fsck_problems, figures.last_fsck_affected) == (1, 1)


async def test_only_administrators_and_one_at_a_time(store: Store) -> None:
    service = Service(store)
    await store.write_bytes("/f", os.urandom(CHUNK))
    with pytest.raises(ForbiddenError):
        await service.fsck(Caller(uid=os.getuid() + 1))
    with pytest.raises(ForbiddenError):
        await service.repair(Caller())
    progress = FsckProgress()
    async with trio.open_nursery() as nursery:
        # The first check holds the lock from its first checkpoint on.
        nursery.start_soon(service.fsck, INTERNAL, progress)
        await trio.testing.wait_all_tasks_blocked()
        assert service.checks.running
        assert (await service.node_status()).checks.fsck_running == progress
        with pytest.raises(BusyError):
            await service.repair(INTERNAL)
    assert not service.checks.running
    assert (await service.node_status()).checks.fsck_running is None


class Traffic:
    def __init__(self) -> None:
        self.in_flight = 0
        self.seen = 0

    def __call__(self) -> tuple[int, int]:
        return self.in_flight, self.seen


async def wait_for(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds, polled each (virtual) second, for an hour at most:
    the figures are plain counters, with no event to wait on."""
    with trio.fail_after(3600):
        while not condition():  # noqa: ASYNC110 - polled, see above
            await trio.sleep(1)


async def test_scrub_yields_paces_quarantines_and_resumes(
    store: Store,
    tmp_path: Path,
    clock: trio.testing.MockClock,
) -> None:
    content = os.urandom(12 * CHUNK)
    await store.write_bytes("/f", content)
    damage(store, content, 5)
    service = Service(store)
    figures = service.checks.figures
    traffic = Traffic()
    traffic.in_flight = 1
    rate = CHUNK  # one chunk a second
    settings = ScrubSettings(rate=rate, interval=10_000, state_file=tmp_path / "scrub.json")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.checks.run_scrub, settings, traffic)
        # A request in flight: nothing is verified, however long it lasts.
        await wait_for(lambda: figures.scrub_paused)
        await trio.sleep(600)
        assert figures.scrub_chunks_verified == 0
        assert figures.scrub_paused
        traffic.in_flight = 0
        started = trio.current_time()
        await wait_for(lambda: figures.scrub_chunks_verified >= 2 * SCRUB_STEP_CHUNKS)
        # Paced at a chunk a second: the second step waits for the first one's time (less
        # the one second of slack the pacing allows).
        assert trio.current_time() - started >= SCRUB_STEP_CHUNKS - 1
        nursery.cancel_scope.cancel()
    assert (tmp_path / "scrub.json").exists()
    # A restart resumes the pass where it stood: the rest of the chunks, then the pass ends.
    resumed = Service(store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(resumed.checks.run_scrub, settings, Traffic())
        await wait_for(lambda: resumed.checks.figures.last_scrub_ns > 0)
        nursery.cancel_scope.cancel()
    assert resumed.checks.figures.scrub_chunks_verified == 12 - figures.scrub_chunks_verified
    assert figures.scrub_corrupt_found + resumed.checks.figures.scrub_corrupt_found == 1
    assert (await store.status()).quarantined == 1


async def test_a_scrub_set_to_zero_does_not_run(store: Store) -> None:
    service = Service(store)
    with trio.fail_after(1):
        await service.checks.run_scrub(ScrubSettings(rate=0, interval=100), Traffic())
        await service.checks.run_scrub(ScrubSettings(rate=100, interval=0), Traffic())
