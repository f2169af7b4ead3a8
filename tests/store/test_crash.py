"""Crash consistency: crash at every file-system operation of a workload, recover, check.

One run of each workload goes through :class:`CrashFS`, which writes out, before every
mutating operation, the data directory a power loss at that instant would leave (unsynced file
data and unsynced directory entries dropped; the metadata as SQLite had committed it). Each
such state is then opened (recovery runs), and must hold the namespace exactly as before or
after each step of the workload (never a mix, never going back), with every file readable and
verified, no temp file left, nothing pending, and fsck clean.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from librorum.errors import NotFoundError
from librorum.protocol.constants import EntryKind
from librorum.store import Store, open_store
from tests.store.conftest import FIGURES, TEST_CHUNK_SIZE, TEST_RESERVE
from tests.store.fsshim import CrashFS
from tests.store.test_api import data

CS = TEST_CHUNK_SIZE
DIR = b"<dir>"
Tree = dict[str, bytes]

A = data(3 * CS + 100, seed=1)
B = data(2 * CS + 7, seed=2)
C = B[:CS] + data(2 * CS, seed=3)
G = data(CS // 2, seed=4)
X = data(CS, seed=5)
R = data(4 * CS + 9, seed=6)


async def tree(store: Store, path: str = "/") -> Tree:
    """Every entry below ``path`` with its content (directories as DIR), read and verified."""
    out: Tree = {}
    cursor: str | None = None
    while True:
        page = await store.list(path, cursor=cursor, limit=100)
        for entry in page.entries:
            if entry.kind is EntryKind.DIRECTORY:
                out[entry.path] = DIR
                out.update(await tree(store, entry.path))
            else:
                out[entry.path] = await store.read_bytes(entry.path)
        cursor = page.next_cursor
        if cursor is None:
            return out


async def make(store: Store, state: Tree) -> None:
    for path, content in sorted(state.items()):
        if content == DIR:
            await store.mkdir(path)
        else:
            await store.write_bytes(path, content)


Workload = Callable[[Store], Awaitable[None]]


async def w_new_file(store: Store) -> None:
    await store.write_bytes("/new", A)


async def w_overwrite(store: Store) -> None:
    await store.write_bytes("/f", C)


async def w_rename(store: Store) -> None:
    await store.rename("/d/f", "/g", overwrite=True)
    await store.rename("/d", "/e")


async def w_delete(store: Store) -> None:
    await store.delete("/d", recursive=True)


async def w_dedup(store: Store) -> None:
    await store.write_bytes("/g", B)
    await store.write_bytes("/h", B[: 2 * CS] + G)


async def w_resume(store: Store) -> None:
    up = await store.resume_upload("u")
    await up.write(R[up.offset :])
    await up.commit()


async def pre_resume(store: Store) -> None:
    up = await store.begin_upload("/r", upload_id="u", size=len(R))
    await up.write(R[: 2 * CS + 5])
    await up.detach()


# name: (initial tree, extra setup, workload, the states in order)
WORKLOADS: dict[str, tuple[Tree, Workload | None, Workload, list[Tree]]] = {
    "new_file": ({"/base": X}, None, w_new_file, [{"/base": X}, {"/base": X, "/new": A}]),
    "overwrite": ({"/f": B}, None, w_overwrite, [{"/f": B}, {"/f": C}]),
    "rename": (
        {"/d": DIR, "/d/f": B, "/g": G},
        None,
        w_rename,
        [
            {"/d": DIR, "/d/f": B, "/g": G},
            {"/d": DIR, "/g": B},
            {"/e": DIR, "/g": B},
        ],
    ),
    "delete": (
        {"/d": DIR, "/d/f": B, "/d/s": DIR, "/d/s/g": C, "/h": B},
        None,
        w_delete,
        [{"/d": DIR, "/d/f": B, "/d/s": DIR, "/d/s/g": C, "/h": B}, {"/h": B}],
    ),
    "dedup_write": (
        {"/f": B},
        None,
        w_dedup,
        [{"/f": B}, {"/f": B, "/g": B}, {"/f": B, "/g": B, "/h": B[: 2 * CS] + G}],
    ),
    "resumable_append": ({"/base": X}, pre_resume, w_resume, [{"/base": X}, {"/base": X, "/r": R}]),
}


async def check_resume_leftover(store: Store, state: int) -> None:
    """In the resumable workload, an uncommitted upload must be resumable to completion."""
    if state == 1:
        with pytest.raises(NotFoundError):
            await store.upload_status("u")
        return
    status = await store.upload_status("u")
    assert status.offset in (2 * CS, 3 * CS, 4 * CS)
    up = await store.resume_upload("u", offset=status.offset)
    await up.write(R[status.offset :])
    await up.commit()
    assert await store.read_bytes("/r") == R


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(WORKLOADS))
async def test_crash_at_every_operation(name: str, batch: int, tmp_path: Path) -> None:
    initial, setup, workload, states = WORKLOADS[name]
    root = tmp_path / "store"
    async with open_store(root, chunk_size=CS, metadata_reserve=TEST_RESERVE) as store:
        await make(store, initial)
        if setup is not None:
            await setup(store)
    shim = CrashFS(root, tmp_path / "crashes")
    # One chunk job and one read at a time: the operations come in a fixed order. Uploads
    # publish their chunks one at a time, or in batches of 3 (mid-file and at the commit).
    async with open_store(
        root,
        chunk_size=CS,
        upload_pipeline=1,
        upload_batch=batch,
        read_ahead=1,
        metadata_reserve=TEST_RESERVE,
        fs=shim,
    ) as store:
        await workload(store)
    shim.finish()
    assert shim.audit_failures == []
    assert shim.trace, "the shim saw nothing"

    survived = 0
    seen: list[int] = []
    for snapshot in shim.snapshots:
        async with open_store(snapshot, chunk_size=CS, metadata_reserve=TEST_RESERVE) as store:
            found = await tree(store)
            assert found in states, f"{snapshot.name}: a mixed state {sorted(found)}"
            index = states.index(found)
            assert not seen or index >= seen[-1], f"{snapshot.name}: went back in time"
            seen.append(index)
            if name == "resumable_append":
                await check_resume_leftover(store, index)
            await store.collect_garbage()
            report = await store.fsck()
            assert report.ok, f"{snapshot.name}: {report}"
            assert (report.pending, report.temp_files) == (0, 0), f"{snapshot.name}: {report}"
        survived += 1
    assert seen[-1] == len(states) - 1
    FIGURES.setdefault("crash_points", {})[f"{name} (batch {batch})"] = {
        "enumerated": len(shim.snapshots),
        "survived": survived,
        "states_seen": sorted(set(seen)),
        "operations_traced": len(shim.trace),
        "commits_audited": shim.commits_audited,
        "renames_audited": shim.renames_audited,
    }
    print(
        f"crash points {name}, batch {batch}: {len(shim.snapshots)} enumerated, {survived} survived"
    )
