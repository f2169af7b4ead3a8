"""The records the store hands out. All are frozen ``attrs`` classes."""

from __future__ import annotations

from typing import Final

import attrs

from librorum.domain import EntryKind

#: At most this many items are listed by kind in an :class:`FsckReport` (the counts are exact).
FSCK_REPORT_ITEMS: Final = 100


@attrs.frozen
class FileInfo:
    """A snapshot of one namespace entry.

    Attributes:
        path: The normalised path.
        kind: File or directory.
        size: File size in bytes (0 for a directory).
        mtime_ns: When the content was last committed (files), or the directory was created;
            nanoseconds since the epoch. A rename keeps it.
        version: The store-wide commit sequence number of the last transaction that changed
            this entry (content, creation or rename). It strictly increases with every change
            of the entry at a path, even across delete and re-create.
        content_hash: BLAKE3 (32 bytes) of the file's whole content; ``None`` for directories.
    """

    path: str
    kind: EntryKind
    size: int
    mtime_ns: int
    version: int
    content_hash: bytes | None = None

    @property
    def name(self) -> str:
        """The last component of the path (``""`` for the root)."""
        return self.path.rpartition("/")[2]


@attrs.frozen
class ListPage:
    """One page of a directory listing, sorted by name.

    Attributes:
        entries: The entries of this page.
        next_cursor: Pass as ``cursor`` to get the next page; ``None`` on the last page.
    """

    entries: list[FileInfo]
    next_cursor: str | None


@attrs.frozen
class UploadStatus:
    """Where a resumable upload stands.

    Attributes:
        path: The path the upload will commit to.
        offset: Bytes durably stored: resume by sending the data from here.
        size: The declared total size, if one was given.
    """

    path: str
    offset: int
    size: int | None


@attrs.frozen
class Segment:
    """A verified, contiguous piece of file content inside a chunk file, for ``os.sendfile``.

    The descriptor belongs to the reader: it stays open until the segment iterator advances
    or the reader closes, whichever comes first. Do not close it.
    """

    fd: int
    offset: int
    length: int


@attrs.frozen
class StoreStatus:
    """Store figures (the store's part of NODE_STATUS).

    Attributes:
        files: Number of files.
        directories: Number of directories, the root included.
        logical_bytes: Sum of file sizes.
        stored_bytes: Bytes of chunk data on disk after deduplication.
        chunks: Number of distinct stored chunks.
        free_bytes: Space available to the store on its file system.
        uploads: Resumable uploads kept (attached or not).
        read_only: Whether the store refuses writes (after an fsync failure).
        quarantined: Chunks found corrupt and moved aside, not healed yet (files using them
            cannot be read until their content is uploaded again).
    """

    files: int
    directories: int
    logical_bytes: int
    stored_bytes: int
    chunks: int
    free_bytes: int
    uploads: int
    read_only: bool
    quarantined: int = 0


@attrs.frozen
class RecoveryReport:
    """What opening the store found left over from a crash and cleaned up.

    Attributes:
        temp_files_removed: Temp files of interrupted chunk writes.
        pending_checked: Journalled chunk intents and releases examined.
        chunks_collected: Chunk files deleted (unreferenced).
        uploads_kept: Resumable uploads kept, resumable from their committed offsets.
        seconds: Wall time of the recovery.
    """

    temp_files_removed: int
    pending_checked: int
    chunks_collected: int
    uploads_kept: int
    seconds: float


@attrs.frozen
class FsckReport:
    """The result of :meth:`Store.fsck`. Lists hold at most ``FSCK_REPORT_ITEMS`` items each;
    the ``*_count`` figures are exact.

    Attributes:
        files: Files checked.
        directories: Directories checked.
        chunks_checked: Chunk files rehashed.
        bytes_checked: Bytes rehashed.
        corrupt: Hex digests of chunks whose content does not match their name (found by this
            check; each is quarantined).
        corrupt_count: Their number.
        missing: Referenced chunks with no file (and not quarantined).
        missing_count: Their number.
        orphans: Chunk files that nothing references and no journal entry explains.
        orphan_count: Their number.
        refcount_errors: ``"<hex>: recorded N, counted M"`` for each chunk whose stored
            reference count differs from the references counted.
        refcount_error_count: Their number.
        namespace_errors: Descriptions of broken entries (a parent that is not a directory,
            a file whose size does not match its chunks, wrong figures).
        pending: Chunks awaiting collection (journalled; not an error).
        temp_files: Temp files present (chunk writes in progress; not an error).
        quarantined: Hex digests of the chunks in quarantine (found corrupt, by this check or
            earlier, and not healed since).
        quarantined_count: Their number.
        affected: Paths of the files that use a corrupt, missing or quarantined chunk (they
            cannot be read whole until their content is uploaded again).
        affected_count: Their number.
    """

    files: int
    directories: int
    chunks_checked: int
    bytes_checked: int
    corrupt: list[str]
    corrupt_count: int
    missing: list[str]
    missing_count: int
    orphans: list[str]
    orphan_count: int
    refcount_errors: list[str]
    refcount_error_count: int
    namespace_errors: list[str]
    pending: int
    temp_files: int
    quarantined: list[str] = attrs.field(factory=list)
    quarantined_count: int = 0
    affected: list[str] = attrs.field(factory=list)
    affected_count: int = 0

    @property
    def ok(self) -> bool:
        """No corruption, nothing missing or quarantined, no orphans, counts and namespace
        consistent."""
        return not (
            self.corrupt_count
            or self.missing_count
            or self.quarantined_count
            or self.orphan_count
            or self.refcount_error_count
            or self.namespace_errors
        )


@attrs.define
class FsckProgress:
    """How far a running check (or repair) is; the store updates it in place as it goes, and
    whoever started the check reads it whenever it likes (no callback, so a slow reader
    never slows the check).

    Attributes:
        phase: ``"metadata"`` (one pass over the records), ``"chunks"`` (rehashing),
            ``"files"`` (finding the files affected), ``"repair"``, then ``"done"``.
        chunks_done: Chunk files rehashed so far.
        chunks_total: Chunk files to rehash (known once the metadata pass is over).
        bytes_done: Bytes rehashed so far.
        bytes_total: Bytes to rehash.
    """

    phase: str = "metadata"
    chunks_done: int = 0
    chunks_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0


@attrs.frozen
class RepairReport:
    """The result of :meth:`Store.repair`.

    Attributes:
        check: What the check before the repair found (its corrupt chunks are quarantined).
        orphans_removed: Chunk files the collection after journalling the orphans deleted
            (the orphans, and any chunk released meanwhile).
        refcounts_fixed: Reference counts set to the references counted.
        reupload: Paths of the files that still use a quarantined or missing chunk: their
            content must be uploaded again (at most ``FSCK_REPORT_ITEMS``).
        reupload_count: Their number.
        unrepaired: What the repair could not fix (namespace errors, counts of chunks with
            no record), as descriptions.
    """

    check: FsckReport
    orphans_removed: int
    refcounts_fixed: int
    reupload: list[str]
    reupload_count: int
    unrepaired: list[str]

    @property
    def ok(self) -> bool:
        """Nothing left to do: no file needs uploading again, nothing left unrepaired."""
        return not (self.reupload_count or self.unrepaired)


@attrs.frozen
class ScrubStep:
    """What one step of the background scrub verified (:meth:`Store.scrub_step`).

    Attributes:
        verified: Chunks verified.
        size: Their bytes.
        damaged: Hex digests of the chunks found corrupt (quarantined) or missing.
        next: Where the next step starts (the last digest verified), ``None`` when the pass
            reached the last chunk.
    """

    verified: int
    size: int
    damaged: list[str]
    next: bytes | None
