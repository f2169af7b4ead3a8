"""The repair after a check: what fsck found, put right where the store can.

A repair runs the full check first (``recovery.check``: a corrupt chunk is quarantined as it
is found), then, in bounded steps:

- orphan chunk files (nothing references them, no journal entry explains them) are
  journalled as pending and collected, by the collector, which rechecks each one under its
  chunk lock (a chunk referenced or pinned since the check is kept);
- wrong reference counts are set to the references counted. The check counted them in one
  consistent snapshot, so the difference between count and record stays true while commits
  add and drop references meanwhile: the repair applies that difference to the current
  record, under the chunk's lock;
- the files that still use a quarantined or missing chunk are listed: only their content,
  uploaded again, can heal them (an upload publishes a fresh copy of every chunk, see
  ``store.py``).

Each step (a batch of at most ``gc_batch`` chunks) is shielded from cancellation: a step
that began completes, and a repair cancelled between steps has applied whole steps only,
each of which leaves the store consistent. Nothing a repair does is needed for the store to
be correct later; a repair interrupted is simply run again.
"""

from __future__ import annotations

import logging

import trio

from librorum.store.engine import ChunkEngine
from librorum.store.meta import MetaTxn
from librorum.store.recovery import affected_files, check
from librorum.store.types import FSCK_REPORT_ITEMS, FsckProgress, RepairReport

log = logging.getLogger("librorum.store")


async def repair(engine: ChunkEngine, progress: FsckProgress | None = None) -> RepairReport:
    """Check the store of ``engine`` and repair what can be repaired (see the module
    docstring).

    Args:
        engine: The engine, open and writable.
        progress: Updated in place (the check's phases, then ``"repair"``).

    Cancellation: during the check, as the check; during the repair, between steps (a step
    that began completes).

    Raises:
        ReadOnlyError: The store refuses writes.
        StoreIOError, NoSpaceError, TimeoutError_: A step could not be made (the steps before
            it stand).
    """
    engine.check_writable()
    if progress is None:
        progress = FsckProgress()
    report, findings = await check(engine, progress)
    progress.phase = "repair"
    batch = engine.gc_batch

    removed = 0
    orphans = findings.orphans
    for start in range(0, len(orphans), batch):
        step = orphans[start : start + batch]
        with trio.CancelScope(shield=True):
            await _journal_orphans(engine, step)
        # Outside the shield: collection may stop at any point (what is journalled stays
        # journalled for the next step or the next open), and it runs over the whole
        # journal, not only this step's chunks.
        removed += await engine.collect_garbage()

    fixed = 0
    # Chunks whose record was gone by the time their count was to be set: files counted as
    # using them, so their data is lost now (their recorded count was too low and reached 0).
    vanished: list[bytes] = []
    items = list(findings.refcount_deltas.items())
    for start in range(0, len(items), batch):
        with trio.CancelScope(shield=True):
            done, gone, released = await _fix_counts(engine, dict(items[start : start + batch]))
        if released:
            removed += await engine.collect_garbage()  # cancellable, as above
        fixed += done
        vanished += gone
    if removed or fixed:
        log.warning(
            "fsck repair: %d orphan chunk files removed, %d reference counts fixed",
            removed,
            fixed,
        )

    # What remains: every file that uses a chunk quarantined or missing now.
    def bad_now(t: MetaTxn) -> set[bytes]:
        still_missing = {d for d in findings.missing if t.refs(d)}
        lost = {d for d in vanished if not t.refs(d)}
        return {row.digest for row in t.quarantined()} | still_missing | lost

    bad = await engine.meta.read(bad_now)
    reupload = await affected_files(engine, bad) if bad else []
    unrepaired = [f"{d.hex()}: referenced but has no record" for d in findings.unrecorded]
    unrepaired += [
        f"{d.hex()}: referenced, but collected before its count could be set" for d in vanished
    ]
    unrepaired += report.namespace_errors
    for path in reupload[:FSCK_REPORT_ITEMS]:
        log.error("fsck repair: %s uses damaged data: upload its content again", path)
    progress.phase = "done"
    return RepairReport(
        check=report,
        orphans_removed=removed,
        refcounts_fixed=fixed,
        reupload=reupload[:FSCK_REPORT_ITEMS],
        reupload_count=len(reupload),
        unrepaired=unrepaired[:FSCK_REPORT_ITEMS],
    )


async def _journal_orphans(engine: ChunkEngine, digests: list[bytes]) -> None:
    """Journal ``digests`` as pending (those still unreferenced), for the collector to delete:
    it skips a pinned chunk and rechecks each under its lock."""

    def journal(t: MetaTxn) -> None:
        t.add_pending([d for d in digests if not t.refs(d)])

    async with engine.chunk_locks.hold(digests):
        await engine.meta.write(journal, use_reserve=True)


async def _fix_counts(
    engine: ChunkEngine, deltas: dict[bytes, int]
) -> tuple[int, list[bytes], bool]:
    """Apply the counted-minus-recorded differences to the current records, under the chunks'
    locks; a count that reaches 0 releases the chunk (collected next). Returns how many
    counts were set, the chunks that files were counted as using (a positive difference)
    whose record is gone since the check (nothing to set, their data is lost), and whether
    a count reached 0 (the caller collects)."""

    def fix(t: MetaTxn) -> tuple[int, list[bytes], list[bytes]]:
        done = 0
        released: list[bytes] = []
        gone: list[bytes] = []
        for digest, delta in deltas.items():
            current = t.refs(digest)
            if not current:
                if delta > 0:
                    gone.append(digest)
                continue  # collected since the check: nothing to set
            if t.set_refs(digest, max(0, current + delta)):
                released.append(digest)
            done += 1
        return done, released, gone

    async with engine.chunk_locks.hold(list(deltas)):
        done, released, gone = await engine.meta.write(fix, use_reserve=True)
    return done, gone, bool(released)
