"""Concurrency: no global lock, last commit wins atomically, readers never wait for writers.

Synchronisation is by events and barriers, never by sleeping; every wait has a deadline so
that a lost wake-up fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from librorum.errors import AlreadyExistsError, TimeoutError_
from librorum.protocol.constants import WriteMode
from librorum.store import Store, memory_backend, open_store
from librorum.store.locks import LockTable
from tests.store.conftest import TEST_CHUNK_SIZE
from tests.store.fsshim import RecordingFS
from tests.store.test_api import data

CS = TEST_CHUNK_SIZE
DEADLINE = 20.0


@pytest.fixture(params=["files", "memory"])
async def store(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """The store on each backend pair: these rules belong to the store, not to a backend."""
    metadata, objects = memory_backend() if request.param == "memory" else (None, None)
    async with open_store(
        tmp_path / "store", chunk_size=CS, metadata=metadata, objects=objects
    ) as s:
        yield s


class BlockingFS(RecordingFS):
    """Blocks the first fsync of a temp file after :meth:`arm` until :meth:`release`."""

    def __init__(self) -> None:
        super().__init__()
        self._armed = False
        self._gate = threading.Event()
        self.blocked = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    def arm(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._armed = True

    def release(self) -> None:
        self._gate.set()

    def fsync(self, fd: int) -> None:
        path = self._fd_paths.get(fd, "")
        if self._armed and path.endswith(".tmp"):
            self._armed = False
            assert self._token is not None
            self._token.run_sync_soon(self.blocked.set)
            if not self._gate.wait(DEADLINE):
                raise TimeoutError("never released")
        super().fsync(fd)


async def test_writer_blocked_mid_upload_does_not_stop_others(tmp_path: Path) -> None:
    shim = BlockingFS()
    # One chunk per batch: the full chunk is published (fsynced) as soon as it is staged.
    async with open_store(
        tmp_path / "s", chunk_size=CS, upload_pipeline=1, upload_batch=1, fs=shim
    ) as store:
        await store.write_bytes("/c", data(2 * CS, seed=3))
        shim.arm()
        a = await store.begin_upload("/a")
        await a.write(data(CS, seed=1))  # a full chunk: its job starts and blocks in fsync
        with trio.fail_after(DEADLINE):
            await shim.blocked.wait()
        # A is stuck inside its chunk write. Another writer, readers, listings go on.
        with trio.fail_after(DEADLINE):
            info = await store.write_bytes("/b", data(3 * CS, seed=2))
            assert info.size == 3 * CS
            assert await store.read_bytes("/c") == data(2 * CS, seed=3)
            assert [e.name for e in (await store.list("/")).entries] == ["b", "c"]
            await store.mkdir("/d")
            await store.rename("/b", "/d/b")
        assert a.state == "open"
        shim.release()
        with trio.fail_after(DEADLINE):
            await a.write(b"tail")
            await a.commit()
        assert await store.read_bytes("/a") == data(CS, seed=1) + b"tail"


async def test_many_writers_to_different_files_progress_together(store: Store) -> None:
    writers = 12
    ready = 0
    all_ready = trio.Event()

    async def writer(i: int) -> None:
        nonlocal ready
        content = data(3 * CS + i, seed=i)
        async with await store.begin_upload(f"/w{i}") as up:
            await up.write(content[: CS + 1])
            ready += 1
            if ready == writers:
                all_ready.set()
            # Every writer is mid-upload here at once: none waits for another's lock.
            await all_ready.wait()
            await up.write(content[CS + 1 :])
            await up.commit()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for i in range(writers):
                nursery.start_soon(writer, i)
    for i in range(writers):
        assert await store.read_bytes(f"/w{i}") == data(3 * CS + i, seed=i)


async def test_same_file_last_commit_wins(store: Store) -> None:
    contents = [data(2 * CS + 10 * i, seed=20 + i) for i in range(6)]
    initial = data(CS, seed=99)
    await store.write_bytes("/same", initial)
    versions: dict[int, int] = {}
    seen: set[bytes] = set()
    done = trio.Event()

    async def writer(i: int) -> None:
        content = contents[i]
        async with await store.begin_upload("/same") as up:
            for lo in range(0, len(content), 1000):
                await up.write(content[lo : lo + 1000])
                await trio.lowlevel.checkpoint()
            versions[i] = (await up.commit()).version

    async def reader() -> None:
        while not done.is_set():
            seen.add(await store.read_bytes("/same"))
            await trio.lowlevel.checkpoint()

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            async with trio.open_nursery() as writers:
                for i in range(len(contents)):
                    writers.start_soon(writer, i)
            done.set()
    final = await store.read_bytes("/same")
    winner = max(versions, key=lambda i: versions[i])
    assert final == contents[winner]
    assert len(set(versions.values())) == len(contents)
    assert seen <= {initial, *contents}, "a reader saw a mix"
    await store.collect_garbage()
    assert (await store.fsck()).ok


async def test_exclusive_writers_exactly_one_wins(store: Store) -> None:
    outcomes: list[str] = []

    async def writer(i: int) -> None:
        try:
            await store.write_bytes("/x", data(CS + i, seed=i), mode=WriteMode.EXCLUSIVE)
            outcomes.append(f"ok{i}")
        except AlreadyExistsError:
            outcomes.append("exists")

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(writer, i)
    winners = [o for o in outcomes if o.startswith("ok")]
    assert len(winners) == 1
    assert outcomes.count("exists") == 4
    i = int(winners[0][2:])
    assert await store.read_bytes("/x") == data(CS + i, seed=i)


async def test_lock_table() -> None:
    table: LockTable[str] = LockTable(timeout=0.05)
    async with table.hold(["a", "b"]):
        assert table.locked("a")
        assert table.locked("b")
        async with table.hold(["c"]):  # another key: no wait
            pass
        failures: list[BaseException] = []

        async def contender() -> None:
            try:
                async with table.hold(["b"]):
                    pass
            except TimeoutError_ as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(contender)
        assert len(failures) == 1
    assert len(table) == 0  # entries are dropped when unused


@pytest.mark.parametrize("io_threads", [1, 2])
async def test_pieces_waiting_in_threads_never_starve_the_pieces_they_wait_for(
    tmp_path: Path, io_threads: int
) -> None:
    """Each piece hashes and writes in one worker thread, where it waits for the piece
    before it: with fewer threads than pieces in flight (many uploads, deep pipelines),
    every upload still completes, streamed and ingested, with the right content."""
    uploads = 6
    contents = [data(5 * CS + 123 * i, seed=40 + i) for i in range(uploads)]
    async with open_store(
        tmp_path / "s",
        chunk_size=CS,
        io_threads=io_threads,
        upload_buffer=4096,
        upload_pipeline=4,
        upload_extra_buffers=3 * uploads,
        upload_batch=2,
    ) as store:

        async def streamed(i: int) -> None:
            async with await store.begin_upload(f"/s{i}") as up:
                for start in range(0, len(contents[i]), 3000):
                    await up.write(contents[i][start : start + 3000])
                await up.commit()

        async def ingested(i: int) -> None:
            source = tmp_path / f"src{i}"
            source.write_bytes(contents[i])
            fd = os.open(source, os.O_RDONLY)
            try:
                await store.ingest_fd(f"/i{i}", fd, len(contents[i]))
            finally:
                os.close(fd)

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for i in range(uploads):
                    nursery.start_soon(streamed, i)
                    nursery.start_soon(ingested, i)
        for i in range(uploads):
            assert await store.read_bytes(f"/s{i}") == contents[i]
            assert await store.read_bytes(f"/i{i}") == contents[i]
