"""A full disk: new data is refused below the free-space floor, and a disk full to the last
byte never wedges the store: deletes, renames and reads go on (also after a restart), and
writes are admitted again once deletes free space, without a restart.

The same scenario runs on a modelled disk (``fsshim.DiskFS``, any user) and on a real 64 MiB
tmpfs (root only: mounting needs it; CI runs as root, so there it always runs).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Protocol

import pytest
import trio

from librorum.errors import NoSpaceError, NotFoundError
from librorum.store import Store, open_store
from tests.store.fsshim import DiskFS
from tests.store.test_api import data
from tests.tmpfs import CAN_MOUNT, tmpfs

MIB = 1 << 20
CHUNK = MIB
FLOOR = 4 * MIB
DEADLINE = 60.0
#: Upload sizes, in turn: several chunks, one, less than one, a few blocks.
SIZES = (3 * MIB + 5, MIB, 700_000, 20_000)


class Disk(Protocol):
    root: Path

    def open(self) -> contextlib.AbstractAsyncContextManager[Store]: ...

    def fill(self) -> None:
        """Take every byte still free (another program filling the disk)."""

    def free(self) -> int: ...


class ModelDisk:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.shim = DiskFS(capacity=48 * MIB)

    def open(self) -> contextlib.AbstractAsyncContextManager[Store]:
        return open_store(
            self.root,
            chunk_size=CHUNK,
            min_free_space=FLOOR,
            metadata_reserve=MIB,
            fs=self.shim,
        )

    def fill(self) -> None:
        self.shim.fill()

    def free(self) -> int:
        return self.shim.free


class TmpfsDisk:
    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.root = mount / "store"

    def open(self) -> contextlib.AbstractAsyncContextManager[Store]:
        # The default metadata reserve (8 MiB): SQLite's real log needs real space.
        return open_store(self.root, chunk_size=CHUNK, min_free_space=FLOOR)

    def fill(self) -> None:
        fd = os.open(self.mount / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (MIB, 4096, 1):
                block = b"\0" * size
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, block)
        finally:
            os.close(fd)

    def free(self) -> int:
        st = os.statvfs(self.mount)
        return st.f_bavail * st.f_frsize


def temp_files(disk: Disk) -> int:
    return len(os.listdir(disk.root / "tmp"))


async def scenario(disk: Disk) -> dict[str, int]:
    """Fill, check everything that must keep working, restart, free space, write again."""
    stored: dict[str, bytes] = {}
    figures = {"uploads": 0, "refused": 0}
    async with disk.open() as store:
        # Uploads of various sizes until the store refuses one: each refusal is clean.
        for i in range(1000):
            body = data(SIZES[i % len(SIZES)], seed=i)
            try:
                await store.write_bytes(f"/f{i}", body)
            except NoSpaceError:
                figures["refused"] += 1
                with pytest.raises(NotFoundError):
                    await store.stat(f"/f{i}")
                assert temp_files(disk) == 0
                if figures["refused"] == 3:
                    break
                continue
            stored[f"/f{i}"] = body
            figures["uploads"] += 1
        assert figures["refused"] == 3
        # Then 1-byte files and directories until they fail too (new data: at the floor).
        for kind in ("small_files", "mkdirs"):
            figures[kind] = 0
            for i in range(10_000):
                try:
                    if kind == "mkdirs":
                        await store.mkdir(f"/d{i}")
                    else:
                        await store.write_bytes(f"/s{i}", b"x")
                except NoSpaceError:
                    break
                figures[kind] += 1
            else:
                pytest.fail(f"{kind} never ran out of space")
        # Then the disk fills to the last byte.
        disk.fill()
        assert disk.free() == 0
        # Deletes, renames and reads go on.
        first = next(iter(stored))
        assert await store.delete(first) == 1
        del stored[first]
        second = next(iter(stored))
        await store.rename(second, "/renamed")
        stored["/renamed"] = stored.pop(second)
        for path, body in stored.items():
            assert await store.read_bytes(path) == body
    async with disk.open() as store:
        # After a restart on the full disk: deletes still work.
        third = next(iter(stored))
        assert await store.delete(third) == 1
        del stored[third]
        # Free space by deleting until a write is admitted again, without a restart.
        deletes = 0
        while True:
            try:
                await store.write_bytes("/again", b"written once space was freed")
                break
            except NoSpaceError:
                pass
            path = next(iter(stored))
            assert await store.delete(path) == 1
            del stored[path]
            deletes += 1
        figures["deletes_until_writable"] = deletes
        await store.mkdir("/dir")
        for i in range(figures["small_files"]):
            assert await store.read_bytes(f"/s{i}") == b"x"
        for path, body in stored.items():
            assert await store.read_bytes(path) == body
        await store.collect_garbage()
        report = await store.fsck()
        assert report.ok, report
        assert (report.pending, report.temp_files) == (0, 0)
    return figures


async def test_a_full_modelled_disk_never_wedges_the_store(tmp_path: Path) -> None:
    disk = ModelDisk(tmp_path / "store")
    with trio.fail_after(DEADLINE):
        figures = await scenario(disk)
    assert figures["uploads"] > 5


@pytest.mark.skipif(not CAN_MOUNT, reason="mounting a tmpfs needs root (CI runs as root)")
async def test_a_full_tmpfs_never_wedges_the_store(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt") as mount:
        disk = TmpfsDisk(mount)
        with trio.fail_after(DEADLINE):
            figures = await scenario(disk)
    assert figures["uploads"] > 5


async def test_the_floor_admits_writes_again_as_space_returns(tmp_path: Path) -> None:
    shim = DiskFS(capacity=32 * MIB)
    with trio.fail_after(DEADLINE):
        async with open_store(
            tmp_path / "s", chunk_size=CHUNK, min_free_space=FLOOR, metadata_reserve=MIB, fs=shim
        ) as store:
            shim.others = shim.free - FLOOR + 1  # just below the floor
            with pytest.raises(NoSpaceError, match="floor"):
                await store.write_bytes("/a", b"a")
            with pytest.raises(NoSpaceError, match="floor"):
                await store.mkdir("/d")
            shim.free_up(64 << 10)
            await store.write_bytes("/a", b"a")
            await store.mkdir("/d")
            assert (await store.status()).free_bytes == shim.free // shim.BLOCK * shim.BLOCK


async def test_an_upload_under_way_stops_at_the_floor(tmp_path: Path) -> None:
    """The floor is checked at every chunk: an upload admitted above it stops once it is
    crossed, and its temp files go."""
    shim = DiskFS(capacity=32 * MIB)
    with trio.fail_after(DEADLINE):
        async with open_store(
            tmp_path / "s", chunk_size=CHUNK, min_free_space=FLOOR, metadata_reserve=MIB, fs=shim
        ) as store:
            shim.others = shim.free - FLOOR - 2 * CHUNK  # room for two chunks above the floor
            with pytest.raises(NoSpaceError, match="floor"):
                await store.write_bytes("/big", data(8 * CHUNK))
            assert os.listdir(tmp_path / "s" / "tmp") == []
            with pytest.raises(NotFoundError):
                await store.stat("/big")


async def test_the_reserve_is_released_for_a_delete_and_allocated_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shim = DiskFS(capacity=32 * MIB)
    with trio.fail_after(DEADLINE):
        async with open_store(
            tmp_path / "s", chunk_size=CHUNK, min_free_space=0, metadata_reserve=MIB, fs=shim
        ) as store:
            assert store._engine.space.reserve_held
            await store.write_bytes("/a", data(2 * CHUNK))
            await store.write_bytes("/b", data(CHUNK, seed=1))
            shim.fill()
            assert await store.delete("/b") == 1  # needed the reserve
            assert any("metadata reserve" in r.message for r in caplog.records)
            # The chunk collected, its space came back: the reserve was allocated again.
            assert store._engine.space.reserve_held
            # New data may not take the space the reserve needs back.
            assert shim.free < MIB + CHUNK
            await store.delete("/a")
            await store.write_bytes("/c", b"c")
            assert store._engine.space.reserve_held


async def test_a_commit_that_finds_the_disk_full_fails_cleanly(tmp_path: Path) -> None:
    """Data writes never take the reserve: a commit short of space fails, the upload leaves
    nothing behind, and the store still deletes."""
    shim = DiskFS(capacity=32 * MIB)
    with trio.fail_after(DEADLINE):
        async with open_store(
            tmp_path / "s", chunk_size=CHUNK, min_free_space=0, metadata_reserve=MIB, fs=shim
        ) as store:
            await store.write_bytes("/keep", b"keep")
            up = await store.begin_upload("/f")
            async with up:
                await up.write(data(CHUNK + 10))
                shim.fill()
                with pytest.raises(NoSpaceError):
                    await up.commit()
            assert store._engine.space.reserve_held
            with pytest.raises(NotFoundError):
                await store.stat("/f")
            assert await store.delete("/keep") == 1
            assert os.listdir(tmp_path / "s" / "tmp") == []
