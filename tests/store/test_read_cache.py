"""The SQLite metadata store's read cache (``sqlite._ReadCache``): reads answered from it
agree with the database at every moment a write could commit, and it stays bounded.

The conformance suite checks that every commit is visible to the next read; these tests
reach into the moments between: a write that commits while a read is half done, reads while
a write is open, and a cache that outgrows its budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from librorum.store import sqlite as sqlite_module
from librorum.store.fs import OsFS
from librorum.store.meta import KIND_DIR, KIND_FILE, ROOT_ID, EntryRow, MetaTxn
from librorum.store.namespace import resolve
from librorum.store.sqlite import SqliteMetadataStore


def _insert(t: MetaTxn, name: str, parent: int, kind: int = KIND_FILE) -> EntryRow:
    is_dir = kind == KIND_DIR
    return t.insert(
        parent,
        name,
        kind,
        size=0 if is_dir else 3,
        mtime_ns=1,
        version=t.next_version(),
        content_hash=None if is_dir else b"h" * 32,
        chunk_size=None if is_dir else 4096,
        chunks=None if is_dir else b"c" * 32,
    )


def _named(name: str) -> Callable[[MetaTxn], EntryRow]:
    return lambda t: _insert(t, name, ROOT_ID)


def _lookup(name: str) -> Callable[[MetaTxn], EntryRow | None]:
    return lambda t: t.child(ROOT_ID, name)


def _open(path: Path) -> SqliteMetadataStore:
    store = SqliteMetadataStore(
        str(path / "meta.db"),
        OsFS(),
        on_commit_failure=lambda exc: None,
        release_reserve=lambda: False,
        lock_timeout=5.0,
    )
    store.open_sync()
    store.open_reader()
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteMetadataStore]:
    opened = _open(tmp_path)
    yield opened
    opened.close_reader()
    opened.close_writer()


async def test_a_commit_between_a_cached_and_a_looked_up_entry_reads_again(
    store: SqliteMetadataStore,
) -> None:
    """A read takes /a from the cache; before it looks up /a/b (not cached), a write moves
    /a away and puts another directory with its own b at /a. Mixing the cached /a with the
    new snapshot would answer the old /a's id with the new b, a state that never existed:
    the read must start over and answer from one state."""
    a = await store.write(lambda t: _insert(t, "a", ROOT_ID, KIND_DIR))
    await store.write(lambda t: _insert(t, "b", a.id))
    assert (await store.read(lambda t: resolve(t, "/a"))) == a  # /a is now cached

    def swap(t: MetaTxn) -> EntryRow:
        t.move(a, ROOT_ID, "old", t.next_version())
        new_a = _insert(t, "a", ROOT_ID, KIND_DIR)
        return _insert(t, "b", new_a.id)

    runs: list[int] = []
    swapped: list[EntryRow] = []

    def read(t: MetaTxn) -> tuple[EntryRow | None, EntryRow | None]:
        runs.append(1)
        parent = t.child(ROOT_ID, "a")
        if len(runs) == 1:
            assert parent == a  # from the cache
            # The writer thread commits right here (run inline: same effect, no timing).
            swapped.append(store._write_sync(swap))
        assert parent is not None
        return parent, t.child(parent.id, "b")

    parent, child = await store.read(read)
    assert len(runs) == 2
    assert parent is not None
    assert parent.id != a.id
    assert child == swapped[0]
    assert child.parent == parent.id


async def test_reads_while_a_write_is_open_bypass_the_cache(
    store: SqliteMetadataStore,
) -> None:
    f = await store.write(lambda t: _insert(t, "f", ROOT_ID))
    assert await store.read(lambda t: t.child(ROOT_ID, "f")) == f
    cache = store._cache
    assert cache.children == {(ROOT_ID, "f"): f}
    cache.begin_write()
    try:
        assert cache.children == {}
        assert await store.read(lambda t: t.child(ROOT_ID, "f")) == f
        assert cache.children == {}  # nothing kept while a write may commit
    finally:
        cache.end_write()
    assert await store.read(lambda t: t.child(ROOT_ID, "f")) == f
    assert cache.children == {(ROOT_ID, "f"): f}


async def test_a_failed_lookup_is_not_cached_and_errors_roll_back(
    store: SqliteMetadataStore,
) -> None:
    class BoomError(Exception):
        pass

    def fail(t: MetaTxn) -> None:
        t.child(ROOT_ID, "missing")
        raise BoomError

    with pytest.raises(BoomError):
        await store.read(fail)
    assert store._cache.children == {}
    # The snapshot was closed: a commit made after it is visible to the next read.
    f = await store.write(lambda t: _insert(t, "missing", ROOT_ID))
    assert await store.read(lambda t: t.child(ROOT_ID, "missing")) == f


async def test_the_cache_stays_within_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "READ_CACHE_BYTES", 4 * 400)
    store = _open(tmp_path)
    try:
        rows = [await store.write(_named(f"f{i}")) for i in range(20)]
        for row in rows:
            assert await store.read(_lookup(row.name)) == row
            assert 1 <= len(store._cache.children) <= 4
        # Every answer is still right after the cache started over.
        for row in rows:
            assert await store.read(_lookup(row.name)) == row
    finally:
        store.close_reader()
        store.close_writer()
