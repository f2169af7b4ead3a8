"""Recovery at open and the full check (fsck).

Recovery removes the temp files of interrupted chunk writes and collects the chunks
journalled as pending (intents of writes that never committed, releases not yet collected);
resumable uploads are kept. Its cost is proportional to that leftover work, not to the size
of the store. fsck reads everything: it rehashes every chunk, recounts every reference and
checks the namespace and the figures. See ``store.py`` for the journal and the durable order
they rely on.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from typing import Final

import attrs
import trio

from librorum.errors import CorruptDataError, StoreIOError
from librorum.store import namespace as ns
from librorum.store.engine import ChunkEngine
from librorum.store.meta import KIND_DIR, MetaTxn
from librorum.store.objects import SHARDS, CorruptChunkError
from librorum.store.types import (
    FSCK_REPORT_ITEMS,
    FsckProgress,
    FsckReport,
    RecoveryReport,
    ScrubStep,
)

log = logging.getLogger("librorum.store")

#: Chunks one pass of a check holds at most (about: a pass covers a range of first bytes of
#: their digests): their digests, counts and sizes take some 500 bytes each, so a pass holds
#: some 32 MiB. A store of up to this many chunks is checked in one pass.
CHECK_PASS_CHUNKS: Final = 65_536


async def recover(engine: ChunkEngine, *, started: float) -> RecoveryReport:
    """Recover an engine just opened: remove temp files, remove quarantined copies no
    record names, allocate the space reserve again if there is room, and collect every
    journalled chunk nothing references.

    Args:
        engine: The engine, opened.
        started: ``time.perf_counter()`` when opening began (the report's duration).

    Cancellation: an interrupted recovery is finished by the next open.

    Raises:
        StoreIOError: The leftovers could not be listed or removed.
    """
    temp_removed = await engine.in_thread(engine.objects.clear_temp_sync)
    await clear_quarantine_leftovers(engine)
    if not await engine.in_thread(engine.space.restore_sync):
        log.warning("the disk is full: the metadata reserve is not allocated yet")
    checked = collected = 0
    while True:
        handled, deleted = await engine.collect_step()
        checked += handled
        collected += deleted
        if not handled:
            break
    counters = await engine.meta.read(lambda t: t.counters())
    return RecoveryReport(
        temp_files_removed=temp_removed,
        pending_checked=checked,
        chunks_collected=collected,
        uploads_kept=counters.uploads,
        seconds=time.perf_counter() - started,
    )


async def clear_quarantine_leftovers(engine: ChunkEngine) -> int:
    """At open: remove quarantined copies that no record names (a heal or a collection
    interrupted after dropping the record). Returns how many."""
    names = await engine.in_thread(engine.objects.list_quarantine_sync)
    if not names:
        return 0
    recorded = {row.digest.hex() for row in await engine.meta.read(lambda t: t.quarantined())}
    stale = [bytes.fromhex(n) for n in names if n not in recorded and _is_hex_digest(n)]
    if stale:
        await engine.objects.drop_quarantined(stale)
    return len(stale)


async def fsck(engine: ChunkEngine, progress: FsckProgress | None = None) -> FsckReport:
    """Check the whole store of ``engine`` (see :func:`check`, which also returns what a
    repair needs)."""
    report, _findings = await check(engine, progress)
    return report


@attrs.frozen
class Findings:
    """What a check found, in full (not capped as the report's lists are), for a repair.

    Attributes:
        orphans: Chunk files nothing references and no journal entry explains.
        refcount_deltas: For each chunk with a record whose count is wrong: counted -
            recorded. Counted in one consistent snapshot, so the difference stays true while
            later commits add and drop references.
        unrecorded: Chunks referenced that have no record (a count the repair cannot set:
            it does not know their size).
        missing: Referenced chunks with no data (and not quarantined).
    """

    orphans: list[bytes]
    refcount_deltas: dict[bytes, int]
    unrecorded: list[bytes]
    missing: list[bytes]


async def check(
    engine: ChunkEngine, progress: FsckProgress | None = None
) -> tuple[FsckReport, Findings]:
    """Check the whole store of ``engine``: rehash every chunk file, recount every reference,
    check the namespace and the figures, look for missing and orphan chunk files, and find the
    files that use a chunk found corrupt, missing or quarantined.

    Safe on a live store: findings that concurrent activity could explain (a chunk
    written or collected during the scan) are rechecked against the current state
    before being reported. Reports, never repairs; but a chunk found corrupt is
    quarantined, as a read finding it would (logged at ERROR, moved aside, recorded:
    see ``ChunkEngine.on_corrupt``), and listed both as corrupt and as quarantined.

    Memory: the chunks are checked in passes over ranges of digests (by their first byte),
    each holding the digests, counts and sizes of at most about :data:`CHECK_PASS_CHUNKS`
    chunks; a pass recounts the references to its range in one consistent read of the
    metadata, lists only its shards, and rehashes its chunks from mappings, one chunk per
    I/O thread at a time. The namespace pass holds an id and a kind per entry. Findings
    (defects) are held whole.

    Args:
        engine: The engine, open.
        progress: Updated in place as the check goes (phase, chunks and bytes done).

    Cancellation: safe at any point (reads only; chunk reads in flight, at most one chunk
    per I/O thread, are waited for).

    Raises:
        StoreIOError: The metadata could not be read.
    """
    if progress is None:
        progress = FsckProgress()
    progress.phase = "metadata"
    shape = await engine.meta.read_slow(_scan_namespace)
    progress.chunks_total = shape.chunks
    progress.bytes_total = shape.stored_bytes
    passes = 1
    while passes < len(SHARDS) and shape.chunks > passes * CHECK_PASS_CHUNKS:
        passes *= 2
    width = len(SHARDS) // passes
    total = _Totals()
    for start in range(0, len(SHARDS), width):
        await _check_range(engine, progress, range(start, start + width), total)
    corrupt, missing, orphans = total.corrupt, total.missing, total.orphans
    quarantined_rows = await engine.meta.read(lambda t: t.quarantined())
    quarantined = sorted(row.digest.hex() for row in quarantined_rows)
    progress.phase = "files"
    bad = set(corrupt) | set(missing) | {row.digest for row in quarantined_rows}
    affected = await affected_files(engine, bad) if bad else []
    temp_files = await engine.in_thread(engine.objects.count_temp_sync)
    namespace_errors = shape.namespace_errors + [
        f"foreign file in chunks/: {f}" for f in total.foreign
    ]
    cap = FSCK_REPORT_ITEMS
    report = FsckReport(
        files=shape.files,
        directories=shape.dirs,
        chunks_checked=total.checked,
        bytes_checked=total.bytes,
        corrupt=sorted(d.hex() for d in corrupt)[:cap],
        corrupt_count=len(corrupt),
        missing=sorted(d.hex() for d in missing)[:cap],
        missing_count=len(missing),
        orphans=sorted(d.hex() for d in orphans)[:cap],
        orphan_count=len(orphans),
        refcount_errors=sorted(total.refcount_errors)[:cap],
        refcount_error_count=len(total.refcount_errors),
        namespace_errors=namespace_errors[:cap],
        pending=total.pending,
        temp_files=temp_files,
        quarantined=quarantined[:cap],
        quarantined_count=len(quarantined),
        affected=affected[:cap],
        affected_count=len(affected),
    )
    findings = Findings(
        orphans=orphans,
        refcount_deltas=total.deltas,
        unrecorded=total.unrecorded,
        missing=missing,
    )
    return report, findings


class _Totals:
    """What the passes of a check found, added up."""

    def __init__(self) -> None:
        self.corrupt: list[bytes] = []
        self.missing: list[bytes] = []
        self.orphans: list[bytes] = []
        self.refcount_errors: list[str] = []
        self.deltas: dict[bytes, int] = {}
        #: Bytes of the chunks rehashed.
        self.bytes = 0
        self.unrecorded: list[bytes] = []
        self.foreign: list[str] = []
        self.pending = 0
        self.checked = 0


async def _check_range(
    engine: ChunkEngine, progress: FsckProgress, first_bytes: range, total: _Totals
) -> None:
    """One pass of a check: the chunks whose digest starts with a byte in ``first_bytes``."""
    progress.phase = "chunks"
    lo, hi = first_bytes.start, first_bytes.stop
    scan = await engine.meta.read_slow(functools.partial(_scan_range, lo, hi))
    expected: Counter[bytes] = scan.refs
    stored = scan.chunks
    wrong = [
        d for d in set(expected) | set(stored) if stored.get(d, (0, 0))[1] != expected.get(d, 0)
    ]
    total.refcount_errors += [
        f"{d.hex()}: recorded {stored.get(d, (0, 0))[1]}, counted {expected.get(d, 0)}"
        for d in wrong
    ]
    total.deltas.update({d: expected.get(d, 0) - stored[d][1] for d in wrong if d in stored})
    total.unrecorded += [d for d in wrong if d not in stored]
    total.pending += len(scan.pending)
    on_disk: set[bytes] = set()
    shards = SHARDS[lo:hi]
    for shard, names in (await engine.objects.list_all(shards)).items():
        for name in names:
            try:
                digest = bytes.fromhex(name)
            except ValueError:
                digest = b""
            if len(digest) != 32 or name[:2] != shard:
                total.foreign.append(f"{shard}/{name}")
            else:
                on_disk.add(digest)
    missing = [d for d in stored if d not in on_disk]
    # A referenced chunk without a record is not an orphan: its file is data in use.
    orphans = [
        d for d in on_disk if d not in stored and d not in scan.pending and d not in expected
    ]
    del on_disk, expected
    corrupt: list[bytes] = []
    absent = set(missing)
    # The sizes of the missing ones, to look for them again at the end (see below).
    missing_size = {d: stored[d][0] for d in missing}
    todo = [(d, size) for d, (size, _refs) in stored.items() if d not in absent]
    del stored
    total.checked += len(todo)

    async def worker() -> None:
        while todo:
            digest, size = todo.pop()
            try:
                await engine.objects.check(digest, size)
            except CorruptChunkError as exc:
                if exc.identity is None:
                    missing.append(digest)  # gone since the listing: rechecked below
                    missing_size[digest] = size
                else:
                    corrupt.append(digest)
                    await engine.on_corrupt(exc, size, "fsck")
            except (CorruptDataError, StoreIOError):
                corrupt.append(digest)
            progress.chunks_done += 1
            progress.bytes_done += size
            total.bytes += size

    async with trio.open_nursery() as nursery:
        # Half the I/O threads at most: a check of the whole store must leave the clients'
        # reads and writes room to run meanwhile.
        for _ in range(max(1, int(engine.io_limiter.total_tokens) // 2)):
            nursery.start_soon(worker)

    # Recheck findings a concurrent write or collection could explain. A chunk moved to
    # quarantine is reported as quarantined, not as missing.
    if orphans or missing:
        now = await engine.meta.read(
            lambda t: {
                d: (t.refs(d), t.is_pending(d), t.is_quarantined(d)) for d in orphans + missing
            }
        )
        orphans = [d for d in orphans if now[d][:2] == (0, False) and not engine.pins.pinned(d)]
        missing = [d for d in missing if now[d][0] > 0 and not now[d][2]]
    # A chunk collected and published again by an upload between the snapshot of this pass
    # and its listing of the chunk files is there after all: look for each missing one once
    # more, on disk.
    confirmed: list[bytes] = []
    for digest in missing:
        size = missing_size[digest]
        try:
            await engine.objects.check(digest, size)
        except CorruptChunkError as exc:
            if exc.identity is None:
                confirmed.append(digest)
            else:
                corrupt.append(digest)
                await engine.on_corrupt(exc, size, "fsck")
        except (CorruptDataError, StoreIOError):
            corrupt.append(digest)
    missing = confirmed
    total.corrupt += corrupt
    total.missing += missing
    total.orphans += orphans


async def affected_files(engine: ChunkEngine, digests: set[bytes]) -> list[str]:
    """The sorted paths of the files that use any of ``digests`` (one pass over the records,
    in a worker thread)."""
    return await engine.meta.read_slow(lambda t: _files_using(t, digests))


def _files_using(t: MetaTxn, digests: set[bytes]) -> list[str]:
    # The matching rows first, then their paths: no lookup while the scan is open.
    rows = [
        row
        for row in t.all_entries()
        if row.kind != KIND_DIR and not digests.isdisjoint(ns.digests(row))
    ]
    paths: list[str] = []
    for row in rows:
        names = [row.name]
        parent = t.entry(row.parent)
        # Bounded by the depth of the tree (and by a visited set, should a record be broken).
        seen = {row.id}
        while parent is not None and parent.id != 1 and parent.id not in seen:
            seen.add(parent.id)
            names.append(parent.name)
            parent = t.entry(parent.parent)
        paths.append("/" + "/".join(reversed(names)))
    return sorted(paths)


async def scrub_step(engine: ChunkEngine, after: bytes | None, limit: int) -> ScrubStep:
    """Verify up to ``limit`` stored chunks after digest ``after``, in digest order; a chunk
    found corrupt is quarantined (``ChunkEngine.on_corrupt``, logged at ERROR), one missing
    is logged at ERROR. Quarantined chunks are skipped: they are known bad.

    Cancellation: safe at any point (the chunk being verified is waited for).

    Raises:
        StoreIOError: The metadata could not be read.
    """
    rows = await engine.meta.read(lambda t: t.chunks_after(after, limit))
    damaged: list[str] = []
    done = 0
    for digest, size in rows:
        try:
            await engine.objects.check(digest, size)
        except CorruptDataError as exc:
            # Missing or corrupt; a chunk collected since the listing is no finding.
            if await engine.meta.read(functools.partial(_refs, digest)):
                damaged.append(digest.hex())
                await engine.on_corrupt(exc, size, "scrub")
        except StoreIOError as exc:
            log.warning("scrub: chunk %s could not be read: %s", digest.hex(), exc)
        done += size
    last = rows[-1][0] if len(rows) == limit else None
    return ScrubStep(verified=len(rows), size=done, damaged=damaged, next=last)


def _refs(digest: bytes, t: MetaTxn) -> int:
    return t.refs(digest)


def _is_hex_digest(name: str) -> bool:
    try:
        return len(bytes.fromhex(name)) == 32
    except ValueError:
        return False


class _Shape:
    """What the namespace pass of a check counted and found."""

    def __init__(self) -> None:
        self.namespace_errors: list[str] = []
        self.files = 0
        self.dirs = 0
        self.chunks = 0
        self.stored_bytes = 0


def _scan_namespace(t: MetaTxn) -> _Shape:
    """One consistent pass over the entries and the chunk records (worker thread): the
    namespace's structure and the figures. Holds an id and a kind per entry (the parents are
    checked against them), nothing per chunk."""
    shape = _Shape()
    kinds: dict[int, int] = {}
    parents: list[tuple[int, int]] = []
    logical = 0
    for row in t.all_entries():
        kinds[row.id] = row.kind
        if row.id != 1:
            parents.append((row.id, row.parent))
        if row.kind == KIND_DIR:
            shape.dirs += 1
            continue
        shape.files += 1
        logical += row.size
        count = len(row.chunks or b"") // 32
        lengths = ns.chunk_lengths(row.size, row.chunk_size or 1)
        if count != len(lengths):
            shape.namespace_errors.append(
                f"entry {row.id} ({row.name!r}): {count} chunks for {row.size} bytes"
            )
    for entry_id, parent in parents:
        if kinds.get(parent) != KIND_DIR:
            broken = t.entry(entry_id)
            name = broken.name if broken is not None else "?"
            shape.namespace_errors.append(f"entry {entry_id} ({name!r}): parent is not a directory")
    del kinds, parents
    for _digest, size, _refs in t.all_chunks():
        shape.chunks += 1
        shape.stored_bytes += size
    c = t.counters()
    uploads = len(t.upload_ids())
    actual = (shape.files, shape.dirs, logical, shape.stored_bytes, shape.chunks, uploads)
    recorded = (c.files, c.dirs, c.logical_bytes, c.stored_bytes, c.chunk_count, c.uploads)
    if actual != recorded:
        shape.namespace_errors.append(f"figures: recorded {recorded}, counted {actual}")
    return shape


class _Scan:
    """The references, records and journal entries of one range of digests."""

    def __init__(self) -> None:
        self.refs: Counter[bytes] = Counter()
        self.chunks: dict[bytes, tuple[int, int]] = {}
        self.pending: set[bytes] = set()


def _scan_range(lo: int, hi: int, t: MetaTxn) -> _Scan:
    """One consistent pass over the metadata for the digests whose first byte is in
    ``lo..hi-1`` (worker thread): the references counted, the records, the journal."""
    scan = _Scan()
    refs = scan.refs
    for row in t.all_entries():
        if row.kind != KIND_DIR:
            refs.update(d for d in ns.digests(row) if lo <= d[0] < hi)
    for digest, _size in t.all_upload_chunks():
        if lo <= digest[0] < hi:
            refs[digest] += 1
    for digest, size, count in t.all_chunks():
        if lo <= digest[0] < hi:
            scan.chunks[digest] = (size, count)
    scan.pending = {d for d in t.all_pending() if lo <= d[0] < hi}
    return scan
