"""fsck, repair and the scrub on each backend pair: every kind of defect, made through the
backend's own interfaces, is found, named by the files it affects, and repaired."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from librorum.store import FsckProgress, Store, WriteMode, namespace as ns, recovery, repair
from librorum.store.meta import MetaTxn
from librorum.store.objects import SHARDS
from tests.store.conformance.conftest import NewBackend
from tests.store.conformance.test_store import CS, store_on


async def digests_of(store: Store, path: str) -> list[bytes]:
    return await store._engine.meta.read(lambda t: ns.digests(ns.resolve(t, path)))


async def test_a_clean_store_checks_clean_with_progress(new_backend: NewBackend) -> None:
    async with store_on(new_backend()) as store:
        await store.mkdir("/d")
        await store.write_bytes("/d/a", os.urandom(3 * CS))
        await store.write_bytes("/b", os.urandom(CS + 1))
        progress = FsckProgress()
        report = await store.fsck(progress)
        assert report.ok, report
        assert report.chunks_checked == 5
        assert (progress.chunks_done, progress.chunks_total) == (5, 5)
        assert progress.bytes_done == progress.bytes_total == 4 * CS + 1
        assert report.affected == []
        repaired = await store.repair()
        assert repaired.ok
        assert (repaired.orphans_removed, repaired.refcounts_fixed) == (0, 0)


@pytest.mark.parametrize("pass_chunks", [recovery.CHECK_PASS_CHUNKS, 1])
async def test_each_defect_is_found_and_repaired(
    new_backend: NewBackend, monkeypatch: pytest.MonkeyPatch, pass_chunks: int
) -> None:
    # With passes of 1 chunk, the check splits the digests into as many ranges as it may.
    monkeypatch.setattr(recovery, "CHECK_PASS_CHUNKS", pass_chunks)
    backend = new_backend()
    async with store_on(backend) as store:
        engine = store._engine
        listed: list[int] = []
        list_all = engine.objects.list_all

        async def listing(shards: Sequence[str] = SHARDS) -> dict[str, list[str]]:
            listed.append(len(shards))
            return await list_all(shards)

        monkeypatch.setattr(engine.objects, "list_all", listing)
        corrupt_content = os.urandom(2 * CS)
        await store.mkdir("/dir")
        await store.write_bytes("/dir/corrupt", corrupt_content)
        await store.write_bytes("/missing", os.urandom(CS))
        await store.write_bytes("/counted", os.urandom(CS))
        await store.write_bytes("/orphan", os.urandom(CS))
        await store.write_bytes("/fine", os.urandom(CS))
        bad = (await digests_of(store, "/dir/corrupt"))[1]
        missing = (await digests_of(store, "/missing"))[0]
        counted = (await digests_of(store, "/counted"))[0]
        orphan = (await digests_of(store, "/orphan"))[0]
        backend.damage(bad)  # its bytes flipped
        await engine.objects.delete([missing])  # its file gone

        def break_records(t: MetaTxn) -> None:
            t.set_refs(counted, 7)  # a wrong count
            # The file's record gone but its chunk left, and not journalled: an orphan.
            row = ns.resolve(t, "/orphan")
            t.remove([row])
            t.drop_refs([orphan])
            t.remove_pending([orphan])

        await engine.meta.write(break_records)

        report = await store.fsck()
        assert sum(listed) == len(SHARDS)
        assert len(listed) == (1 if pass_chunks > 100 else 8)  # 6 chunks: 8 ranges
        assert not report.ok
        assert report.corrupt == [bad.hex()]
        assert report.quarantined == [bad.hex()]
        assert report.missing == [missing.hex()]
        assert report.orphans == [orphan.hex()]
        assert report.refcount_errors == [f"{counted.hex()}: recorded 7, counted 1"]
        assert report.affected == ["/dir/corrupt", "/missing"]
        assert report.affected_count == 2

        repaired = await store.repair()
        assert repaired.orphans_removed == 1
        assert repaired.refcounts_fixed == 1
        assert repaired.reupload == ["/dir/corrupt", "/missing"]
        assert not repaired.ok

        after = await store.fsck()
        assert (after.orphan_count, after.refcount_error_count, after.corrupt_count) == (0, 0, 0)
        assert after.affected == ["/dir/corrupt", "/missing"]
        # Uploading the content again heals the file; deleting the other ends the defect.
        await store.write_bytes("/dir/corrupt", corrupt_content, mode=WriteMode.OVERWRITE)
        await store.delete("/missing")
        final = await store.fsck()
        assert final.ok, final
        assert await store.read_bytes("/dir/corrupt") == corrupt_content


async def test_a_chunk_the_listing_missed_but_present_is_not_missing(
    new_backend: NewBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk collected and published again by an upload between a pass's snapshot and its
    listing of the chunk files is absent from the listing though it is there: the check
    looks for it once more on disk before calling it missing."""
    async with store_on(new_backend()) as store:
        engine = store._engine
        await store.write_bytes("/f", os.urandom(CS))
        [digest] = await digests_of(store, "/f")
        list_all = engine.objects.list_all

        async def listing(shards: Sequence[str] = SHARDS) -> dict[str, list[str]]:
            # The listing as it would be read while the chunk's file was away.
            found = await list_all(shards)
            return {
                shard: [n for n in names if n != digest.hex()] for shard, names in found.items()
            }

        monkeypatch.setattr(engine.objects, "list_all", listing)
        report = await store.fsck()
        assert report.missing == []
        assert report.ok, report
        # A chunk really gone is still reported.
        await engine.objects.delete([digest])
        report = await store.fsck()
        assert report.missing == [digest.hex()]


async def test_a_count_too_low_whose_chunk_is_collected_before_the_repair_is_reported(
    new_backend: NewBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two files use a chunk recorded as used once; between the check and the repair the
    chunk is collected (its count reached 0 as a delete released it): there is nothing left
    to set, its data is gone, and the repair says so and lists both files for upload."""
    async with store_on(new_backend()) as store:
        engine = store._engine
        content = os.urandom(CS)
        await store.write_bytes("/a", content)
        await store.write_bytes("/b", content)
        [digest] = await digests_of(store, "/a")
        await engine.meta.write(lambda t: t.set_refs(digest, 1))
        check = repair.check

        async def check_then_collected(*args: object, **kwargs: object) -> object:
            found = await check(*args, **kwargs)  # type: ignore[arg-type]
            await engine.meta.write(lambda t: t.drop_refs([digest]))
            await engine.objects.delete([digest])
            return found

        monkeypatch.setattr(repair, "check", check_then_collected)
        repaired = await store.repair()
        assert repaired.refcounts_fixed == 0
        assert repaired.unrepaired == [
            f"{digest.hex()}: referenced, but collected before its count could be set"
        ]
        assert repaired.reupload == ["/a", "/b"]
        assert not repaired.ok


async def test_scrub_steps_cover_every_chunk_and_quarantine(new_backend: NewBackend) -> None:
    backend = new_backend()
    async with store_on(backend) as store:
        await store.write_bytes("/a", os.urandom(5 * CS))
        bad = (await digests_of(store, "/a"))[3]
        backend.damage(bad)
        seen = 0
        damaged: list[str] = []
        after = None
        while True:
            step = await store.scrub_step(after, 2)
            seen += step.verified
            damaged += step.damaged
            after = step.next
            if after is None:
                break
        assert seen == 5
        assert damaged == [bad.hex()]
        assert (await store.status()).quarantined == 1
        # A quarantined chunk is known bad: the next pass skips it.
        step = await store.scrub_step(None, 10)
        assert (step.verified, step.damaged, step.next) == (4, [], None)
