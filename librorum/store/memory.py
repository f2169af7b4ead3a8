"""An in-memory metadata store and object store: the whole store without a disk.

:class:`MemoryMetadataStore` is a complete :class:`~librorum.store.meta.MetadataStore` and
:class:`MemoryObjectStore` a complete :class:`~librorum.store.objects.ObjectStore` (with the
:class:`~librorum.store.objects.LocalObjects` capability, through ``memfd``), held in
:class:`MemoryMetadata` and :class:`MemoryObjects`. Those hold what is *durable*: pass the
same ones to the next open and it finds everything committed or published, as after a clean
close or a crash (nothing is ever half-written: a transaction's changes are applied whole or
rolled back, and an object becomes visible whole). What a crash loses is what never was
durable: staged objects, which the next open drops. They pass the conformance suite
(``tests/store/conformance``), like the embedded defaults. Use :func:`memory_backend` to
give both to ``open_store``::

    metadata, objects = memory_backend()
    async with open_store(path, metadata=metadata, objects=objects) as store:
        ...

Everything runs on the Trio thread: transactions and object operations are short, complete
synchronous steps between checkpoints, so they need no locks and every read sees a
consistent state. The data directory still holds the store's lock file and its space
reserve; the free-space floor applies to new objects as it does on disk.
"""

from __future__ import annotations

import itertools
import mmap
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final, TypeVar

import attrs
import blake3
import trio

from librorum.errors import CorruptDataError, StoreIOError
from librorum.store.backend import BackendContext, MetadataFactory, ObjectFactory
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
from librorum.store.objects import SHARDS, CorruptChunkError, Identity, Staged, Verify

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

#: Names of staged objects start with this (``Staged.temp``).
_STAGED_PREFIX: Final = "memory:"


@attrs.define(eq=False)
class MemoryMetadata:
    """The durable state of a :class:`MemoryMetadataStore`: its committed rows."""

    entries: dict[int, EntryRow] = attrs.field(factory=dict)
    #: Directory id -> {name: entry id}.
    children: dict[int, dict[str, int]] = attrs.field(factory=dict)
    #: The next entry id, under "entry".
    ids: dict[str, int] = attrs.field(factory=lambda: {"entry": ROOT_ID + 1})
    #: Digest -> (size, refs).
    chunks: dict[bytes, tuple[int, int]] = attrs.field(factory=dict)
    #: The journal, in insertion order (the values are unused).
    pending: dict[bytes, None] = attrs.field(factory=dict)
    uploads: dict[str, UploadRow] = attrs.field(factory=dict)
    #: Upload id -> {index: (digest, size)}.
    upload_chunks: dict[str, dict[int, tuple[bytes, int]]] = attrs.field(factory=dict)
    quarantine: dict[bytes, QuarantineRow] = attrs.field(factory=dict)
    #: The figures of :class:`Counters`, by field name.
    stats: dict[str, int] = attrs.field(factory=dict)
    #: Whether the root directory and the figures exist (set by the first open).
    created: bool = False


class _MemoryTxn:
    """:class:`MetaTxn` over :class:`MemoryMetadata`. Changes apply at once and are undone,
    in reverse order, if the transaction fails."""

    def __init__(self, db: MemoryMetadata, *, writable: bool) -> None:
        self._db = db
        self._writable = writable
        self._undo: list[Callable[[], None]] = []
        self._version: int | None = None

    # --- the undo log -----------------------------------------------------------------------

    def _put(self, table: dict[K, V], key: K, value: V) -> None:
        self._check_writable()
        if key in table:
            old = table[key]
            self._undo.append(lambda: table.__setitem__(key, old))
        else:

            def forget() -> None:
                del table[key]

            self._undo.append(forget)
        table[key] = value

    def _pop(self, table: dict[K, V], key: K) -> V | None:
        self._check_writable()
        if key not in table:
            return None
        old = table.pop(key)
        self._undo.append(lambda: table.__setitem__(key, old))
        return old

    def _add(self, field: str, delta: int) -> None:
        if delta:
            self._put(self._db.stats, field, self._db.stats[field] + delta)

    def _check_writable(self) -> None:
        if not self._writable:
            msg = "write metadata: a read transaction cannot change rows"
            raise StoreIOError(msg)

    def rollback(self) -> None:
        """Undo every change (in reverse order)."""
        while self._undo:
            self._undo.pop()()

    # --- the namespace ----------------------------------------------------------------------

    def child(self, parent_id: int, name: str) -> EntryRow | None:
        entry_id = self._db.children.get(parent_id, {}).get(name)
        return None if entry_id is None else self._db.entries[entry_id]

    def entry(self, entry_id: int) -> EntryRow | None:
        return self._db.entries.get(entry_id)

    def children(self, parent_id: int, after: str | None, limit: int) -> list[EntryRow]:
        # Code point order is UTF-8 byte order, SQLite's BINARY collation.
        names = sorted(
            n for n in self._db.children.get(parent_id, {}) if after is None or n > after
        )
        kids = self._db.children[parent_id] if names else {}
        return [self._db.entries[kids[n]] for n in names[:limit]]

    def has_children(self, parent_id: int) -> bool:
        return bool(self._db.children.get(parent_id))

    def subtree(self, entry_id: int) -> list[EntryRow]:
        out: list[EntryRow] = []
        todo = [entry_id]
        while todo:
            for child_id in self._db.children.get(todo.pop(), {}).values():
                out.append(self._db.entries[child_id])
                todo.append(child_id)
        return out

    def next_version(self) -> int:
        if self._version is None:
            self._version = self._db.stats["seq"] + 1
            self._put(self._db.stats, "seq", self._version)
        return self._version

    def insert(
        self,
        parent_id: int,
        name: str,
        kind: int,
        *,
        size: int,
        mtime_ns: int,
        version: int,
        content_hash: bytes | None,
        chunk_size: int | None,
        chunks: bytes | None,
    ) -> EntryRow:
        self._check_writable()
        kids = self._db.children.get(parent_id)
        if kids is None:
            kids = {}
            self._put(self._db.children, parent_id, kids)
        if name in kids:
            msg = f"write metadata: an entry {name!r} exists in directory {parent_id}"
            raise StoreIOError(msg)
        entry_id = self._db.ids["entry"]
        self._put(self._db.ids, "entry", entry_id + 1)
        row = EntryRow(
            entry_id,
            parent_id,
            name,
            kind,
            size,
            mtime_ns,
            version,
            content_hash,
            chunk_size,
            chunks,
        )
        self._put(self._db.entries, entry_id, row)
        self._put(kids, name, entry_id)
        if kind == KIND_FILE:
            self._add("files", 1)
            self._add("logical_bytes", size)
        else:
            self._add("dirs", 1)
        return row

    def set_content(
        self,
        old: EntryRow,
        *,
        size: int,
        mtime_ns: int,
        version: int,
        content_hash: bytes,
        chunk_size: int,
        chunks: bytes,
    ) -> EntryRow:
        row = attrs.evolve(
            self._db.entries[old.id],
            size=size,
            mtime_ns=mtime_ns,
            version=version,
            content_hash=content_hash,
            chunk_size=chunk_size,
            chunks=chunks,
        )
        self._put(self._db.entries, old.id, row)
        self._add("logical_bytes", size - old.size)
        return row

    def move(self, old: EntryRow, parent_id: int, name: str, version: int) -> EntryRow:
        current = self._db.entries[old.id]
        kids = self._db.children.get(parent_id)
        if kids is None:
            kids = {}
            self._put(self._db.children, parent_id, kids)
        if name in kids:
            msg = f"write metadata: an entry {name!r} exists in directory {parent_id}"
            raise StoreIOError(msg)
        self._pop(self._db.children[current.parent], current.name)
        row = attrs.evolve(current, parent=parent_id, name=name, version=version)
        self._put(self._db.entries, old.id, row)
        self._put(kids, name, old.id)
        return row

    def remove(self, rows: Sequence[EntryRow]) -> None:
        for row in rows:
            current = self._pop(self._db.entries, row.id)
            if current is None:
                continue
            self._pop(self._db.children.get(current.parent, {}), current.name)
            if current.kind == KIND_FILE:
                self._add("files", -1)
                self._add("logical_bytes", -current.size)
            else:
                self._add("dirs", -1)

    # --- chunks and the journal -------------------------------------------------------------

    def refs(self, digest: bytes) -> int:
        return self._db.chunks.get(digest, (0, 0))[1]

    def add_refs(self, chunks: Sequence[tuple[bytes, int]]) -> None:
        counts: dict[bytes, list[int]] = {}
        for digest, size in chunks:
            item = counts.setdefault(digest, [0, size])
            item[0] += 1
        for digest, (count, size) in counts.items():
            known = self._db.chunks.get(digest)
            if known is not None:
                self._put(self._db.chunks, digest, (known[0], known[1] + count))
            else:
                self._put(self._db.chunks, digest, (size, count))
                self._add("chunk_count", 1)
                self._add("stored_bytes", size)
        self.remove_pending(list(counts))

    def drop_refs(self, digests: Sequence[bytes]) -> list[bytes]:
        counts: dict[bytes, int] = {}
        for digest in digests:
            counts[digest] = counts.get(digest, 0) + 1
        released: list[bytes] = []
        for digest, count in counts.items():
            known = self._db.chunks.get(digest)
            if known is None:
                continue
            size, refs = known
            if refs > count:
                self._put(self._db.chunks, digest, (size, refs - count))
            else:
                self._pop(self._db.chunks, digest)
                self._add("chunk_count", -1)
                self._add("stored_bytes", -size)
                released.append(digest)
        self.add_pending(released)
        return released

    def add_pending(self, digests: Sequence[bytes]) -> None:
        for digest in digests:
            if digest not in self._db.pending:
                self._put(self._db.pending, digest, None)

    def remove_pending(self, digests: Sequence[bytes]) -> None:
        for digest in digests:
            self._pop(self._db.pending, digest)

    def is_pending(self, digest: bytes) -> bool:
        return digest in self._db.pending

    def pending(self, limit: int) -> list[bytes]:
        return list(itertools.islice(self._db.pending, limit))

    # --- uploads ----------------------------------------------------------------------------

    def create_upload(self, row: UploadRow) -> None:
        if row.id in self._db.uploads:
            msg = f"write metadata: upload {row.id!r} exists"
            raise StoreIOError(msg)
        self._put(self._db.uploads, row.id, row)
        self._put(self._db.upload_chunks, row.id, {})
        self._add("uploads", 1)

    def upload(self, upload_id: str) -> UploadRow | None:
        return self._db.uploads.get(upload_id)

    def upload_chunks(self, upload_id: str) -> list[tuple[bytes, int]]:
        recorded = self._db.upload_chunks.get(upload_id, {})
        return [recorded[i] for i in sorted(recorded)]

    def append_upload_chunk(self, upload_id: str, index: int, digest: bytes, size: int) -> None:
        recorded = self._db.upload_chunks.get(upload_id)
        if recorded is None:
            recorded = {}
            self._put(self._db.upload_chunks, upload_id, recorded)
        if index in recorded:
            msg = f"write metadata: upload {upload_id!r} has a chunk {index}"
            raise StoreIOError(msg)
        self._put(recorded, index, (digest, size))
        self.add_refs([(digest, size)])

    def delete_upload(self, upload_id: str) -> list[bytes]:
        digests = [d for d, _ in self.upload_chunks(upload_id)]
        self._pop(self._db.upload_chunks, upload_id)
        if self._pop(self._db.uploads, upload_id) is not None:
            self._add("uploads", -1)
        return self.drop_refs(digests)

    # --- figures and the quarantine ---------------------------------------------------------

    def counters(self) -> Counters:
        return Counters(**self._db.stats)

    def add_quarantine(self, row: QuarantineRow) -> None:
        self._put(self._db.quarantine, row.digest, row)

    def is_quarantined(self, digest: bytes) -> bool:
        return digest in self._db.quarantine

    def any_quarantined(self) -> bool:
        return bool(self._db.quarantine)

    def remove_quarantine(self, digests: Sequence[bytes]) -> None:
        for digest in digests:
            self._pop(self._db.quarantine, digest)

    def quarantined(self) -> list[QuarantineRow]:
        return list(self._db.quarantine.values())

    # --- full scans, for fsck ---------------------------------------------------------------

    def all_entries(self) -> Iterator[EntryRow]:
        return iter(list(self._db.entries.values()))

    def all_chunks(self) -> Iterator[tuple[bytes, int, int]]:
        return iter([(d, size, refs) for d, (size, refs) in self._db.chunks.items()])

    def all_upload_chunks(self) -> Iterator[tuple[bytes, int]]:
        return iter([c for recorded in self._db.upload_chunks.values() for c in recorded.values()])

    def all_pending(self) -> list[bytes]:
        return list(self._db.pending)

    def upload_ids(self) -> list[str]:
        return list(self._db.uploads)

    def uploads_created_before(self, created_ns: int, limit: int) -> list[str]:
        rows = sorted(
            (r for r in self._db.uploads.values() if r.created_ns < created_ns),
            key=lambda r: r.created_ns,
        )
        return [r.id for r in rows[:limit]]

    def set_refs(self, digest: bytes, refs: int) -> bool:
        known = self._db.chunks.get(digest)
        if known is None:
            return False
        if refs > 0:
            self._put(self._db.chunks, digest, (known[0], refs))
            return False
        self._pop(self._db.chunks, digest)
        self._add("chunk_count", -1)
        self._add("stored_bytes", -known[0])
        self.add_pending([digest])
        return True

    def chunks_after(self, after: bytes | None, limit: int) -> list[tuple[bytes, int]]:
        start = after if after is not None else b""
        # A sort per step: fine for the test-sized stores this backend holds.
        found = sorted(
            (d, size)
            for d, (size, _refs) in self._db.chunks.items()
            if d > start and not self.is_quarantined(d)
        )
        return found[:limit]


class MemoryMetadataStore:
    """A :class:`~librorum.store.meta.MetadataStore` over :class:`MemoryMetadata`.

    Transactions run whole on the Trio thread after a checkpoint, so they never interleave:
    a read sees a consistent state, and writes are serialized. ``use_reserve`` has no
    effect (memory has no space reserve).
    """

    def __init__(self, db: MemoryMetadata) -> None:
        self._db = db
        self._open = False

    def open_sync(self) -> bool:
        """Create the root directory and the figures on first use; returns whether it did."""
        self._open = True
        if self._db.created:
            return False
        self._db.entries[ROOT_ID] = EntryRow(
            ROOT_ID, 0, "", KIND_DIR, 0, time.time_ns(), 1, None, None, None
        )
        self._db.stats.update(
            seq=1, files=0, dirs=1, logical_bytes=0, stored_bytes=0, chunk_count=0, uploads=0
        )
        self._db.created = True
        return True

    def open_reader(self) -> None:
        """Nothing to do: reads use the state directly."""

    def close_reader(self) -> None:
        """Nothing to do."""

    def close_writer(self) -> None:
        """Refuse further transactions (everything committed stays in the state)."""
        self._open = False

    def _txn(self, *, writable: bool) -> _MemoryTxn:
        if not self._open:
            msg = "metadata: the store is closed"
            raise StoreIOError(msg)
        return _MemoryTxn(self._db, writable=writable)

    async def read(self, fn: Callable[[MetaTxn], T]) -> T:
        """Run ``fn`` in a read snapshot (not cancellable: no checkpoint).

        Raises:
            StoreIOError: The store is closed, or ``fn`` tried to change a row.
        """
        return fn(self._txn(writable=False))

    async def read_slow(self, fn: Callable[[MetaTxn], T]) -> T:
        """As :meth:`read`, after a checkpoint (in memory a full scan is quick)."""
        await trio.lowlevel.checkpoint()
        return fn(self._txn(writable=False))

    async def write(self, fn: Callable[[MetaTxn], T], *, use_reserve: bool = False) -> T:
        """Run ``fn`` in a write transaction: all its changes, or (``fn`` raising) none.

        Cancellation: a checkpoint before the transaction; cancelled there, nothing is done.

        Raises:
            StoreIOError: The store is closed, or a row would break a uniqueness rule.
            Whatever ``fn`` raises (the transaction is rolled back).
        """
        await trio.lowlevel.checkpoint()
        txn = self._txn(writable=True)
        try:
            return fn(txn)
        except BaseException:
            txn.rollback()
            raise


@attrs.define(eq=False)
class MemoryObjects:
    """The state of a :class:`MemoryObjectStore`. ``objects`` and ``quarantined`` are durable;
    ``staged`` is what a crash loses (the next open drops it)."""

    #: Key -> (generation, bytes); the generation tells copies under one key apart.
    objects: dict[bytes, tuple[int, bytes]] = attrs.field(factory=dict)
    quarantined: dict[bytes, bytes] = attrs.field(factory=dict)
    staged: dict[str, bytearray] = attrs.field(factory=dict)
    generation: list[int] = attrs.field(factory=lambda: [0])


class MemoryObjectStore:
    """An :class:`~librorum.store.objects.ObjectStore` over :class:`MemoryObjects`.

    Args:
        state: The objects.
        check_space: Called before each new staged object (the store's free-space floor).
    """

    def __init__(self, state: MemoryObjects, *, check_space: Callable[[str], None]) -> None:
        self._state = state
        self._check_space = check_space

    def _identity(self, key: bytes) -> Identity:
        return (0, self._state.objects[key][0])

    def _missing(self, key: bytes) -> CorruptChunkError:
        msg = f"chunk {key.hex()} is missing"
        return CorruptChunkError(msg, digest=key, identity=None)

    # --- lifecycle --------------------------------------------------------------------------

    def init_sync(self) -> None:
        """Nothing to create."""

    def clear_temp_sync(self) -> int:
        """Drop every staged object; returns how many."""
        count = len(self._state.staged)
        self._state.staged.clear()
        return count

    def count_temp_sync(self) -> int:
        """Number of staged objects."""
        return len(self._state.staged)

    def list_quarantine_sync(self) -> list[str]:
        """The quarantined keys, in hex."""
        return [key.hex() for key in self._state.quarantined]

    # --- ObjectStore ------------------------------------------------------------------------

    async def stage_piece(self, staged: Staged, buf: mmap.mmap, length: int, *, last: bool) -> None:
        """Append ``buf[:length]`` to the staged object (see ``ObjectStore``).

        Raises:
            NoSpaceError: (first piece) below the store's free-space floor.
        """
        await trio.lowlevel.checkpoint()
        if not staged.temp:
            self._check_space("write chunk")
            self._state.generation[0] += 1
            staged.temp = f"{_STAGED_PREFIX}{self._state.generation[0]}"
            self._state.staged[staged.temp] = bytearray()
        self._state.staged[staged.temp] += memoryview(buf)[:length]
        staged.length += length

    async def publish_many(self, staged: Sequence[Staged]) -> None:
        """Make staged objects visible under their keys, all at once."""
        await trio.lowlevel.checkpoint()
        for item in staged:
            data = self._state.staged.pop(item.temp, None)
            if data is None:
                msg = f"write chunk: nothing staged as {item.temp!r}"
                raise StoreIOError(msg)
            self._state.generation[0] += 1
            self._state.objects[item.digest] = (self._state.generation[0], bytes(data))
            item.temp = ""

    async def discard_many(self, staged: Sequence[Staged]) -> None:
        """Drop staged objects (never raises)."""
        await trio.lowlevel.checkpoint()
        for item in staged:
            self._state.staged.pop(item.temp, None)
            item.temp, item.fd = "", -1

    async def get(self, key: bytes, into: memoryview, offset: int, verify: Verify) -> None:
        """Fill ``into`` from ``offset`` and verify it (see ``ObjectStore``).

        Raises:
            CorruptChunkError: Missing, short, or rejected by ``verify``.
        """
        await trio.lowlevel.checkpoint()
        if key not in self._state.objects:
            raise self._missing(key)
        identity = self._identity(key)
        data = self._state.objects[key][1]
        piece = data[offset : offset + len(into)]
        if len(piece) < len(into):
            msg = f"chunk {key.hex()} is truncated"
            raise CorruptChunkError(msg, digest=key, identity=identity)
        into[:] = piece
        try:
            verify(into)
        except CorruptChunkError:
            raise
        except CorruptDataError as exc:
            raise CorruptChunkError(str(exc), digest=key, identity=identity) from None

    def _verify(self, key: bytes, length: int) -> bytes:
        if key not in self._state.objects:
            raise self._missing(key)
        identity = self._identity(key)
        data = self._state.objects[key][1]
        if len(data) < length:
            msg = f"chunk {key.hex()} is truncated"
            raise CorruptChunkError(msg, digest=key, identity=identity)
        if blake3.blake3(data[:length]).digest() != key:
            msg = f"chunk {key.hex()} failed verification"
            raise CorruptChunkError(msg, digest=key, identity=identity)
        return data[:length]

    async def check(self, key: bytes, length: int, also: blake3.blake3 | None = None) -> None:
        """Verify the object against its key, then feed it to ``also``.

        Raises:
            CorruptChunkError: Missing, short, or not matching.
        """
        await trio.lowlevel.checkpoint()
        data = self._verify(key, length)
        if also is not None:
            also.update(data)

    async def delete(self, keys: Sequence[bytes]) -> None:
        """Delete objects (missing ones are ignored)."""
        await trio.lowlevel.checkpoint()
        for key in keys:
            self._state.objects.pop(key, None)

    async def list_all(self, shards: Sequence[str] = SHARDS) -> dict[str, list[str]]:
        """The keys (hex) by shard, as the local store lists its files."""
        await trio.lowlevel.checkpoint()
        out: dict[str, list[str]] = {shard: [] for shard in shards}
        for key in self._state.objects:
            name = key.hex()
            if name[:2] in out:
                out[name[:2]].append(name)
        return out

    async def is_current(self, key: bytes, identity: Identity) -> bool:
        """Whether the object under ``key`` is still the copy ``identity``."""
        await trio.lowlevel.checkpoint()
        return key in self._state.objects and self._identity(key) == identity

    async def quarantine(self, key: bytes, identity: Identity) -> bool:
        """Move the copy ``identity`` aside if it is still current; returns whether it was."""
        await trio.lowlevel.checkpoint()
        if key not in self._state.objects or self._identity(key) != identity:
            return False
        self._state.quarantined[key] = self._state.objects.pop(key)[1]
        return True

    async def drop_quarantined(self, keys: Sequence[bytes]) -> None:
        """Remove quarantined copies (missing ones are ignored)."""
        await trio.lowlevel.checkpoint()
        for key in keys:
            self._state.quarantined.pop(key, None)

    # --- LocalObjects -----------------------------------------------------------------------

    def open_verified(self, key: bytes, length: int, digest: bytes) -> int:
        """A descriptor of an anonymous memory file holding the verified object, for
        ``os.sendfile`` (the caller closes it).

        Raises:
            CorruptChunkError: Missing, short, or not matching ``digest``.
            StoreIOError: The memory file could not be made.
        """
        assert digest == key, "a chunk is named by its digest"
        data = self._verify(key, length)
        try:
            fd = os.memfd_create(f"chunk-{key.hex()[:16]}", os.MFD_CLOEXEC)
        except OSError as exc:
            msg = f"open chunk: {exc}"
            raise StoreIOError(msg) from exc
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            raise
        return fd


def memory_backend(
    metadata: MemoryMetadata | None = None, objects: MemoryObjects | None = None
) -> tuple[MetadataFactory, ObjectFactory]:
    """Factories for ``open_store(metadata=..., objects=...)`` over in-memory state. Every
    open through the same factories sees what the previous ones committed and published.

    Args:
        metadata: The metadata state (new and empty if not given).
        objects: The objects' state (new and empty if not given).
    """
    meta_state = metadata if metadata is not None else MemoryMetadata()
    object_state = objects if objects is not None else MemoryObjects()

    def open_metadata(ctx: BackendContext) -> MemoryMetadataStore:
        return MemoryMetadataStore(meta_state)

    def open_objects(ctx: BackendContext) -> MemoryObjectStore:
        return MemoryObjectStore(object_state, check_space=ctx.check_space)

    return open_metadata, open_objects
