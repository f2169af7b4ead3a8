"""Integrity: a chunk that rots on disk is never trusted again.

A new upload of content the store holds already publishes its freshly hashed chunks over the
stored files (so it heals a chunk that rotted since), and never acknowledges a file whose
chunks are not known to be good.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import blake3
import pytest
import trio

from librorum.errors import CorruptDataError
from librorum.store import Store
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
