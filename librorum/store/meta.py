"""The metadata boundary: the namespace, chunk reference counts, the journal, uploads and the
quarantine (chunks found corrupt), as rows and transactions over them.

:class:`MetadataStore` and :class:`MetaTxn` are the pluggable boundary: the namespace logic
(``namespace.py``) is written against :class:`MetaTxn` alone, and the rest of the store
against :class:`MetadataStore`. The embedded implementation is
``sqlite.SqliteMetadataStore``; ``memory.MemoryMetadataStore`` keeps the same rows in
memory. ``tests/store/conformance`` is the suite every implementation passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Final, Protocol, TypeVar

import attrs

T = TypeVar("T")

#: The id of the root directory's row.
ROOT_ID: Final = 1
#: Entry kinds as stored.
KIND_DIR: Final = 0
KIND_FILE: Final = 1
#: Length of a chunk digest (BLAKE3).
DIGEST_SIZE: Final = 32


@attrs.frozen
class EntryRow:
    """One namespace entry as stored. ``chunks`` is the concatenation of the file's chunk
    digests, in order; every chunk is ``chunk_size`` bytes except possibly the last."""

    id: int
    parent: int
    name: str
    kind: int
    size: int
    mtime_ns: int
    version: int
    content_hash: bytes | None
    chunk_size: int | None
    chunks: bytes | None


@attrs.frozen
class UploadRow:
    """A resumable upload as stored."""

    id: str
    path: str
    mode: str
    size: int | None
    chunk_size: int
    created_ns: int


@attrs.frozen
class QuarantineRow:
    """A chunk found corrupt, moved aside until an upload of its content heals it."""

    digest: bytes
    size: int
    found_ns: int
    reason: str


@attrs.frozen
class Counters:
    """Store-wide figures, maintained transactionally with the rows they count."""

    seq: int
    files: int
    dirs: int
    logical_bytes: int
    stored_bytes: int
    chunk_count: int
    uploads: int


class MetaTxn(Protocol):
    """The row-level operations available inside one metadata transaction."""

    def child(self, parent_id: int, name: str) -> EntryRow | None:
        """The entry called ``name`` in directory ``parent_id``."""
        ...

    def entry(self, entry_id: int) -> EntryRow | None:
        """The entry with id ``entry_id``."""
        ...

    def children(self, parent_id: int, after: str | None, limit: int) -> list[EntryRow]:
        """Up to ``limit`` entries of a directory whose names sort after ``after``, by name."""
        ...

    def has_children(self, parent_id: int) -> bool:
        """Whether the directory has any entry."""
        ...

    def subtree(self, entry_id: int) -> list[EntryRow]:
        """Every entry below ``entry_id`` (not itself)."""
        ...

    def next_version(self) -> int:
        """Allocate the version number of this transaction (the same on every call)."""
        ...

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
        """Insert an entry."""
        ...

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
        """Replace a file's content (the caller releases the old chunks)."""
        ...

    def move(self, old: EntryRow, parent_id: int, name: str, version: int) -> EntryRow:
        """Give an entry a new parent and name."""
        ...

    def remove(self, rows: Sequence[EntryRow]) -> None:
        """Delete entries (the caller releases their chunks)."""
        ...

    def refs(self, digest: bytes) -> int:
        """The reference count of a chunk (0 if it is not stored)."""
        ...

    def add_refs(self, chunks: Sequence[tuple[bytes, int]]) -> None:
        """Add one reference per (digest, size) item, creating chunk rows as needed, and
        drop the digests from the journal of pending chunks."""
        ...

    def drop_refs(self, digests: Sequence[bytes]) -> list[bytes]:
        """Drop one reference per item; chunks left with none lose their row and are
        journalled as pending (to be collected). Returns those digests."""
        ...

    def add_pending(self, digests: Sequence[bytes]) -> None:
        """Journal digests whose chunk file may exist without a reference (an intent)."""
        ...

    def remove_pending(self, digests: Sequence[bytes]) -> None:
        """Drop digests from the journal."""
        ...

    def is_pending(self, digest: bytes) -> bool:
        """Whether the digest is journalled."""
        ...

    def pending(self, limit: int) -> list[bytes]:
        """Up to ``limit`` journalled digests."""
        ...

    def create_upload(self, row: UploadRow) -> None:
        """Record a resumable upload."""
        ...

    def upload(self, upload_id: str) -> UploadRow | None:
        """A resumable upload's row."""
        ...

    def upload_chunks(self, upload_id: str) -> list[tuple[bytes, int]]:
        """The recorded (digest, size) chunks of an upload, in order."""
        ...

    def append_upload_chunk(self, upload_id: str, index: int, digest: bytes, size: int) -> None:
        """Record the next chunk of an upload and take a reference on it."""
        ...

    def delete_upload(self, upload_id: str) -> list[bytes]:
        """Forget an upload and drop its chunk references; returns the released digests."""
        ...

    def counters(self) -> Counters:
        """The store-wide figures."""
        ...

    def add_quarantine(self, row: QuarantineRow) -> None:
        """Record a chunk as quarantined (replacing an earlier record of it)."""
        ...

    def is_quarantined(self, digest: bytes) -> bool:
        """Whether the chunk is recorded as quarantined."""
        ...

    def any_quarantined(self) -> bool:
        """Whether any chunk is recorded as quarantined."""
        ...

    def remove_quarantine(self, digests: Sequence[bytes]) -> None:
        """Forget quarantine records (the chunks were healed or collected)."""
        ...

    def quarantined(self) -> list[QuarantineRow]:
        """Every quarantine record (a short list: chunks found corrupt and not healed)."""
        ...

    def all_entries(self) -> Iterator[EntryRow]:
        """Every entry (full scan)."""
        ...

    def all_chunks(self) -> Iterator[tuple[bytes, int, int]]:
        """Every stored chunk as (digest, size, refs) (full scan)."""
        ...

    def all_upload_chunks(self) -> Iterator[tuple[bytes, int]]:
        """Every recorded upload chunk as (digest, size) (full scan)."""
        ...

    def all_pending(self) -> list[bytes]:
        """Every journalled digest."""
        ...

    def upload_ids(self) -> list[str]:
        """Every resumable upload's id."""
        ...

    def uploads_created_before(self, created_ns: int, limit: int) -> list[str]:
        """Up to ``limit`` ids of uploads created before ``created_ns``, oldest first."""
        ...

    def set_refs(self, digest: bytes, refs: int) -> bool:
        """Set the reference count of a stored chunk (a repair, to the references counted);
        with 0 the chunk loses its row and is journalled as pending, as by
        :meth:`drop_refs`. Returns whether it was released so (False also when the chunk has
        no row: nothing is changed)."""
        ...

    def chunks_after(self, after: bytes | None, limit: int) -> list[tuple[bytes, int]]:
        """Up to ``limit`` stored chunks that are not quarantined, as (digest, size), in digest
        order, after ``after`` (from the first if ``None``)."""
        ...


class MetadataStore(Protocol):
    """Transactions over the metadata.

    ``read`` runs ``fn`` in a consistent snapshot on the calling (Trio) thread and must not
    block for long; ``write`` runs ``fn`` in one atomic, durable transaction: either every row
    change of ``fn`` becomes visible and durable at once, or none does (``fn`` raising rolls
    it back).
    """

    def open_sync(self) -> bool:
        """Open (creating if needed) the metadata; returns whether it was created. Blocking:
        the store calls it from a worker thread, before anything else.

        Raises:
            StoreIOError, NoSpaceError, CorruptDataError: It cannot be opened.
        """
        ...

    def open_reader(self) -> None:
        """Get ready for :meth:`read` on the Trio thread (called after :meth:`open_sync`)."""
        ...

    def close_reader(self) -> None:
        """Stop serving :meth:`read` (Trio thread; never raises)."""
        ...

    def close_writer(self) -> None:
        """Close for good (blocking: called from a worker thread; never raises). Every
        committed write stays durable."""
        ...

    async def read(self, fn: Callable[[MetaTxn], T]) -> T:
        """Run ``fn`` in a read snapshot."""
        ...

    async def write(self, fn: Callable[[MetaTxn], T], *, use_reserve: bool = False) -> T:
        """Run ``fn`` in a write transaction and commit it. With ``use_reserve`` (writes that
        add no data: deletes, renames, forgetting, the journal), a write that fails for lack
        of space may release the store's space reserve and is retried once."""
        ...

    async def read_slow(self, fn: Callable[[MetaTxn], T]) -> T:
        """Run a long read (a full scan) in a snapshot, off the event loop."""
        ...
