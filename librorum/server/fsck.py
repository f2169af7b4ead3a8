"""FSCK (spec 5.20): the check or repair of the store, with progress replies.

The service core runs the check (admin rule, one at a time, the figures); this front door
only turns its progress record into progress replies, about one a second, and its report
into the final reply. A progress reply is queued only once everything queued before it is
written, so a client that reads slowly holds the server to one unsent progress frame, never
a backlog; the check itself never waits for the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs
import trio

from librorum.errors import TimeoutError_
from librorum.protocol.constants import MAX_CONTROL_PAYLOAD
from librorum.protocol.messages import Fsck, FsckReply
from librorum.server.requests import Driver, RequestState
from librorum.server.streams import wait_on_client
from librorum.service import CheckFigures, FsckProgress, FsckReport, RepairReport

#: Seconds between two progress replies.
PROGRESS_INTERVAL: Final = 1.0
#: Bytes the lists of the final reply may take together: the control-frame limit less room
#: for the keys and the figures (a few hundred bytes).
_LISTS_BUDGET: Final = MAX_CONTROL_PAYLOAD - 4096
#: Bytes an item costs beyond its text, at most (its MessagePack str header).
_ITEM_OVERHEAD: Final = 5


async def fsck(driver: Driver, state: RequestState, message: Fsck) -> FsckReply:
    """FSCK: run the check (or the repair) in this task, progress replies beside it.

    Cancellation: as the service's check or repair (a check stops at once; a repair step
    that began completes).
    """
    state.started = True
    progress = FsckProgress()
    service = driver.service
    failure: Exception | None = None
    result: FsckReport | RepairReport | None = None
    stalled: list[TimeoutError_] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_send_progress, driver, state, progress, stalled, nursery.cancel_scope)
        try:
            if message.repair:
                result = await service.repair(driver.caller, progress)
            else:
                result = await service.fsck(driver.caller, progress)
        except Exception as exc:  # handed out of the nursery as it is, not in a group
            failure = exc
        finally:
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if stalled:
        raise stalled[0]
    assert result is not None
    return final_reply(result, progress)


def status_fields(figures: CheckFigures) -> dict[str, Any]:
    """The NODE_STATUS fields of the checks' figures (spec 5.5)."""
    running = figures.fsck_running
    return {
        "fsck_phase": running.phase if running is not None else "",
        "fsck_chunks_done": running.chunks_done if running is not None else 0,
        "fsck_chunks_total": running.chunks_total if running is not None else 0,
        "last_fsck_ms": figures.last_fsck_ns // 1_000_000,
        "last_fsck_ok": figures.last_fsck_ok,
        "last_fsck_problems": figures.last_fsck_problems,
        "last_fsck_affected": figures.last_fsck_affected,
        "last_scrub_ms": figures.last_scrub_ns // 1_000_000,
        "scrub_chunks_verified": figures.scrub_chunks_verified,
        "scrub_corrupt_found": figures.scrub_corrupt_found,
    }


def progress_reply(progress: FsckProgress) -> FsckReply:
    """A progress reply: the progress fields only."""
    return FsckReply(
        phase=progress.phase,
        chunks_done=progress.chunks_done,
        chunks_total=progress.chunks_total,
        bytes_done=progress.bytes_done,
        bytes_total=progress.bytes_total,
    )


def final_reply(result: FsckReport | RepairReport, progress: FsckProgress) -> FsckReply:
    """The final reply for a check's or a repair's report, its lists cut to fit one control
    frame (the counts stay exact)."""
    report = result.check if isinstance(result, RepairReport) else result
    fit = _Fitter(_LISTS_BUDGET)
    reply = FsckReply(
        phase="done",
        chunks_done=progress.chunks_done,
        chunks_total=progress.chunks_total,
        bytes_done=progress.bytes_done,
        bytes_total=progress.bytes_total,
        files=report.files,
        directories=report.directories,
        # Paths first: they are what an operator acts on.
        affected=fit(report.affected),
        affected_count=report.affected_count,
        corrupt=fit(report.corrupt),
        corrupt_count=report.corrupt_count,
        missing=fit(report.missing),
        missing_count=report.missing_count,
        orphans=fit(report.orphans),
        orphan_count=report.orphan_count,
        refcount_errors=fit(report.refcount_errors),
        refcount_error_count=report.refcount_error_count,
        namespace_errors=fit(report.namespace_errors),
        quarantined=fit(report.quarantined),
        quarantined_count=report.quarantined_count,
    )
    if not isinstance(result, RepairReport):
        return reply
    return attrs.evolve(
        reply,
        repaired=True,
        orphans_removed=result.orphans_removed,
        refcounts_fixed=result.refcounts_fixed,
        reupload=fit(result.reupload),
        reupload_count=result.reupload_count,
        unrepaired=fit(result.unrepaired),
    )


class _Fitter:
    """Cuts lists to what is left of one byte budget that they share."""

    def __init__(self, budget: int) -> None:
        self._left = budget

    def __call__(self, items: Sequence[str]) -> tuple[str, ...]:
        kept: list[str] = []
        for item in items:
            cost = len(item.encode()) + _ITEM_OVERHEAD
            if cost > self._left:
                break
            self._left -= cost
            kept.append(item)
        return tuple(kept)


async def _send_progress(
    driver: Driver,
    state: RequestState,
    progress: FsckProgress,
    stalled: list[TimeoutError_],
    check: trio.CancelScope,
) -> None:
    """Every PROGRESS_INTERVAL, once what was queued before is written, a progress reply.
    A client that reads nothing for the stream deadline stops the check (``check``), with
    the TimeoutError_ put in ``stalled``.

    Cancellation: stops at once (the check's end cancels it).
    """
    session = driver.session
    while True:
        await trio.sleep(PROGRESS_INTERVAL)
        # The client's reading paces the progress replies, never the check.
        try:
            await wait_on_client(
                driver, state, "read none of the progress replies", driver.wait_until_sent
            )
        except TimeoutError_ as exc:
            stalled.append(exc)
            check.cancel()
            return
        if not session.is_in_flight(state.session_id):
            return
        session.reply(state.session_id, progress_reply(progress), end=False)
        driver.wake_writer()
