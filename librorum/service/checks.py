"""The store's checks, orchestrated: fsck and repair on request, and the background scrub.

One check at a time. A check (or repair) reads every chunk; two at once would only halve
each other's speed and, for repairs, race on the same findings. A second request while one
runs is refused with BusyError at once rather than queued: an administrator retries, and no
request waits unboundedly behind an hour-long check. The scrub steps aside while a check
runs (the check verifies everything anyway).

The background scrub re-verifies every stored chunk, a few at a time, at most at
``scrub_rate`` bytes per second, and starts a pass at most once per ``scrub_interval``
(0 for either: no scrub). It yields to client traffic: before each step it waits until no
request has been in flight and none has arrived for :data:`QUIET` seconds (the front doors'
figures say so), so it only uses idle time; a step is a few chunks, so a request arriving
during one waits at most for those few chunk reads. A chunk found corrupt is quarantined
exactly as a READ finding it would (``Store.scrub_step``), and logged at ERROR. Where a pass
stands is saved in a small file in the data directory every :data:`SAVE_EVERY` seconds, so a
restart resumes the pass there (it would otherwise start again from the first chunk).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import attrs
import trio

from librorum.errors import BusyError
from librorum.service.caller import Caller
from librorum.service.figures import CheckFigures
from librorum.store import FsckProgress, FsckReport, RepairReport, Store

log = logging.getLogger("librorum.service")

#: Seconds with no request in flight and none received before a scrub step runs.
QUIET: Final = 0.25
#: Chunks verified per scrub step (between two looks at the traffic).
SCRUB_STEP_CHUNKS: Final = 4
#: Seconds between two saves of the scrub's position.
SAVE_EVERY: Final = 10.0
#: The longest sleep of the pacing (so a change of pace is seen soon).
_MAX_NAP: Final = 60.0


@attrs.frozen
class ScrubSettings:
    """How the background scrub runs.

    Attributes:
        rate: Bytes verified per second at most (0: no scrub).
        interval: Seconds between the starts of two passes (0: no scrub).
        state_file: Where the position of the pass under way is kept (``None``: not kept).
    """

    rate: float
    interval: float
    state_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.interval > 0


class Checks:
    """fsck, repair and the scrub of one store, and their figures.

    Args:
        store: The open store.
        admins_check: Raises ForbiddenError unless the caller is an administrator.
    """

    def __init__(self, store: Store, admins_check: Callable[[Caller, str], None]) -> None:
        self._store = store
        self._admins_check = admins_check
        self._lock = trio.Lock()
        self.figures = CheckFigures()

    # --- on request -----------------------------------------------------------------------

    async def fsck(self, caller: Caller, progress: FsckProgress | None = None) -> FsckReport:
        """Check the whole store (``Store.fsck``); ``progress`` is updated as it goes.

        Cancellation: stops the check at once (chunk reads in flight are waited for).

        Raises:
            ForbiddenError: ``caller`` is not an administrator.
            BusyError: A check or repair is running.
            StoreIOError: The metadata could not be read.
        """
        self._admins_check(caller, "fsck")
        progress = progress if progress is not None else FsckProgress()
        async with self._one_at_a_time(progress):
            report = await self._store.fsck(progress)
        self._record(report, repair=False, affected=report.affected_count, ok=report.ok)
        return report

    async def repair(self, caller: Caller, progress: FsckProgress | None = None) -> RepairReport:
        """Check the whole store and repair what can be (``Store.repair``).

        Cancellation: during the check, at once; during the repair, between its steps (a
        step that began completes).

        Raises:
            ForbiddenError: ``caller`` is not an administrator.
            BusyError: A check or repair is running.
            ReadOnlyError: The store refuses writes.
            StoreIOError, NoSpaceError, TimeoutError_: A repair step failed.
        """
        self._admins_check(caller, "fsck --repair")
        progress = progress if progress is not None else FsckProgress()
        async with self._one_at_a_time(progress):
            report = await self._store.repair(progress)
        self._record(report.check, repair=True, affected=report.reupload_count, ok=report.ok)
        return report

    @property
    def running(self) -> bool:
        """A check or repair is running."""
        return self._lock.locked()

    @asynccontextmanager
    async def _one_at_a_time(self, progress: FsckProgress) -> AsyncIterator[None]:
        """Hold the checks' lock, taken without waiting, and publish ``progress`` meanwhile.

        Raises:
            BusyError: A check or repair holds it.
        """
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            msg = "a check or repair of the store is running already; retry when it is done"
            raise BusyError(msg) from None
        self.figures.fsck_running = progress
        try:
            yield
        finally:
            self.figures.fsck_running = None
            self._lock.release()

    def _record(self, report: FsckReport, *, repair: bool, affected: int, ok: bool) -> None:
        figures = self.figures
        figures.last_fsck_ns = time.time_ns()
        figures.last_fsck_repair = repair
        figures.last_fsck_ok = ok
        # A corrupt chunk is quarantined as it is found: counted once, as quarantined
        # (unless its quarantine failed).
        figures.last_fsck_problems = (
            max(report.corrupt_count, report.quarantined_count)
            + report.missing_count
            + report.orphan_count
            + report.refcount_error_count
            + len(report.namespace_errors)
        )
        figures.last_fsck_affected = affected
        figures.fsck_chunks_verified += report.chunks_checked
        level = logging.INFO if ok else logging.ERROR
        log.log(
            level,
            "fsck%s: %d chunks checked, %d problems, %d files affected",
            " --repair" if repair else "",
            report.chunks_checked,
            figures.last_fsck_problems,
            affected,
        )

    # --- the background scrub -------------------------------------------------------------

    async def run_scrub(
        self,
        settings: ScrubSettings,
        traffic: Callable[[], tuple[int, int]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Scrub the store until cancelled (see the module docstring); returns at once if
        the settings disable it.

        Args:
            settings: Rate, interval, where to keep the position.
            traffic: (requests in flight now, requests received since the start): the
                scrub runs only when the first is 0 and the second stood still for
                :data:`QUIET` seconds.

        Cancellation: stops at once (a chunk being verified is waited for); the position is
        saved on the way out.

        Never raises for a failed step: it is logged and retried after a pause.
        """
        task_status.started()
        if not settings.enabled:
            return
        state = await trio.to_thread.run_sync(_load_state, settings.state_file)
        after = state.after
        pass_started = state.pass_started or time.time()
        self.figures.last_scrub_ns = state.last_pass_ns
        saved_at = time.monotonic()
        paced_until = trio.current_time()
        try:
            while True:
                if after is None and self.figures.last_scrub_ns:
                    # Between passes: the next starts one interval after the last began.
                    await trio.sleep(max(0.0, pass_started + settings.interval - time.time()))
                    pass_started = time.time()
                    self.figures.scrub_pass_chunks = 0
                await self._wait_for_quiet(traffic)
                try:
                    step = await self._store.scrub_step(after, SCRUB_STEP_CHUNKS)
                except Exception as exc:  # a failed step is retried later
                    log.warning("scrub: a step failed, retrying in a minute: %s", exc)
                    await trio.sleep(_MAX_NAP)
                    continue
                figures = self.figures
                figures.scrub_chunks_verified += step.verified
                figures.scrub_bytes_verified += step.size
                figures.scrub_pass_chunks += step.verified
                # Each damaged chunk is logged at ERROR where it is quarantined (the store's
                # "failed verification (scrub)"): not a second time here.
                figures.scrub_corrupt_found += len(step.damaged)
                after = step.next
                if after is None:
                    figures.last_scrub_ns = time.time_ns()
                    log.info(
                        "scrub: pass done, %d chunks verified, %d damaged found so far",
                        figures.scrub_pass_chunks,
                        figures.scrub_corrupt_found,
                    )
                # Pacing: the bytes verified are paid for in time at the configured rate.
                now = trio.current_time()
                paced_until = max(paced_until, now - 1.0) + step.size / settings.rate
                if paced_until > now:
                    await trio.sleep(min(paced_until - now, _MAX_NAP))
                if after is None or time.monotonic() - saved_at >= SAVE_EVERY:
                    saved_at = time.monotonic()
                    await self._save(settings, after, pass_started)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._save(settings, after, pass_started)

    async def _wait_for_quiet(self, traffic: Callable[[], tuple[int, int]]) -> None:
        """Return once no request is in flight, none came for QUIET seconds, and no check
        runs. Polls every QUIET seconds: the front doors keep plain counters, no events."""
        while True:
            in_flight, seen = traffic()
            if not in_flight and not self._lock.locked():
                await trio.sleep(QUIET)
                in_flight, now_seen = traffic()
                if not in_flight and now_seen == seen and not self._lock.locked():
                    self.figures.scrub_paused = False
                    return
            self.figures.scrub_paused = True
            await trio.sleep(QUIET)

    async def _save(self, settings: ScrubSettings, after: bytes | None, started: float) -> None:
        if settings.state_file is None:
            return
        state = {
            "after": after.hex() if after is not None else None,
            "pass_started": started,
            "last_pass_ns": self.figures.last_scrub_ns,
        }
        try:
            await trio.to_thread.run_sync(_save_state, settings.state_file, state)
        except OSError as exc:
            log.warning("scrub: could not save its position: %s", exc)


@attrs.frozen
class _State:
    after: bytes | None = None
    pass_started: float = 0.0
    last_pass_ns: int = 0


def _load_state(path: Path | None) -> _State:
    """The saved position of the scrub (worker thread); the start if none or unreadable."""
    if path is None:
        return _State()
    try:
        raw = json.loads(path.read_text())
        after = raw.get("after")
        return _State(
            bytes.fromhex(after) if isinstance(after, str) else None,
            float(raw.get("pass_started", 0.0)),
            int(raw.get("last_pass_ns", 0)),
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return _State()


def _save_state(path: Path, state: dict[str, float | str | None]) -> None:
    """Write the position atomically (worker thread): a crash leaves the old one or the
    new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)
