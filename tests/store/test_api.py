"""Behaviour of the store's API on a real data directory (real SQLite, real files)."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest
import trio

from librorum.errors import (
    AlreadyExistsError,
    BusyError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    InvalidPathError,
    IsADirectoryError_,
    NotADirectoryError_,
    NotEmptyError,
    NotFoundError,
    TooLargeError,
)
from librorum.protocol.constants import EntryKind, WriteMode
from librorum.store import Store, open_store
from tests.store.conftest import TEST_CHUNK_SIZE

CS = TEST_CHUNK_SIZE


def data(n: int, seed: int = 0) -> bytes:
    """Deterministic, chunk-distinct content."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += blake3.blake3(f"{seed}:{counter}".encode()).digest(length=1024)
        counter += 1
    return bytes(out[:n])


def chunk_files(store: Store) -> set[str]:
    root = store.data_dir / "chunks"
    return {name for shard in root.iterdir() for name in os.listdir(shard)}


async def test_write_read_stat(store: Store) -> None:
    content = data(3 * CS + 17)
    info = await store.write_bytes("/f", content)
    assert info.path == "/f"
    assert info.kind is EntryKind.FILE
    assert info.size == len(content)
    assert info.content_hash == blake3.blake3(content).digest()
    assert await store.stat("f") == info
    assert await store.read_bytes("/f") == content
    for offset, length in [(0, 1), (CS - 1, 2), (CS, CS), (5, 3 * CS), (len(content) - 1, 10)]:
        assert (
            await store.read_bytes("/f", offset=offset, length=length)
            == content[offset : offset + length]
        )
    assert await store.read_bytes("/f", offset=len(content) + 5) == b""
    assert await store.read_bytes("/f", length=0) == b""


async def test_empty_file(store: Store) -> None:
    info = await store.write_bytes("/e", b"")
    assert info.size == 0
    assert info.content_hash == blake3.blake3(b"").digest()
    assert await store.read_bytes("/e") == b""
    async with store.open_read("/e") as reader:
        assert reader.length == 0
        assert [bytes(p) async for p in reader] == []


async def test_versions_increase_and_survive_delete(store: Store) -> None:
    v1 = (await store.write_bytes("/f", b"1")).version
    v2 = (await store.write_bytes("/f", b"2")).version
    await store.delete("/f")
    v3 = (await store.write_bytes("/f", b"3")).version
    assert v1 < v2 < v3
    v4 = (await store.rename("/f", "/g")).version
    assert v4 > v3


async def test_modes(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await store.write_bytes("/f", b"x", mode=WriteMode.OVERWRITE)
    await store.write_bytes("/f", b"x", mode=WriteMode.EXCLUSIVE)
    with pytest.raises(AlreadyExistsError):
        await store.write_bytes("/f", b"y", mode=WriteMode.EXCLUSIVE)
    await store.write_bytes("/f", b"z", mode=WriteMode.OVERWRITE)
    assert await store.read_bytes("/f") == b"z"
    await store.mkdir("/d")
    with pytest.raises(IsADirectoryError_):
        await store.write_bytes("/d", b"x")
    with pytest.raises(AlreadyExistsError):
        await store.write_bytes("/d", b"x", mode=WriteMode.EXCLUSIVE)
    with pytest.raises(NotFoundError):
        await store.write_bytes("/nope/f", b"x")
    with pytest.raises(NotADirectoryError_):
        await store.write_bytes("/f/g", b"x")
    with pytest.raises(IsADirectoryError_):
        await store.write_bytes("/", b"x")


async def test_mode_rechecked_at_commit(store: Store) -> None:
    up = await store.begin_upload("/f", mode=WriteMode.EXCLUSIVE)
    await up.write(b"late")
    await store.write_bytes("/f", b"first")
    with pytest.raises(AlreadyExistsError):
        await up.commit()
    await up.abort()
    assert await store.read_bytes("/f") == b"first"
    await store.collect_garbage()
    assert (await store.fsck()).ok


async def test_sizes(tmp_path: Path) -> None:
    async with open_store(tmp_path / "s", chunk_size=CS, max_file_size=3 * CS) as store:
        with pytest.raises(TooLargeError):
            await store.begin_upload("/f", size=3 * CS + 1)
        async with await store.begin_upload("/f") as up:
            await up.write(data(3 * CS))
            with pytest.raises(TooLargeError):
                await up.write(b"x")
            assert up.offset == 3 * CS  # the refused write took nothing
            await up.commit()
        async with await store.begin_upload("/g", size=10) as up:
            with pytest.raises(TooLargeError):
                await up.write(b"x" * 11)
            await up.write(b"x" * 9)
            with pytest.raises(InvalidArgumentError):
                await up.commit()
            await up.write(b"x")
            assert (await up.commit()).size == 10
        assert await store.read_bytes("/g") == b"x" * 10


async def test_list_pagination(store: Store) -> None:
    await store.mkdir("/d")
    names = [*sorted(f"n{i:03d}" for i in range(25)), "Z", "a", "é", "日"]
    for name in names:
        await store.write_bytes(f"/d/{name}", b"")
    expected = sorted(names)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await store.list("/d", cursor=cursor, limit=7)
        assert len(page.entries) <= 7
        seen += [e.name for e in page.entries]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected
    whole = await store.list("/d", limit=len(names))
    assert whole.next_cursor is None
    with pytest.raises(NotADirectoryError_):
        await store.list(f"/d/{names[0]}")
    with pytest.raises(NotFoundError):
        await store.list("/missing")
    assert (await store.list("/")).entries[0].path == "/d"


async def test_mkdir(store: Store) -> None:
    info = await store.mkdir("/a")
    assert info.kind is EntryKind.DIRECTORY
    with pytest.raises(AlreadyExistsError):
        await store.mkdir("/a")
    assert await store.mkdir("/a", parents=True) == info
    with pytest.raises(NotFoundError):
        await store.mkdir("/x/y")
    await store.mkdir("/x/y/z", parents=True)
    assert (await store.stat("/x/y")).kind is EntryKind.DIRECTORY
    await store.write_bytes("/x/f", b"")
    with pytest.raises(NotADirectoryError_):
        await store.mkdir("/x/f/g", parents=True)
    with pytest.raises(AlreadyExistsError):
        await store.mkdir("/x/f", parents=True)
    with pytest.raises(AlreadyExistsError):
        await store.mkdir("/")
    assert (await store.mkdir("/", parents=True)).path == "/"
    with pytest.raises(InvalidPathError):
        await store.mkdir("/a/../b")


async def test_delete(store: Store) -> None:
    await store.mkdir("/a/b/c", parents=True)
    await store.write_bytes("/a/b/c/f", data(2 * CS))
    await store.write_bytes("/a/g", b"g")
    with pytest.raises(NotEmptyError):
        await store.delete("/a")
    with pytest.raises(NotFoundError):
        await store.delete("/zz")
    # Spec 5.7: an operation on the root is BAD_REQUEST; "" names the root too (5.1).
    for root in ("/", ""):
        with pytest.raises(InvalidArgumentError):
            await store.delete(root, recursive=True)
    with pytest.raises(InvalidPathError):
        await store.delete("/a/")
    assert await store.delete("/a", recursive=True) == 5
    with pytest.raises(NotFoundError):
        await store.stat("/a/g")
    await store.mkdir("/e")
    assert await store.delete("/e") == 1
    await store.collect_garbage()
    assert chunk_files(store) == set()
    status = await store.status()
    assert (status.files, status.directories, status.chunks, status.stored_bytes) == (0, 1, 0, 0)


async def test_rename(store: Store) -> None:
    await store.mkdir("/a/b", parents=True)
    await store.write_bytes("/a/b/f", b"f")
    await store.write_bytes("/g", b"g")
    info = await store.rename("/a", "/c")
    assert info.path == "/c"
    assert await store.read_bytes("/c/b/f") == b"f"
    with pytest.raises(NotFoundError):
        await store.stat("/a")
    with pytest.raises(AlreadyExistsError):
        await store.rename("/g", "/c/b/f")
    await store.rename("/g", "/c/b/f", overwrite=True)
    assert await store.read_bytes("/c/b/f") == b"g"
    with pytest.raises(IsADirectoryError_):
        await store.rename("/c/b/f", "/c/b", overwrite=True)
    await store.write_bytes("/h", b"h")
    with pytest.raises(NotADirectoryError_):
        await store.rename("/c/b", "/h", overwrite=True)
    # Spec 5.8: the root as src or dst, or dst inside src, is BAD_REQUEST.
    with pytest.raises(InvalidArgumentError):
        await store.rename("/c", "/c/b/inside")
    with pytest.raises(InvalidArgumentError):
        await store.rename("/", "/x")
    with pytest.raises(InvalidArgumentError):
        await store.rename("/c", "/")
    with pytest.raises(InvalidPathError):
        await store.rename("/c/", "/x")
    with pytest.raises(NotFoundError):
        await store.rename("/h", "/nope/h")
    with pytest.raises(NotFoundError):
        await store.rename("/nope", "/x")
    assert (await store.rename("/h", "/h")).path == "/h"
    await store.collect_garbage()
    assert (await store.fsck()).ok


async def test_dedup_and_refcounts(store: Store) -> None:
    content = data(3 * CS)
    await store.write_bytes("/a", content)
    files = chunk_files(store)
    assert len(files) == 3
    await store.write_bytes("/b", content)
    await store.write_bytes("/c", content[:CS] + data(CS, seed=9))
    assert len(chunk_files(store)) == 4
    status = await store.status()
    assert status.logical_bytes == 8 * CS
    assert status.stored_bytes == 4 * CS
    await store.delete("/a")
    await store.collect_garbage()
    assert await store.read_bytes("/b") == content
    await store.delete("/b")
    await store.collect_garbage()
    assert len(chunk_files(store)) == 2
    assert (await store.fsck()).ok


async def test_reader_is_a_snapshot(store: Store) -> None:
    old = data(4 * CS, seed=1)
    await store.write_bytes("/f", old)
    async with store.open_read("/f") as reader:
        first = bytes(await reader.__anext__())
        await store.write_bytes("/f", data(4 * CS, seed=2))
        await store.delete("/f")
        await store.collect_garbage()
        rest = b"".join([bytes(p) async for p in reader])
    assert first + rest == old
    await store.collect_garbage()
    assert chunk_files(store) == set()


async def test_segments_sendfile(store: Store, tmp_path: Path) -> None:
    content = data(3 * CS + 100)
    await store.write_bytes("/f", content)
    out_path = tmp_path / "out"
    with out_path.open("wb") as out:
        async with store.open_read("/f", offset=CS - 10, length=CS + 200) as reader:
            async for seg in reader.segments():
                sent = 0
                while sent < seg.length:
                    sent += os.sendfile(out.fileno(), seg.fd, seg.offset + sent, seg.length - sent)
    assert out_path.read_bytes() == content[CS - 10 : 2 * CS + 190]


async def test_corruption_is_detected(store: Store) -> None:
    content = data(2 * CS)
    await store.write_bytes("/f", content)
    digest = blake3.blake3(content[CS:]).hexdigest()
    path = store.data_dir / "chunks" / digest[:2] / digest
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    path.write_bytes(raw)
    report = await store.fsck()
    assert not report.ok
    assert report.corrupt == [digest]
    assert await store.read_bytes("/f", length=CS) == content[:CS]
    # fsck quarantined it: moved aside, never served.
    assert not path.exists()
    with pytest.raises(CorruptDataError):
        await store.read_bytes("/f")
    async with store.open_read("/f", offset=CS) as reader:
        with pytest.raises(CorruptDataError):
            await reader.segments().__anext__()
    report = await store.fsck()
    assert (report.corrupt, report.missing, report.quarantined) == ([], [], [digest])
    assert not report.ok


async def test_a_missing_chunk_is_reported_missing(store: Store) -> None:
    content = data(2 * CS)
    await store.write_bytes("/f", content)
    digest = blake3.blake3(content[CS:]).hexdigest()
    (store.data_dir / "chunks" / digest[:2] / digest).unlink()
    with pytest.raises(CorruptDataError):
        await store.read_bytes("/f", offset=CS + 1)
    report = await store.fsck()
    assert (report.missing, report.quarantined) == ([digest], [])


async def test_resumable_upload(store: Store) -> None:
    content = data(5 * CS + 7)
    up = await store.begin_upload("/f", upload_id="u-1", size=len(content))
    with pytest.raises(ConflictError):
        await store.begin_upload("/g", upload_id="u-1")
    with pytest.raises(ConflictError):
        await store.resume_upload("u-1")
    await up.write(content[: 2 * CS + 100])
    await up.detach()
    status = await store.upload_status("u-1")
    assert (status.path, status.offset, status.size) == ("/f", 2 * CS, len(content))
    with pytest.raises(ConflictError):
        await store.resume_upload("u-1", offset=2 * CS + 100)
    up = await store.resume_upload("u-1", offset=2 * CS)
    assert up.offset == 2 * CS
    await up.write(content[2 * CS :])
    info = await up.commit()
    assert info.content_hash == blake3.blake3(content).digest()
    assert await store.read_bytes("/f") == content
    with pytest.raises(NotFoundError):
        await store.upload_status("u-1")
    with pytest.raises(InvalidPathError):
        await store.upload_status("")
    await store.collect_garbage()
    assert (await store.fsck()).ok


async def test_resumable_upload_survives_restart_and_abort(tmp_path: Path) -> None:
    content = data(4 * CS)
    async with open_store(tmp_path / "s", chunk_size=CS) as store:
        up = await store.begin_upload("/f", upload_id="u")
        await up.write(content[: 3 * CS])
        # No detach: the store closes with the upload attached.
    async with open_store(tmp_path / "s", chunk_size=CS) as store:
        assert store.recovery is not None
        assert store.recovery.uploads_kept == 1
        assert (await store.upload_status("u")).offset == 3 * CS
        await store.abort_upload("u")
        with pytest.raises(NotFoundError):
            await store.upload_status("u")
        await store.collect_garbage()
        assert chunk_files(store) == set()
        assert (await store.status()).uploads == 0


async def test_abort_leaves_nothing(store: Store) -> None:
    async with await store.begin_upload("/f") as up:
        await up.write(data(3 * CS))
    with pytest.raises(NotFoundError):
        await store.stat("/f")
    await store.collect_garbage()
    assert chunk_files(store) == set()
    report = await store.fsck()
    assert report.ok
    assert (report.pending, report.temp_files) == (0, 0)


async def test_ingest_fd(store: Store, tmp_path: Path) -> None:
    content = data(3 * CS + 5)
    src = tmp_path / "src"
    src.write_bytes(content)
    fd = os.open(src, os.O_RDONLY)
    try:
        info = await store.ingest_fd("/f", fd, len(content))
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        with pytest.raises(InvalidArgumentError):
            await store.ingest_fd("/g", fd, len(content) + 1)
    finally:
        os.close(fd)
    assert info.content_hash == blake3.blake3(content).digest()
    assert await store.read_bytes("/f") == content
    memfd = os.memfd_create("ingest")
    try:
        os.write(memfd, content)
        info = await store.ingest_fd("/m", memfd, len(content))
    finally:
        os.close(memfd)
    assert await store.read_bytes("/m") == content
    assert info.content_hash == blake3.blake3(content).digest()
    r, w = os.pipe()
    try:
        with pytest.raises(InvalidArgumentError):
            await store.ingest_fd("/p", r, 0)
    finally:
        os.close(r)
        os.close(w)
    assert len(chunk_files(store)) == 4  # the memfd copy deduplicated
    assert (await store.fsck()).ok


async def test_store_is_exclusive_to_one_process(tmp_path: Path) -> None:
    async with open_store(tmp_path / "s", chunk_size=CS):
        with pytest.raises(BusyError):
            async with open_store(tmp_path / "s", chunk_size=CS):
                pass


async def test_errors_inside_the_block_come_out_unwrapped(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        async with open_store(tmp_path / "s", chunk_size=CS) as store:
            await store.stat("/missing")


async def test_status(store: Store) -> None:
    await store.mkdir("/d")
    await store.write_bytes("/d/f", data(CS + 1))
    status = await store.status()
    assert (status.files, status.directories, status.logical_bytes) == (1, 2, CS + 1)
    assert (status.chunks, status.stored_bytes) == (2, CS + 1)
    assert status.free_bytes > 0
    assert not status.read_only


async def test_cancelled_upload_write_leaves_nothing(store: Store) -> None:
    with trio.move_on_after(0) as scope:
        async with await store.begin_upload("/f") as up:
            await up.write(data(4 * CS))
            await up.commit()
    assert scope.cancelled_caught
    with pytest.raises(NotFoundError):
        await store.stat("/f")
    await store.collect_garbage()
    assert (await store.fsck()).ok


async def test_large_list_pages_match_small_ones(store: Store) -> None:
    # Pages above the inline limit are read in a worker thread: same answers.
    await store.mkdir("/big")
    for i in range(150):
        await store.mkdir(f"/big/d{i:03d}")
    big = await store.list("/big", limit=1000)
    assert big.next_cursor is None
    small: list[str] = []
    cursor: str | None = None
    while True:
        page = await store.list("/big", cursor=cursor, limit=40)
        small += [e.path for e in page.entries]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [e.path for e in big.entries] == small == [f"/big/d{i:03d}" for i in range(150)]
    page = await store.list("/big", cursor="d099", limit=120)
    assert [e.name for e in page.entries] == [f"d{i:03d}" for i in range(100, 150)]


async def test_expire_uploads(store: Store) -> None:
    for name in ("old-1", "old-2"):
        async with await store.begin_upload(f"/{name}", upload_id=name) as up:
            await up.write(data(2 * CS, seed=len(name)))
    attached = await store.begin_upload("/busy", upload_id="busy")
    assert await store.expire_uploads(3600) == 0
    assert await store.expire_uploads(0) == 2  # the attached one is kept
    with pytest.raises(NotFoundError):
        await store.upload_status("old-1")
    await attached.abort()
    await store.collect_garbage()
    assert chunk_files(store) == set()
    assert (await store.status()).uploads == 0
