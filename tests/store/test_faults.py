"""Fault injection: EIO at every file-system operation of several workloads, ENOSPC at every
operation that writes (create, write, copy, fsync, rename, mkdir, metadata commit).

Each fault must surface as a clean StoreError (or not at all, where the operation was
already committed and only its cleanup failed), leave no descriptor open, and leave a store
that still works and checks clean once the fault is gone. An fsync failure fails its request
and turns the store read-only.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from librorum.errors import NoSpaceError, ReadOnlyError, StoreError, StoreIOError
from librorum.store import Store, open_store
from librorum.store.objects import SHARDS, TEMP_SUFFIX
from tests.store.conftest import FIGURES, TEST_CHUNK_SIZE, TEST_RESERVE, open_fd_count
from tests.store.fsshim import MUTATING, FaultFS, RecordingFS
from tests.store.test_api import data
from tests.store.test_crash import DIR, Tree, make, tree

CS = TEST_CHUNK_SIZE
A = data(3 * CS + 100, seed=11)
B = data(2 * CS, seed=12)
C = B[:CS] + data(CS + 3, seed=13)


async def w_write(store: Store, tmp: Path) -> None:
    await store.write_bytes("/f", A)
    await store.write_bytes("/g", C)
    assert await store.read_bytes("/f", offset=CS) == A[CS:]
    async with store.open_read("/g") as reader:
        async for _segment in reader.segments():
            pass
    await store.delete("/g")


async def w_ingest(store: Store, tmp: Path) -> None:
    src = tmp / "src"
    src.write_bytes(A)
    fd = os.open(src, os.O_RDONLY)
    try:
        await store.ingest_fd("/f", fd, len(A))
    finally:
        os.close(fd)


async def w_resumable(store: Store, tmp: Path) -> None:
    async with await store.begin_upload("/r", upload_id="u") as up:
        await up.write(A[: 2 * CS + 1])
        await up.detach()
    up = await store.resume_upload("u")
    async with up:
        await up.write(A[up.offset :])
        await up.commit()


async def w_namespace(store: Store, tmp: Path) -> None:
    await store.mkdir("/a/b", parents=True)
    await store.rename("/a", "/c")
    await store.rename("/g", "/c/b/g")
    await store.delete("/c", recursive=True)


Workload = Callable[[Store, Path], Awaitable[None]]
WORKLOADS: dict[str, tuple[Tree, Workload]] = {
    "write_read_delete": ({"/g": B}, w_write),
    "ingest_fd": ({}, w_ingest),
    "resumable": ({}, w_resumable),
    "namespace": ({"/g": B}, w_namespace),
}


async def run_once(
    name: str, template: Path, root: Path, fail_at: int | None, error: int
) -> tuple[str, str]:
    """Run the workload with one fault; check the aftermath. Returns (fault site, outcome)."""
    _initial, workload = WORKLOADS[name]
    shutil.copytree(template, root)
    fds_before = open_fd_count()
    shim = FaultFS()
    async with open_store(
        root,
        chunk_size=CS,
        upload_pipeline=1,
        read_ahead=1,
        metadata_reserve=TEST_RESERVE,
        fs=shim,
    ) as store:
        shim.arm(fail_at, error, only=MUTATING if error == errno.ENOSPC else None)
        outcome = "ok"
        try:
            await workload(store, root.parent)
        except StoreError as exc:
            outcome = type(exc).__name__
        shim.disarm()
        site = "none" if shim.fired is None else shim.fired[0]
        if shim.fired is not None and outcome != "ok":
            expected = NoSpaceError if error == errno.ENOSPC else StoreIOError
            allowed = {expected.__name__} | ({"ReadOnlyError"} if store.read_only else set())
            assert outcome in allowed, (site, outcome)
        if site in ("fsync", "commit") and outcome != "ok" and error == errno.EIO:
            # An fsync (or a commit, which fsyncs) that failed: the outcome on disk is
            # unknown, so the store must refuse further writes.
            assert store.read_only
        if store.read_only:
            with pytest.raises(ReadOnlyError):
                await store.write_bytes("/after", b"x")
            await tree(store)  # reads still work
        else:
            await store.write_bytes("/after", B)
            assert await store.read_bytes("/after") == B
            await store.collect_garbage()
            report = await store.fsck()
            assert report.ok, (shim.fired, report)
            assert (report.pending, report.temp_files) == (0, 0), (shim.fired, outcome, report)
    async with open_store(root, chunk_size=CS, metadata_reserve=TEST_RESERVE) as store:
        assert not store.read_only
        found = await tree(store)
        assert all(v == DIR or isinstance(v, bytes) for v in found.values())
        upload_ids = ["u"] if name == "resumable" else []
        for upload_id in upload_ids:
            try:
                await store.abort_upload(upload_id)
            except StoreError:
                pass
        await store.collect_garbage()
        report = await store.fsck()
        assert report.ok, report
        assert (report.pending, report.temp_files) == (0, 0), report
    assert open_fd_count() == fds_before, f"descriptor leak after a fault at {shim.fired}"
    return site, outcome


@pytest.mark.parametrize("name", list(WORKLOADS))
async def test_fault_at_every_operation(name: str, tmp_path: Path) -> None:
    template = tmp_path / "template"
    async with open_store(template, chunk_size=CS, metadata_reserve=TEST_RESERVE) as store:
        await make(store, WORKLOADS[name][0])
    sites: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    runs = 0
    for error in (errno.ENOSPC, errno.EIO):
        index = 0
        while True:
            root = tmp_path / f"{errno.errorcode[error]}-{index}" / "store"
            site, outcome = await run_once(name, template, root, index, error)
            if site == "none":
                break
            runs += 1
            key = f"{site}:{errno.errorcode[error]}"
            sites[key]["injected"] += 1
            sites[key]["handled"] += 1
            sites[key][outcome] += 1
            index += 1
    assert runs > 0
    FIGURES.setdefault("fault_sites", {})[name] = {
        "runs": runs,
        "sites": {k: dict(v) for k, v in sorted(sites.items())},
    }
    print(f"faults {name}: {runs} injected, all handled")


async def test_no_batch_is_published_after_a_failed_one(tmp_path: Path) -> None:
    """A resumable upload whose first batch failed to publish records nothing after it:
    what it records must stay a gapless prefix of its data, or a resume would splice."""
    content = data(4 * CS, seed=12)
    shim = FaultFS()
    async with open_store(
        tmp_path / "s", chunk_size=CS, upload_batch=1, upload_pipeline=1, fs=shim
    ) as store:
        shim.arm(0, errno.ENOSPC, only=frozenset({"rename"}))  # the first chunk's publish
        try:
            async with await store.begin_upload("/r", upload_id="u") as up:
                await up.write(content)
        except NoSpaceError:
            pass  # surfaced by the write, or (logged) by the detach on leaving
        shim.disarm()
        up = await store.resume_upload("u")
        async with up:
            assert up.offset == 0
            await up.write(content[up.offset :])
            await up.commit()
        assert await store.read_bytes("/r") == content


class _MeetingFS(RecordingFS):
    """Holds each fsync of a temp chunk file until ``parties`` of them wait at once; counts
    those that met (a bound on the wait makes a serial publish fail, not hang)."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties)
        self.met = 0

    def fsync(self, fd: int) -> None:
        if self._fd_paths.get(fd, "").endswith(TEMP_SUFFIX):
            try:
                self.barrier.wait(timeout=10)
            except threading.BrokenBarrierError:
                pass
            else:
                with self._lock:
                    self.met += 1
        super().fsync(fd)


async def test_a_batch_is_fsynced_in_parallel_and_in_the_durable_order(tmp_path: Path) -> None:
    """The chunk files of one batch are fsynced at the same time (so the file system makes
    them durable together), and still no chunk is renamed before every fsync of its batch
    has returned, nor a shard fsynced before every rename."""
    batch = 4
    content = data(batch * CS, seed=21)
    shim = _MeetingFS(batch)
    async with open_store(tmp_path / "s", chunk_size=CS, upload_batch=batch, fs=shim) as store:
        await store.write_bytes("/f", content)
        assert await store.read_bytes("/f") == content
    assert shim.met == batch
    ops = [(op, detail) for op, detail in shim.trace if op in ("fsync", "rename")]
    temp_fsyncs = [i for i, (op, d) in enumerate(ops) if op == "fsync" and d.endswith(TEMP_SUFFIX)]
    renames = [i for i, (op, _) in enumerate(ops) if op == "rename"]
    shard_fsyncs = [
        i for i, (op, d) in enumerate(ops) if op == "fsync" and os.path.basename(d) in SHARDS
    ]
    assert len(temp_fsyncs) == len(renames) == batch
    assert shard_fsyncs
    assert max(temp_fsyncs) < min(renames)
    assert max(renames) < min(shard_fsyncs)
