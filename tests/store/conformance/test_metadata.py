"""Conformance of ``MetadataStore`` implementations: transactions, their atomicity and
isolation, durability across close-and-reopen and crashes, every row operation the store
uses, missing keys, and the errors raised.
"""

from __future__ import annotations

import pytest
import trio

from librorum.errors import StoreError
from librorum.store.meta import (
    KIND_DIR,
    KIND_FILE,
    ROOT_ID,
    Counters,
    EntryRow,
    MetaTxn,
    QuarantineRow,
    UploadRow,
)
from tests.store.conformance.backends import opened
from tests.store.conformance.conftest import NewBackend

D1, D2, D3 = (bytes([i]) * 32 for i in (1, 2, 3))


class RollbackError(Exception):
    """Raised inside a transaction to roll it back."""


def add_file(t: MetaTxn, name: str, size: int = 10, parent: int = ROOT_ID) -> EntryRow:
    return t.insert(
        parent,
        name,
        KIND_FILE,
        size=size,
        mtime_ns=1,
        version=t.next_version(),
        content_hash=b"h" * 32,
        chunk_size=4096,
        chunks=D1,
    )


def add_dir(t: MetaTxn, name: str, parent: int = ROOT_ID) -> EntryRow:
    return t.insert(
        parent,
        name,
        KIND_DIR,
        size=0,
        mtime_ns=1,
        version=t.next_version(),
        content_hash=None,
        chunk_size=None,
        chunks=None,
    )


def names(t: MetaTxn, parent: int = ROOT_ID) -> list[str]:
    return [row.name for row in t.children(parent, None, 1000)]


async def test_first_open_creates_the_root(new_backend: NewBackend) -> None:
    backend = new_backend()
    async with opened(backend) as o:
        root = await o.meta.read(lambda t: t.entry(ROOT_ID))
        assert root is not None
        assert (root.kind, root.name, root.size) == (KIND_DIR, "", 0)
        counters = await o.meta.read(lambda t: t.counters())
        assert counters == Counters(
            seq=counters.seq, files=0, dirs=1, logical_bytes=0, stored_bytes=0, chunk_count=0,
            uploads=0,
        )  # fmt: skip
    ctx = backend.context()
    again = backend.factories()[0](ctx)
    assert await trio.to_thread.run_sync(again.open_sync) is False
    await trio.to_thread.run_sync(again.close_writer)


async def test_commit_is_visible_and_survives_reopen(new_backend: NewBackend) -> None:
    backend = new_backend()
    async with opened(backend) as o:
        row = await o.meta.write(lambda t: add_file(t, "f", size=123))
        assert await o.meta.read(lambda t: t.child(ROOT_ID, "f")) == row
        assert await o.meta.read_slow(lambda t: t.entry(row.id)) == row
    async with opened(backend) as o:
        assert await o.meta.read(lambda t: t.child(ROOT_ID, "f")) == row
        counters = await o.meta.read(lambda t: t.counters())
        assert (counters.files, counters.logical_bytes) == (1, 123)


async def test_reads_see_each_commit_at_once(new_backend: NewBackend) -> None:
    """Entries read again and again (as hot paths are) still change with every commit: an
    update, a move, a removal, and a failed transaction that must change nothing."""
    async with opened(new_backend()) as o:
        d = await o.meta.write(lambda t: add_dir(t, "d"))
        f = await o.meta.write(lambda t: add_file(t, "f", parent=d.id))

        async def lookup() -> tuple[EntryRow | None, EntryRow | None, EntryRow | None]:
            return await o.meta.read(
                lambda t: (t.entry(ROOT_ID), t.child(ROOT_ID, "d"), t.child(d.id, "f"))
            )

        for _ in range(3):
            assert (await lookup())[1:] == (d, f)

        def update(t: MetaTxn) -> EntryRow:
            row = t.child(d.id, "f")
            assert row is not None
            return t.set_content(
                row,
                size=77,
                mtime_ns=2,
                version=t.next_version(),
                content_hash=b"n" * 32,
                chunk_size=4096,
                chunks=D2,
            )

        updated = await o.meta.write(update)
        assert (await lookup())[2] == updated
        assert updated.size == 77

        def fail(t: MetaTxn) -> None:
            row = t.child(d.id, "f")
            assert row is not None
            t.remove([row])
            raise RollbackError

        with pytest.raises(RollbackError):
            await o.meta.write(fail)
        assert (await lookup())[2] == updated

        moved = await o.meta.write(lambda t: t.move(updated, ROOT_ID, "g", t.next_version()))
        assert (await lookup())[2] is None
        assert await o.meta.read(lambda t: t.child(ROOT_ID, "g")) == moved
        assert await o.meta.read(lambda t: t.entry(moved.id)) == moved

        await o.meta.write(lambda t: t.remove([moved]))
        assert await o.meta.read(lambda t: (t.child(ROOT_ID, "g"), t.entry(moved.id))) == (
            None,
            None,
        )


async def test_a_failing_transaction_changes_nothing(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:
        await o.meta.write(lambda t: (add_file(t, "keep"), t.add_refs([(D1, 5)])))
        before = await o.meta.read(lambda t: (t.counters(), names(t), t.refs(D1)))

        def fail(t: MetaTxn) -> None:
            add_file(t, "new", size=50)
            d = add_dir(t, "dir")
            add_file(t, "inner", parent=d.id)
            kept = t.child(ROOT_ID, "keep")
            assert kept is not None
            t.move(kept, d.id, "moved", t.next_version())
            t.add_refs([(D1, 5), (D2, 7)])
            t.drop_refs([D1])
            t.add_pending([D3])
            t.create_upload(UploadRow("u", "/u", "create", None, 4096, 1))
            t.add_quarantine(QuarantineRow(D2, 7, 1, "bad"))
            raise RollbackError

        with pytest.raises(RollbackError):
            await o.meta.write(fail)
        after = await o.meta.read(lambda t: (t.counters(), names(t), t.refs(D1)))
        assert after == before
        state = await o.meta.read(
            lambda t: (t.refs(D2), t.is_pending(D3), t.upload("u"), t.is_quarantined(D2))
        )
        assert state == (0, False, None, False)
        # The next transaction takes the version the failed one did not keep.
        row = await o.meta.write(lambda t: add_file(t, "next"))
        assert row.version == before[0].seq + 1


async def test_versions_grow_one_per_transaction(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:
        first = await o.meta.write(lambda t: (t.next_version(), t.next_version()))
        assert first[0] == first[1]
        second = await o.meta.write(lambda t: t.next_version())
        assert second == first[0] + 1
        assert (await o.meta.read(lambda t: t.counters())).seq == second


async def test_concurrent_writers_are_serialized(new_backend: NewBackend) -> None:
    """Each transaction reads the number of entries and inserts the next name: any overlap
    of two transactions would insert one name twice (and fail) or skip one."""
    async with opened(new_backend()) as o:

        def next_entry(t: MetaTxn) -> None:
            count = len(names(t))
            add_file(t, f"n{count:04d}", size=1)
            t.add_refs([(D1, 1)])

        async def writer() -> None:
            for _ in range(10):
                await o.meta.write(next_entry)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(writer)
        listed = await o.meta.read(names)
        assert listed == [f"n{i:04d}" for i in range(80)]
        counters = await o.meta.read(lambda t: t.counters())
        assert (counters.files, counters.logical_bytes) == (80, 80)
        assert await o.meta.read(lambda t: t.refs(D1)) == 80


async def test_a_duplicate_name_is_a_store_error(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:
        await o.meta.write(lambda t: add_file(t, "f"))
        with pytest.raises(StoreError):
            await o.meta.write(lambda t: add_dir(t, "f"))
        assert await o.meta.read(names) == ["f"]


async def test_missing_keys(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:

        def probe(t: MetaTxn) -> tuple[object, ...]:
            return (
                t.entry(999),
                t.child(ROOT_ID, "nothing"),
                t.children(999, None, 10),
                t.has_children(ROOT_ID),
                t.subtree(999),
                t.refs(D1),
                t.is_pending(D1),
                t.pending(10),
                t.upload("none"),
                t.upload_chunks("none"),
                t.is_quarantined(D1),
                t.any_quarantined(),
                t.quarantined(),
                t.upload_ids(),
                t.uploads_created_before(2**62, 10),
                t.all_pending(),
                list(t.all_chunks()),
                list(t.all_upload_chunks()),
            )

        assert await o.meta.read(probe) == (
            None, None, [], False, [], 0, False, [], None, [], False, False, [], [], [], [], [],
            [],
        )  # fmt: skip
        # Removing what is not there is no error.
        released = await o.meta.write(
            lambda t: (t.drop_refs([D1]), t.remove_pending([D1]), t.remove_quarantine([D1]))
        )
        assert released[0] == []
        assert await o.meta.write(lambda t: t.delete_upload("none")) == []


async def test_listing_is_in_code_point_order_and_paged(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:
        wanted = ["B", "a", "ab", "b", "é", "z", "\u4e2d", "\U0001f600"]
        d = await o.meta.write(lambda t: add_dir(t, "d"))

        def fill(t: MetaTxn) -> None:
            for name in reversed(wanted):
                add_file(t, name, parent=d.id)

        await o.meta.write(fill)
        assert await o.meta.read(lambda t: names(t, d.id)) == sorted(wanted)
        pages: list[str] = []
        after: str | None = None
        while True:
            page = await o.meta.read(lambda t, a=after: t.children(d.id, a, 3))
            if not page:
                break
            assert len(page) <= 3
            pages += [row.name for row in page]
            after = page[-1].name
        assert pages == sorted(wanted)
        assert await o.meta.read(lambda t: t.has_children(d.id))
        assert [r.name for r in await o.meta.read(lambda t: t.children(d.id, "b", 2))] == [
            "z",
            "é",
        ]


async def test_tree_operations(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:

        def build(t: MetaTxn) -> tuple[EntryRow, EntryRow, EntryRow]:
            a = add_dir(t, "a")
            b = add_dir(t, "b", parent=a.id)
            f = add_file(t, "f", size=7, parent=b.id)
            return a, b, f

        a, b, f = await o.meta.write(build)
        sub = await o.meta.read(lambda t: t.subtree(a.id))
        assert sorted(r.id for r in sub) == sorted([b.id, f.id])

        def rename(t: MetaTxn) -> EntryRow:
            return t.move(f, ROOT_ID, "g", t.next_version())

        moved = await o.meta.write(rename)
        assert (moved.id, moved.parent, moved.name) == (f.id, ROOT_ID, "g")
        assert await o.meta.read(lambda t: t.child(b.id, "f")) is None
        assert await o.meta.read(lambda t: t.child(ROOT_ID, "g")) == moved

        def rewrite(t: MetaTxn) -> EntryRow:
            return t.set_content(
                moved,
                size=20,
                mtime_ns=5,
                version=t.next_version(),
                content_hash=b"x" * 32,
                chunk_size=8192,
                chunks=D2,
            )

        rewritten = await o.meta.write(rewrite)
        assert await o.meta.read(lambda t: t.entry(f.id)) == rewritten
        assert (rewritten.size, rewritten.chunks, rewritten.chunk_size) == (20, D2, 8192)
        counters = await o.meta.read(lambda t: t.counters())
        assert (counters.files, counters.dirs, counters.logical_bytes) == (1, 3, 20)

        await o.meta.write(lambda t: t.remove([a, b]))
        assert await o.meta.read(names) == ["g"]
        counters = await o.meta.read(lambda t: t.counters())
        assert (counters.files, counters.dirs, counters.logical_bytes) == (1, 1, 20)
        entries = await o.meta.read_slow(lambda t: sorted(r.id for r in t.all_entries()))
        assert entries == sorted([ROOT_ID, f.id])


async def test_references_and_the_journal(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:
        await o.meta.write(lambda t: t.add_pending([D1, D2, D1]))
        assert sorted(await o.meta.read(lambda t: t.pending(10))) == [D1, D2]
        assert len(await o.meta.read(lambda t: t.pending(1))) == 1
        # Taking a reference clears the journal entry.
        await o.meta.write(lambda t: t.add_refs([(D1, 100), (D1, 100), (D3, 5)]))
        state = await o.meta.read(lambda t: (t.refs(D1), t.refs(D3), t.is_pending(D1)))
        assert state == (2, 1, False)
        counters = await o.meta.read(lambda t: t.counters())
        assert (counters.chunk_count, counters.stored_bytes) == (2, 105)
        # Dropping the last reference releases the chunk and journals it.
        assert await o.meta.write(lambda t: t.drop_refs([D1])) == []
        assert sorted(await o.meta.write(lambda t: t.drop_refs([D1, D3]))) == [D1, D3]
        state = await o.meta.read(
            lambda t: (t.refs(D1), t.refs(D3), t.is_pending(D1), t.is_pending(D3))
        )
        assert state == (0, 0, True, True)
        counters = await o.meta.read(lambda t: t.counters())
        assert (counters.chunk_count, counters.stored_bytes) == (0, 0)
        await o.meta.write(lambda t: t.remove_pending([D1, D2, D3]))
        assert await o.meta.read(lambda t: t.all_pending()) == []


async def test_uploads(new_backend: NewBackend) -> None:
    backend = new_backend()
    async with opened(backend) as o:

        def create(t: MetaTxn) -> None:
            t.create_upload(UploadRow("old", "/a", "create", 100, 4096, 10))
            t.create_upload(UploadRow("new", "/b", "exclusive", None, 8192, 20))

        await o.meta.write(create)
        with pytest.raises(StoreError):
            await o.meta.write(lambda t: t.create_upload(UploadRow("old", "/c", "x", 1, 1, 1)))
        # Recorded out of order, listed by index.
        await o.meta.write(
            lambda t: (
                t.append_upload_chunk("old", 1, D2, 4096),
                t.append_upload_chunk("old", 0, D1, 4096),
                t.append_upload_chunk("new", 0, D1, 8192),
            )
        )
    async with opened(backend) as o:
        state = await o.meta.read(
            lambda t: (
                t.upload("old"),
                t.upload_chunks("old"),
                t.refs(D1),
                sorted(t.upload_ids()),
                t.uploads_created_before(15, 10),
                t.uploads_created_before(100, 10),
                t.uploads_created_before(100, 1),
                t.counters().uploads,
                sorted(t.all_upload_chunks()),
            )
        )
        assert state == (
            UploadRow("old", "/a", "create", 100, 4096, 10),
            [(D1, 4096), (D2, 4096)],
            2,
            ["new", "old"],
            ["old"],
            ["old", "new"],
            ["old"],
            2,
            sorted([(D1, 4096), (D2, 4096), (D1, 8192)]),
        )
        released = await o.meta.write(lambda t: t.delete_upload("old"))
        assert released == [D2]
        state = await o.meta.read(
            lambda t: (t.upload("old"), t.upload_chunks("old"), t.refs(D1), t.is_pending(D2))
        )
        assert state == (None, [], 1, True)
        assert (await o.meta.read(lambda t: t.counters())).uploads == 1


async def test_quarantine_records(new_backend: NewBackend) -> None:
    backend = new_backend()
    async with opened(backend) as o:
        await o.meta.write(lambda t: t.add_quarantine(QuarantineRow(D1, 10, 1, "first")))
        await o.meta.write(lambda t: t.add_quarantine(QuarantineRow(D1, 10, 2, "again")))
        await o.meta.write(lambda t: t.add_quarantine(QuarantineRow(D2, 20, 3, "other")))
    async with opened(backend) as o:
        rows = await o.meta.read(lambda t: sorted(t.quarantined(), key=lambda r: r.digest))
        assert rows == [QuarantineRow(D1, 10, 2, "again"), QuarantineRow(D2, 20, 3, "other")]
        assert await o.meta.read(lambda t: (t.is_quarantined(D1), t.any_quarantined()))
        await o.meta.write(lambda t: t.remove_quarantine([D1, D2]))
        assert await o.meta.read(lambda t: (t.is_quarantined(D1), t.any_quarantined())) == (
            False,
            False,
        )


async def test_what_a_crash_keeps(new_backend: NewBackend) -> None:
    """Every committed transaction survives a crash, the process dying with the store
    open; a transaction rolled back leaves nothing."""
    backend = new_backend(crash_model=True)
    async with opened(backend, close=False) as o:
        rows = [await o.meta.write(lambda t, i=i: add_file(t, f"f{i}", size=i)) for i in range(5)]
        await o.meta.write(lambda t: t.add_pending([D1]))
        with pytest.raises(RollbackError):
            await o.meta.write(lambda t: (add_file(t, "lost"), t.add_pending([D2]), _raise()))
        after = backend.crashed()
        o.meta.close_reader()
        await trio.to_thread.run_sync(o.meta.close_writer)
    async with opened(after) as o:
        assert await o.meta.read(names) == [f"f{i}" for i in range(5)]
        assert [await o.meta.read(lambda t, r=r: t.entry(r.id)) for r in rows] == rows
        assert await o.meta.read(lambda t: (t.is_pending(D1), t.is_pending(D2))) == (True, False)
        counters = await o.meta.read(lambda t: t.counters())
        assert (counters.files, counters.logical_bytes) == (5, 10)


def _raise() -> None:
    raise RollbackError


async def test_set_refs_and_chunks_in_order(new_backend: NewBackend) -> None:
    async with opened(new_backend()) as o:
        await o.meta.write(lambda t: t.add_refs([(D3, 30), (D1, 10), (D2, 20)]))
        # In digest order, from the first or after a digest, up to a limit.
        assert await o.meta.read(lambda t: t.chunks_after(None, 10)) == [
            (D1, 10),
            (D2, 20),
            (D3, 30),
        ]
        assert await o.meta.read(lambda t: t.chunks_after(D1, 1)) == [(D2, 20)]
        assert await o.meta.read(lambda t: t.chunks_after(D3, 10)) == []
        # Quarantined chunks are left out.
        await o.meta.write(lambda t: t.add_quarantine(QuarantineRow(D2, 20, 1, "bad")))
        assert await o.meta.read(lambda t: t.chunks_after(None, 10)) == [(D1, 10), (D3, 30)]
        # A count set: kept; set to 0: the chunk is released and journalled.
        assert await o.meta.write(lambda t: t.set_refs(D1, 7)) is False
        assert await o.meta.read(lambda t: t.refs(D1)) == 7
        assert await o.meta.write(lambda t: t.set_refs(D3, 0)) is True
        state = await o.meta.read(lambda t: (t.refs(D3), t.is_pending(D3), t.counters()))
        assert state[:2] == (0, True)
        assert (state[2].chunk_count, state[2].stored_bytes) == (2, 30)
        # No record: nothing changes.
        assert await o.meta.write(lambda t: t.set_refs(bytes(32), 3)) is False
        assert await o.meta.read(lambda t: t.refs(bytes(32))) == 0
