"""Integrity: a chunk that rots on disk is never trusted again.

A new upload of content the store holds already publishes its freshly hashed chunks over the
stored files (so it heals a chunk that rotted since), and never acknowledges a file whose
chunks are not known to be good. A chunk found corrupt (by a read, a resume or fsck) is
moved to quarantine, recorded, counted and logged, never served or reused, until an upload
of its content heals it or nothing references it any more.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import blake3
import pytest
import trio

from librorum.errors import CorruptDataError, NotFoundError
from librorum.store import Store, open_store
from librorum.store.objects import VERIFY_PIECE, CorruptChunkError
from tests.store.conftest import TEST_CHUNK_SIZE
from tests.store.test_api import data

CS = TEST_CHUNK_SIZE
DEADLINE = 20.0


def chunk_path(store: Store, chunk: bytes) -> Path:
    digest = blake3.blake3(chunk).hexdigest()
    return store.data_dir / "chunks" / digest[:2] / digest


def flip_byte(path: Path, offset: int) -> None:
    """Corrupt a chunk file in place (the same inode, as bit rot would)."""
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    with path.open("r+b") as file:
        file.write(raw)


async def write_whole(store: Store, path: str, content: bytes, tmp: Path) -> None:
    await store.write_bytes(path, content)


async def write_in_pieces(store: Store, path: str, content: bytes, tmp: Path) -> None:
    async with await store.begin_upload(path) as up:
        for start in range(0, len(content), 1000):
            await up.write(content[start : start + 1000])
        await up.commit()


async def write_resumable(store: Store, path: str, content: bytes, tmp: Path) -> None:
    async with await store.begin_upload(path, upload_id="heal") as up:
        await up.write(content[: CS + 10])
        await up.detach()
    up = await store.resume_upload("heal")
    async with up:
        await up.write(content[up.offset :])
        await up.commit()


async def ingest(store: Store, path: str, content: bytes, tmp: Path) -> None:
    source = tmp / "source"
    source.write_bytes(content)
    fd = os.open(source, os.O_RDONLY)
    try:
        await store.ingest_fd(path, fd, len(content))
    finally:
        os.close(fd)


Writer = Callable[[Store, str, bytes, Path], Awaitable[None]]
WRITERS: dict[str, Writer] = {
    "write_bytes": write_whole,
    "pieces": write_in_pieces,
    "resumable": write_resumable,
    "ingest_fd": ingest,
}


@pytest.mark.parametrize("how", list(WRITERS))
async def test_an_upload_of_stored_content_heals_a_rotten_chunk(
    how: str, store: Store, tmp_path: Path
) -> None:
    content = data(3 * CS + 5, seed=7)
    with trio.fail_after(DEADLINE):
        await store.write_bytes("/f", content)
        flip_byte(chunk_path(store, content[CS : 2 * CS]), 100)
        # The same content again: its chunks are all stored, one of them rotten.
        await WRITERS[how](store, "/g", content, tmp_path)
        # What was acknowledged is readable, and so is the older file sharing the chunk.
        assert await store.read_bytes("/g") == content
        assert await store.read_bytes("/f") == content
        report = await store.fsck()
        assert report.ok, report
        assert (report.pending, report.temp_files) == (0, 0)


async def test_a_rotten_chunk_in_the_same_batch_twice_is_healed(store: Store) -> None:
    """A repeat of a digest within one upload is dropped, the first copy published."""
    block = data(CS, seed=8)
    await store.write_bytes("/f", block)
    flip_byte(chunk_path(store, block), 0)
    with trio.fail_after(DEADLINE):
        await store.write_bytes("/g", block * 3)
        assert await store.read_bytes("/g") == block * 3
        assert await store.read_bytes("/f") == block


async def test_a_missing_chunk_is_restored_by_an_upload(store: Store) -> None:
    content = data(2 * CS, seed=9)
    await store.write_bytes("/f", content)
    chunk_path(store, content[:CS]).unlink()
    with trio.fail_after(DEADLINE):
        with pytest.raises(CorruptDataError):
            await store.read_bytes("/f")
        await store.write_bytes("/g", content)
        assert await store.read_bytes("/f") == content
        assert (await store.fsck()).ok


# --- Quarantine ---------------------------------------------------------------------------------


def quarantined_files(store: Store) -> set[str]:
    return set(os.listdir(store.data_dir / "quarantine"))


async def read_pieces(store: Store, path: str) -> bytes:
    return await store.read_bytes(path)


async def read_segments(store: Store, path: str) -> bytes:
    out = bytearray()
    async with store.open_read(path) as reader:
        async for segment in reader.segments():
            out += os.pread(segment.fd, segment.length, segment.offset)
    return bytes(out)


Reading = Callable[[Store, str], Awaitable[bytes]]


@pytest.mark.parametrize("read", [read_pieces, read_segments], ids=["pieces", "segments"])
async def test_a_chunk_found_corrupt_on_read_is_quarantined_until_healed(
    read: Reading, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    content = data(3 * CS, seed=10)
    bad = content[CS : 2 * CS]
    digest = blake3.blake3(bad).hexdigest()
    with trio.fail_after(DEADLINE):
        await store.write_bytes("/f", content)
        path = chunk_path(store, bad)
        flip_byte(path, 7)
        with pytest.raises(CorruptDataError):
            await read(store, "/f")
        # Moved aside, recorded, counted, reported, logged at ERROR.
        assert not path.exists()
        assert quarantined_files(store) == {digest}
        assert (await store.status()).quarantined == 1
        report = await store.fsck()
        assert (report.quarantined, report.quarantined_count, report.missing) == ([digest], 1, [])
        assert not report.ok
        errors = [r for r in caplog.records if r.levelname == "ERROR" and digest in r.message]
        assert errors, caplog.text
        # Never served again; the rest of the file still is.
        with pytest.raises(CorruptDataError):
            await read(store, "/f")
        assert await store.read_bytes("/f", length=CS) == content[:CS]
        # An upload of content holding the chunk heals it.
        await store.write_bytes("/g", bad)
        assert await read(store, "/f") == content
        assert quarantined_files(store) == set()
        assert (await store.status()).quarantined == 0
        report = await store.fsck()
        assert report.ok, report


async def test_a_chunk_found_corrupt_by_fsck_is_quarantined(store: Store) -> None:
    content = data(2 * CS, seed=11)
    digest = blake3.blake3(content[:CS]).hexdigest()
    with trio.fail_after(DEADLINE):
        await store.write_bytes("/f", content)
        flip_byte(chunk_path(store, content[:CS]), CS - 1)
        report = await store.fsck()
        assert (report.corrupt, report.quarantined) == ([digest], [digest])
        assert quarantined_files(store) == {digest}
        with pytest.raises(CorruptDataError):
            await store.read_bytes("/f")


async def test_a_resumed_upload_with_a_corrupt_chunk_is_refused_and_collectable(
    store: Store,
) -> None:
    content = data(3 * CS, seed=12)
    digest = blake3.blake3(content[:CS]).hexdigest()
    with trio.fail_after(DEADLINE):
        async with await store.begin_upload("/r", upload_id="u") as up:
            await up.write(content[: 2 * CS])
            await up.detach()
        flip_byte(chunk_path(store, content[:CS]), 1)
        with pytest.raises(CorruptDataError):
            await store.resume_upload("u")
        assert quarantined_files(store) == {digest}
        # Aborting releases the only reference: the collector drops the quarantined copy
        # and its record with the chunk.
        await store.abort_upload("u")
        await store.collect_garbage()
        assert quarantined_files(store) == set()
        assert (await store.status()).quarantined == 0
        report = await store.fsck()
        assert report.ok, report


async def test_a_commit_over_a_chunk_quarantined_since_it_was_verified_is_refused(
    store: Store,
) -> None:
    content = data(3 * CS, seed=13)
    with trio.fail_after(DEADLINE):
        async with await store.begin_upload("/r", upload_id="u") as up:
            await up.write(content[: 2 * CS])
            await up.detach()
        up = await store.resume_upload("u")  # verifies the two chunks stored so far
        async with up:
            flip_byte(chunk_path(store, content[:CS]), 1)
            await store.fsck()  # finds the chunk corrupt: quarantined
            await up.write(content[up.offset :])
            with pytest.raises(CorruptDataError):
                await up.commit()
        with pytest.raises(NotFoundError):
            await store.stat("/r")


async def test_quarantine_never_moves_a_fresh_copy_published_since(store: Store) -> None:
    """A chunk found bad, then healed by an upload before the quarantine takes the chunk's
    lock: the good copy stays where it is."""
    content = data(CS, seed=14)
    with trio.fail_after(DEADLINE):
        await store.write_bytes("/f", content)
        flip_byte(chunk_path(store, content), 3)
        digest = blake3.blake3(content).digest()
        with pytest.raises(CorruptChunkError) as found:
            await store._engine.objects.check(digest, CS)
        await store.write_bytes("/g", content)  # heals: a fresh file under the name
        await store._engine.on_corrupt(found.value, CS, "a read that lost the race")
        assert chunk_path(store, content).exists()
        assert quarantined_files(store) == set()
        assert (await store.status()).quarantined == 0
        assert await store.read_bytes("/f") == content


async def test_quarantine_survives_a_restart_and_leftovers_are_cleared(tmp_path: Path) -> None:
    content = data(2 * CS, seed=15)
    digest = blake3.blake3(content[:CS]).hexdigest()
    with trio.fail_after(DEADLINE):
        async with open_store(tmp_path / "s", chunk_size=CS) as store:
            await store.write_bytes("/f", content)
            flip_byte(chunk_path(store, content[:CS]), 5)
            with pytest.raises(CorruptDataError):
                await store.read_bytes("/f")
            # A copy that no record names, as a heal interrupted by a crash leaves.
            (store.data_dir / "quarantine" / ("ab" * 32)).write_bytes(b"stale")
        async with open_store(tmp_path / "s", chunk_size=CS) as store:
            assert quarantined_files(store) == {digest}
            assert (await store.status()).quarantined == 1
            with pytest.raises(CorruptDataError):
                await store.read_bytes("/f")
            await store.write_bytes("/g", content[:CS])
            assert await store.read_bytes("/f") == content


@pytest.mark.parametrize("damage", ["last byte flipped", "last byte cut"])
async def test_a_chunk_checked_for_sending_is_hashed_to_its_last_byte(
    damage: str, tmp_path: Path
) -> None:
    """Chunks longer than the piece they are read in for checking: a fault in the last
    piece, or a file one byte short, is found before a segment is handed out."""
    size = 2 * VERIFY_PIECE + 5
    content = data(size, seed=11)
    with trio.fail_after(DEADLINE):
        async with open_store(tmp_path / "s", chunk_size=size) as store:
            await store.write_bytes("/f", content)
            assert await read_segments(store, "/f") == content
            path = chunk_path(store, content)
            if damage == "last byte flipped":
                flip_byte(path, size - 1)
            else:
                os.truncate(path, size - 1)
            async with store.open_read("/f") as reader:
                segments = reader.segments()
                with pytest.raises(CorruptDataError, match=r"failed verification|truncated"):
                    await segments.__anext__()
            assert not path.exists()  # quarantined


async def test_a_chunk_found_corrupt_on_a_read_only_store_stays_but_is_logged(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that cannot write cannot quarantine; the damage is still logged at ERROR
    (and the read still refuses the bad data)."""
    content = data(2 * CS, seed=11)
    bad = content[CS:]
    digest = blake3.blake3(bad).hexdigest()
    with trio.fail_after(DEADLINE):
        await store.write_bytes("/f", content)
        path = chunk_path(store, bad)
        flip_byte(path, 3)
        store._engine.on_fatal_io(OSError(5, "injected"))
        with pytest.raises(CorruptDataError):
            await store.read_bytes("/f")
        assert path.exists()  # not moved: the store writes nothing now
        assert quarantined_files(store) == set()
        errors = [r for r in caplog.records if r.levelname == "ERROR" and digest in r.message]
        assert errors, caplog.text
        assert "read-only" in errors[0].message
