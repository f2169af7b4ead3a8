"""Conformance of ``ObjectStore`` implementations: staging and batch publishing, ranged
gets, verification, listing, missing keys, quarantine, deletion, concurrent writers, and
what survives a close-and-reopen or a crash.
"""

from __future__ import annotations

import os

import blake3
import pytest
import trio

from librorum.errors import CorruptDataError
from librorum.store.objects import (
    DIRECT_ALIGN,
    SHARDS,
    CorruptChunkError,
    LocalObjects,
    ObjectStore,
    Staged,
    new_buffer,
)
from librorum.store.reader import make_verifier
from tests.store.conformance.backends import opened
from tests.store.conformance.conftest import NewBackend

#: Bytes of one staged piece (every piece but an object's last is a multiple of the
#: alignment, as the store's uploads write them).
PIECE = 2 * DIRECT_ALIGN


def digest(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


async def stage(objects: ObjectStore, data: bytes) -> Staged:
    """Stage ``data`` piece by piece, as an upload does."""
    staged = Staged()
    buf = new_buffer(PIECE)
    pos = 0
    while True:
        piece = data[pos : pos + PIECE]
        buf[: len(piece)] = piece
        pos += len(piece)
        last = pos >= len(data)
        await objects.stage_piece(staged, buf, len(piece), last=last)
        if last:
            break
    staged.digest = digest(data)
    return staged


async def put(objects: ObjectStore, *blobs: bytes) -> list[bytes]:
    """Stage and publish ``blobs`` as one batch; returns their keys."""
    staged = [await stage(objects, blob) for blob in blobs]
    await objects.publish_many(staged)
    return [s.digest for s in staged]


async def get(objects: ObjectStore, key: bytes, offset: int, length: int) -> bytes:
    into = bytearray(length)
    await objects.get(key, memoryview(into), offset, lambda view: None)
    return bytes(into)


async def test_published_objects_read_back_whole_and_in_ranges(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:
        blobs = [os.urandom(n) for n in (0, 1, DIRECT_ALIGN, 3 * PIECE + 17, 100_000)]
        keys = await put(o.objects, *blobs)
        for key, blob in zip(keys, blobs, strict=True):
            into = bytearray(len(blob))
            await o.objects.get(key, memoryview(into), 0, make_verifier(key))
            assert into == blob
            for offset, length in ((0, 1), (1, 0), (len(blob) // 3, len(blob) // 2)):
                if offset + length <= len(blob):
                    assert await get(o.objects, key, offset, length) == blob[offset:][:length]
            hasher = blake3.blake3()
            await o.objects.check(key, len(blob), also=hasher)
            assert hasher.digest() == key
        assert o.objects.count_temp_sync() == 0


async def test_listing_groups_keys_by_shard(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:
        keys = await put(o.objects, *(os.urandom(100) for _ in range(20)))
        listing = await o.objects.list_all()
        assert set(listing) == set(SHARDS)
        assert sorted(n for names in listing.values() for n in names) == sorted(
            k.hex() for k in keys
        )
        for shard, found in listing.items():
            assert all(name[:2] == shard for name in found)


async def test_staged_objects_are_invisible_until_published(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:
        blob = os.urandom(3 * PIECE)
        staged = await stage(o.objects, blob)
        assert o.objects.count_temp_sync() == 1
        with pytest.raises(CorruptChunkError) as missing:
            await get(o.objects, staged.digest, 0, 10)
        assert missing.value.identity is None
        assert all(not names for names in (await o.objects.list_all()).values())
        await o.objects.discard_many([staged])
        assert o.objects.count_temp_sync() == 0
        with pytest.raises(CorruptChunkError):
            await o.objects.check(staged.digest, len(blob))
        # Discarding twice, or what was never staged, is no error.
        await o.objects.discard_many([staged, Staged()])


async def test_missing_keys(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:
        key = digest(b"never stored")
        with pytest.raises(CorruptChunkError) as found:
            await get(o.objects, key, 0, 1)
        assert (found.value.digest, found.value.identity) == (key, None)
        with pytest.raises(CorruptChunkError) as found:
            await o.objects.check(key, 1)
        assert (found.value.digest, found.value.identity) == (key, None)
        assert isinstance(found.value, CorruptDataError)
        assert not await o.objects.is_current(key, (0, 0))
        assert not await o.objects.quarantine(key, (0, 0))
        await o.objects.delete([key])
        await o.objects.drop_quarantined([key])
        assert o.objects.list_quarantine_sync() == []


async def test_a_short_object_is_corrupt(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:
        blob = os.urandom(1000)
        (key,) = await put(o.objects, blob)
        with pytest.raises(CorruptChunkError) as short:
            await get(o.objects, key, 900, 200)
        assert short.value.identity is not None
        with pytest.raises(CorruptChunkError):
            await o.objects.check(key, 1001)


async def test_damage_is_found_and_quarantined(new_backend: NewBackend) -> None:
    backend = new_backend()
    async with opened(backend) as o:
        blob = os.urandom(5000)
        (key,) = await put(o.objects, blob)
        backend.damage(key)
        into = bytearray(len(blob))
        with pytest.raises(CorruptChunkError) as bad:
            await o.objects.get(key, memoryview(into), 0, make_verifier(key))
        identity = bad.value.identity
        assert identity is not None
        assert bad.value.digest == key
        also = blake3.blake3()
        with pytest.raises(CorruptChunkError):
            await o.objects.check(key, len(blob), also=also)
        assert also.digest() == blake3.blake3().digest()  # nothing fed from a bad object
        assert await o.objects.is_current(key, identity)
        assert await o.objects.quarantine(key, identity)
        assert o.objects.list_quarantine_sync() == [key.hex()]
        with pytest.raises(CorruptChunkError) as gone:
            await get(o.objects, key, 0, 1)
        assert gone.value.identity is None
        assert not await o.objects.quarantine(key, identity)
        await o.objects.drop_quarantined([key])
        assert o.objects.list_quarantine_sync() == []


async def test_publishing_again_replaces_a_bad_copy(new_backend: NewBackend) -> None:
    backend = new_backend()
    async with opened(backend) as o:
        blob = os.urandom(3000)
        (key,) = await put(o.objects, blob)
        backend.damage(key)
        with pytest.raises(CorruptChunkError) as bad:
            await o.objects.check(key, len(blob))
        identity = bad.value.identity
        assert identity is not None
        await put(o.objects, blob)
        await o.objects.check(key, len(blob))
        # The copy found bad is not the current one any more: quarantine leaves it alone.
        assert not await o.objects.is_current(key, identity)
        assert not await o.objects.quarantine(key, identity)
        assert await get(o.objects, key, 0, len(blob)) == blob


async def test_a_rejecting_verifier_reports_corruption(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:
        (key,) = await put(o.objects, b"x" * 100)

        def reject(view: memoryview) -> None:
            raise CorruptDataError("no")

        with pytest.raises(CorruptChunkError) as bad:
            await o.objects.get(key, memoryview(bytearray(100)), 0, reject)
        assert bad.value.identity is not None


async def test_delete(new_backend: NewBackend) -> None:
    backend = new_backend()
    async with opened(backend) as o:
        keep, drop = await put(o.objects, os.urandom(100), os.urandom(200))
        await o.objects.delete([drop, drop])
        with pytest.raises(CorruptChunkError):
            await o.objects.check(drop, 200)
        await o.objects.check(keep, 100)
    async with opened(backend) as o:
        with pytest.raises(CorruptChunkError):
            await o.objects.check(drop, 200)
        await o.objects.check(keep, 100)


async def test_concurrent_writers(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:
        blobs = {i: os.urandom(PIECE * (i % 3) + i + 1) for i in range(24)}
        keys: dict[int, bytes] = {}

        async def writer(first: int) -> None:
            for i in range(first, 24, 6):
                (keys[i],) = await put(o.objects, blobs[i])

        async with trio.open_nursery() as nursery:
            for first in range(6):
                nursery.start_soon(writer, first)
        for i, blob in blobs.items():
            assert await get(o.objects, keys[i], 0, len(blob)) == blob
        assert o.objects.count_temp_sync() == 0


async def test_local_files_can_be_sent(new_backend: NewBackend) -> None:
    backend = new_backend()
    async with opened(backend) as o:
        if not isinstance(o.objects, LocalObjects):
            pytest.skip("this object store keeps no local files")
        blob = os.urandom(10_000)
        (key,) = await put(o.objects, blob)
        fd = await trio.to_thread.run_sync(o.objects.open_verified, key, len(blob), key)
        try:
            assert os.pread(fd, len(blob) + 1, 0) == blob
        finally:
            os.close(fd)
        backend.damage(key)
        with pytest.raises(CorruptChunkError):
            await trio.to_thread.run_sync(o.objects.open_verified, key, len(blob), key)


async def test_what_survives_reopen(new_backend: NewBackend) -> None:
    backend = new_backend()
    async with opened(backend) as o:
        blob = os.urandom(2 * PIECE + 5)
        (key,) = await put(o.objects, blob)
        await stage(o.objects, os.urandom(PIECE + 1))  # never published
        bad = (await put(o.objects, os.urandom(300)))[0]
        backend.damage(bad)
        with pytest.raises(CorruptChunkError) as found:
            await o.objects.check(bad, 300)
        assert found.value.identity is not None
        assert await o.objects.quarantine(bad, found.value.identity)
    async with opened(backend) as o:
        assert o.objects.clear_temp_sync() == 1
        assert o.objects.count_temp_sync() == 0
        assert await get(o.objects, key, 0, len(blob)) == blob
        assert o.objects.list_quarantine_sync() == [bad.hex()]


async def test_what_a_crash_keeps(new_backend: NewBackend) -> None:
    """Objects published before the crash are there, whole and verified; objects only
    staged are not, and nothing of them is left once the next open clears."""
    backend = new_backend(crash_model=True)
    async with opened(backend, close=False) as o:
        blobs = [os.urandom(n) for n in (10, PIECE, 3 * PIECE + 1)]
        keys = await put(o.objects, *blobs)
        pending = await stage(o.objects, os.urandom(2 * PIECE))
        after = backend.crashed()
        await o.objects.discard_many([pending])
        o.meta.close_reader()
        await trio.to_thread.run_sync(o.meta.close_writer)
    async with opened(after) as o:
        o.objects.clear_temp_sync()
        assert o.objects.count_temp_sync() == 0
        for key, blob in zip(keys, blobs, strict=True):
            await o.objects.check(key, len(blob))
            assert await get(o.objects, key, 0, len(blob)) == blob
        with pytest.raises(CorruptChunkError):
            await o.objects.check(pending.digest, 2 * PIECE)
