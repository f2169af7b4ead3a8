"""The whole store on each backend pair: the namespace, uploads, reads, corruption and
healing, and a restart, through ``open_store(metadata=..., objects=...)``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from librorum.errors import CorruptDataError, NotFoundError
from librorum.protocol.constants import EntryKind
from librorum.store import Store, open_store
from tests.store.conformance.backends import Backend
from tests.store.conformance.conftest import NewBackend
from tests.store.conftest import TEST_CHUNK_SIZE, TEST_RESERVE

CS = TEST_CHUNK_SIZE


@asynccontextmanager
async def store_on(backend: Backend) -> AsyncIterator[Store]:
    metadata, objects = backend.factories()
    async with open_store(
        backend.root,
        chunk_size=CS,
        metadata_reserve=TEST_RESERVE,
        fs=backend.fs,
        metadata=metadata,
        objects=objects,
    ) as store:
        yield store


async def test_namespace_and_data(new_backend: NewBackend) -> None:
    backend = new_backend()
    a, b = os.urandom(3 * CS + 5), os.urandom(CS // 2)
    async with store_on(backend) as store:
        await store.mkdir("/d/e", parents=True)
        await store.write_bytes("/d/a", a)
        await store.write_bytes("/d/e/b", b)
        assert await store.read_bytes("/d/a") == a
        assert await store.read_bytes("/d/a", offset=CS - 1, length=CS + 2) == a[CS - 1 :][: CS + 2]
        page = await store.list("/d")
        assert [(e.path, e.kind) for e in page.entries] == [
            ("/d/a", EntryKind.FILE),
            ("/d/e", EntryKind.DIRECTORY),
        ]
        await store.rename("/d/a", "/d/e/a")
        with pytest.raises(NotFoundError):
            await store.stat("/d/a")
        async with store.open_read("/d/e/a") as reader:
            sent = b""
            async for segment in reader.segments():
                sent += os.pread(segment.fd, segment.length, segment.offset)
        assert sent == a
        assert await store.delete("/d/e", recursive=True) == 3
        status = await store.status()
        assert (status.files, status.directories, status.chunks) == (0, 2, 0)
        report = await store.fsck()
        assert (report.corrupt_count, report.missing_count, report.orphan_count) == (0, 0, 0)
        assert report.refcount_errors == report.namespace_errors == []


async def test_restart_keeps_files_and_resumable_uploads(new_backend: NewBackend) -> None:
    backend = new_backend()
    first, rest = os.urandom(2 * CS), os.urandom(CS + 3)
    async with store_on(backend) as store:
        await store.write_bytes("/f", first + rest)
        upload = await store.begin_upload("/g", upload_id="u")
        await upload.write(first)
        await upload.detach()
    async with store_on(backend) as store:
        assert store.recovery is not None
        assert store.recovery.uploads_kept == 1
        assert await store.read_bytes("/f") == first + rest
        upload = await store.resume_upload("u", offset=2 * CS)
        async with upload:
            await upload.write(rest)
            info = await upload.commit()
        assert info.size == 2 * CS + len(rest)
        assert await store.read_bytes("/g") == first + rest
        report = await store.fsck()
        assert (report.corrupt_count, report.missing_count, report.orphan_count) == (0, 0, 0)
        assert report.refcount_errors == []


async def test_a_damaged_chunk_is_quarantined_then_healed(new_backend: NewBackend) -> None:
    backend = new_backend()
    content = os.urandom(2 * CS)
    async with store_on(backend) as store:
        await store.write_bytes("/f", content)
        digest = bytes.fromhex(
            next(n for names in (await store._engine.objects.list_all()).values() for n in names)
        )
        backend.damage(digest)
        with pytest.raises(CorruptDataError):
            await store.read_bytes("/f")
        assert (await store.status()).quarantined == 1
        # Uploading the same content publishes a fresh copy, which heals the file.
        await store.write_bytes("/copy", content)
        assert (await store.status()).quarantined == 0
        assert await store.read_bytes("/f") == content
        await store.delete("/copy")
        await store.delete("/f")
        assert await store.collect_garbage() == 0  # collected after each delete already
        assert (await store.status()).chunks == 0
