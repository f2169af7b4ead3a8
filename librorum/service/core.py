"""The service core: every operation the daemon offers, once, for every front door.

A front door (LBRU over a Unix socket or WebSocket today) owns only its wire format: it turns
a request into a call of one method here and the result into its reply. What an operation
means, the rules it checks and its behaviour under cancellation live here, so every front door
gets the same answers:

- The arguments' rules that are not the store's own: a resumable upload's id, where a resumed
  upload continues, a read that starts past the end, what a passed descriptor may be.
- The limits: :attr:`Service.max_file_size` is what the store enforces and what a front door
  announces.
- Outcomes never unknown (spec 5.14): a mutation that has begun completes, and so does a
  commit, whoever is cancelled meanwhile; before that, a cancelled operation has no effect.

Errors are ``LibrorumError`` subclasses carrying their wire codes (the store's pass through
unchanged); each method says which it raises.

Adding an operation: a method here (its docstring says what it raises and what cancelling it
does), calling only the store's public API, then one row and one handler in each front door
that offers it (for LBRU: ``librorum/server/commands.py``).
"""

from __future__ import annotations

import logging
import platform
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, TypeVar

import attrs
import trio

from librorum.errors import BadRequestError, ConflictError, NotFoundError, UnavailableError
from librorum.histogram import HistogramSnapshot
from librorum.service.caller import Admins, Caller
from librorum.service.checks import Checks
from librorum.service.descriptors import DescriptorKind, descriptor_kind
from librorum.service.figures import InflightGauge, NodeReport, Stats
from librorum.service.live import MAX_LISTED, LiveRequests, LiveSnapshot
from librorum.service.logring import LogCounts, LogEntry, LogFilter, LogPage, LogRing
from librorum.store import (
    FileInfo,
    FsckProgress,
    FsckReport,
    ListPage,
    Reader,
    RepairReport,
    Store,
    Upload,
    UploadStatus,
    WriteMode,
)
from librorum.store.store import DEFAULT_INLINE_LIST_LIMIT
from librorum.version import __version__

log = logging.getLogger("librorum.service")

#: Spec 5.10: what a client-chosen upload id may look like.
UPLOAD_ID: Final = re.compile(r"[A-Za-z0-9_-]{16,64}")
#: LIST pages up to this many entries are read inline by the store (its default; a store
#: configured lower reads them in a thread, which is correct inline too, only slower). So
#: :meth:`Service.list` with such a limit, like :meth:`Service.stat` and
#: :meth:`Service.upload_status`, completes without a checkpoint.
INLINE_LIST_LIMIT: Final = DEFAULT_INLINE_LIST_LIMIT


T = TypeVar("T")


async def _completed(operation: Awaitable[T]) -> T:
    """Run ``operation`` to its end, shielded from cancellation: once a mutation has begun,
    its caller learns its outcome whatever is cancelled meanwhile (spec 5.14)."""
    with trio.CancelScope(shield=True):
        result = await operation
    # Returned after the block: a cancel scope may swallow exceptions, as type checkers see it.
    return result  # noqa: RET504


class _NoBudget:
    """The in-flight figures of a service that no front door shares a budget with."""

    used = 0
    peak = 0


class Service:
    """The daemon's operations over one open store.

    Args:
        store: The open store; the service calls its public API only.
        stats: The figures the front doors keep (a new, empty one if omitted).
        inflight: The budget of upload bytes in flight, for :meth:`node_status`.
        admins: Who may run administrators' commands (default: the daemon's own uid).
        node_id: The node's stable identity (default: a random one).
        on_shutdown: Starts the daemon's graceful shutdown (for :meth:`shutdown`); ``None``
            when nothing runs the service that could stop.
        logs: The daemon's recent log records (default: an empty ring of its own, which
            nothing logs into).

    Every method runs on the Trio thread. The read-only ones (:meth:`stat`, :meth:`list`
    with a small page, :meth:`upload_status`) complete without a checkpoint: a front door may
    answer them without a task of their own.
    """

    def __init__(
        self,
        store: Store,
        *,
        stats: Stats | None = None,
        inflight: InflightGauge | None = None,
        admins: Admins | None = None,
        node_id: str | None = None,
        on_shutdown: Callable[[], None] | None = None,
        logs: LogRing | None = None,
    ) -> None:
        self._store = store
        self.admins = admins if admins is not None else Admins()
        self.stats = stats if stats is not None else Stats()
        self._inflight: InflightGauge = inflight if inflight is not None else _NoBudget()
        #: The node's identity in :meth:`node_status`: the one kept in the data directory
        #: (the daemon passes it), else random, chosen at start.
        self.node_id = node_id if node_id is not None else secrets.token_hex(8)
        self._started_at = time.monotonic()
        #: The requests in flight across the front doors, for :meth:`requests_in_flight`.
        self.live = LiveRequests()
        self._on_shutdown = on_shutdown
        #: fsck, repair and the background scrub, and what they found last.
        self.checks = Checks(store, self.admins.check)
        self.logs = logs if logs is not None else LogRing(1)

    @property
    def max_file_size(self) -> int:
        """The largest file accepted, in bytes (the store enforces it)."""
        return self._store.max_file_size

    # --- namespace ---------------------------------------------------------------------------

    async def stat(self, path: str) -> FileInfo:
        """Describe the entry at ``path``.

        Cancellation: not interruptible (an inline read, no checkpoint).

        Raises:
            InvalidPathError: ``path`` breaks the path rules.
            NotFoundError: Nothing is there.
            NotADirectoryError_: A file is on the way.
        """
        return await self._store.stat(path)

    async def list(self, path: str, *, cursor: str | None, limit: int) -> ListPage:
        """One page of a directory's entries, sorted by name, after ``cursor``.

        Cancellation: not interruptible (a page of up to :data:`INLINE_LIST_LIMIT` entries
        is read inline, a larger one in a worker thread, which runs to completion).

        Raises:
            InvalidPathError, NotFoundError: As for :meth:`stat`.
            NotADirectoryError_: ``path`` is a file.
            ValueError: ``limit`` < 1 (a caller bug).
        """
        return await self._store.list(path, cursor=cursor, limit=limit)

    async def mkdir(self, path: str, *, parents: bool = False) -> FileInfo:
        """Create a directory (and missing parents if ``parents``; then an existing directory
        is not an error).

        Cancellation: shielded; once called, it completes (or fails) and returns its answer,
        so a cancel never leaves its outcome unknown.

        Raises:
            InvalidPathError: ``path`` breaks the path rules.
            AlreadyExistsError: Something is there.
            NotFoundError: The parent is missing (and ``parents`` is false).
            NotADirectoryError_: A file is on the way.
            ReadOnlyError, NoSpaceError, StoreIOError: The store cannot write.
        """
        return await _completed(self._store.mkdir(path, parents=parents))

    async def delete(self, path: str, *, recursive: bool = False) -> int:
        """Delete a file, an empty directory, or (``recursive``) a whole tree, atomically.

        Returns:
            The number of entries removed.

        Cancellation: as :meth:`mkdir`.

        Raises:
            InvalidPathError: ``path`` breaks the path rules.
            InvalidArgumentError: ``path`` is the root (BAD_REQUEST).
            NotFoundError: Nothing is there.
            NotEmptyError: A non-empty directory and not ``recursive``.
            ReadOnlyError, StoreIOError: The store cannot write.
        """
        return await _completed(self._store.delete(path, recursive=recursive))

    async def rename(self, src: str, dst: str, *, overwrite: bool = False) -> FileInfo:
        """Move a file or a directory atomically; ``overwrite`` replaces a file at ``dst``
        (never a directory).

        Cancellation: as :meth:`mkdir`.

        Raises:
            InvalidPathError: A path breaks the rules.
            InvalidArgumentError: A path is the root, or ``dst`` is inside ``src``.
            NotFoundError: ``src`` or ``dst``'s parent is missing.
            AlreadyExistsError: ``dst`` exists and not ``overwrite``.
            IsADirectoryError_: ``dst`` is a directory.
            NotADirectoryError_: A file is on the way, or a directory would replace a file.
            ReadOnlyError, StoreIOError: The store cannot write.
        """
        return await _completed(self._store.rename(src, dst, overwrite=overwrite))

    # --- reading -----------------------------------------------------------------------------

    @asynccontextmanager
    async def open_read(
        self, path: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[Reader]:
        """A reader of one committed version of a file, from ``offset``, ``length`` bytes or
        to the end (clipped to the end; :attr:`Reader.length` says how many).

        Cancellation: the reader is closed on exit, shielded.

        Raises:
            InvalidPathError, NotFoundError, NotADirectoryError_: As for :meth:`stat`.
            IsADirectoryError_: ``path`` is a directory.
            BadRequestError: ``offset`` is past the end of the file (spec 5.11).
            CorruptDataError, StoreIOError: While iterating the reader.
        """
        async with self._store.open_read(path, offset=offset, length=length) as reader:
            # The store clips a range to the file; a start past the end is an error, judged
            # on the same snapshot the data would come from.
            if offset > reader.info.size:
                msg = f"offset {offset} is past the end of {path} ({reader.info.size} bytes)"
                raise BadRequestError(msg)
            yield reader

    # --- writing -----------------------------------------------------------------------------

    @asynccontextmanager
    async def open_upload(
        self,
        path: str,
        *,
        mode: WriteMode = WriteMode.CREATE,
        size: int | None = None,
        upload_id: str | None = None,
        offset: int = 0,
    ) -> AsyncIterator[Upload]:
        """The upload a file's content streams into: a new one, or with ``upload_id`` a
        resumable one, resumed when the server knows it (spec 5.10). Write the content from
        ``offset`` with :meth:`Upload.write`, then :meth:`commit`.

        Args:
            path: Where the file will be (for a resumed upload, the path it was begun with
                counts).
            mode: CREATE, EXCLUSIVE or OVERWRITE (checked now and again at the commit).
            size: The total size, if known: checked against :attr:`max_file_size` now.
            upload_id: 16 to 64 characters of A-Z, a-z, 0-9, '_' and '-'; makes the upload
                resumable.
            offset: Where the data starts: 0, or the committed offset of the upload resumed.

        The upload is finished when the block exits without a commit: aborted, or for a
        resumable one detached (it keeps its committed prefix).

        Cancellation: a cancelled open starts nothing; inside the block, as the store's
        upload (a cancelled write leaves it failed, and the exit finishes it).

        Raises:
            BadRequestError: A malformed ``upload_id``, or an ``offset`` without one.
            NotFoundError: ``offset`` > 0 for an upload id the server does not know.
            ConflictError: ``offset`` is not the resumed upload's committed offset, or the
                upload is in progress on another stream.
            TooLargeError: ``size`` exceeds :attr:`max_file_size`.
            LibrorumError: The store's answer to beginning the upload (EXISTS, NOT_FOUND,
                NO_SPACE, READ_ONLY, CORRUPT_DATA for a resumed chunk found bad, ...).
        """
        store = self._store
        upload: Upload | None = None
        if upload_id is not None and not UPLOAD_ID.fullmatch(upload_id):
            msg = "an upload_id is 16 to 64 characters of A-Z, a-z, 0-9, '_' and '-' (spec 5.10)"
            raise BadRequestError(msg)
        if upload_id is not None:
            try:
                upload = await store.resume_upload(upload_id)
            except NotFoundError:
                if offset:
                    raise
            if upload is not None and upload.offset != offset:
                committed = upload.offset
                await upload.detach()
                msg = f"upload {upload_id} is committed up to {committed}, not {offset}"
                raise ConflictError(msg)
        elif offset:
            msg = "a WRITE with an offset must name the upload_id it resumes"
            raise BadRequestError(msg)
        if upload is None:
            upload = await store.begin_upload(path, mode=mode, size=size, upload_id=upload_id)
        async with upload:
            yield upload

    async def commit(self, upload: Upload) -> FileInfo:
        """Make an upload's data the file's content, atomically (its mode rechecked).

        Cancellation: shielded; once called, the file is stored (or the commit fails), and
        the answer is returned: the outcome is never unknown.

        Raises:
            InvalidArgumentError: The data ended short of the declared size.
            AlreadyExistsError, NotFoundError, NotADirectoryError_, IsADirectoryError_: The
                mode's conditions no longer hold.
            NoSpaceError, StoreIOError, ReadOnlyError, CorruptDataError: Storing failed.
        """
        return await _completed(upload.commit())

    async def ingest(
        self,
        path: str,
        fd: int,
        *,
        size: int,
        mode: WriteMode = WriteMode.CREATE,
        accept: DescriptorKind = DescriptorKind.ANY,
    ) -> FileInfo:
        """Store the content of a client's file given as a descriptor (spec 8): a regular
        file or a sealed memfd, of the kinds in ``accept`` (what the caller agreed with its
        client). The caller keeps and closes ``fd``.

        Cancellation: before the commit, a cancelled ingest has no visible effect; the
        commit is shielded (once it starts, the file is stored and returned).

        Raises:
            BadRequestError: The descriptor is not a readable regular file, is a memfd
                without its seals, is of a kind not in ``accept``, or does not hold ``size``
                bytes.
            TooLargeError: ``size`` exceeds :attr:`max_file_size`.
            LibrorumError: The store's answer (EXISTS, NO_SPACE, IO_ERROR, ...).
        """
        kind = descriptor_kind(fd)
        if not accept & kind:
            msg = (
                "the descriptor is not a sealed memfd, and only MEMFD was negotiated"
                if kind is DescriptorKind.FILE
                else "MEMFD was not negotiated on this connection"
            )
            raise BadRequestError(msg)
        return await self._store.ingest_fd(path, fd, size, mode=mode)

    async def upload_status(self, upload_id: str) -> UploadStatus:
        """How much of a resumable upload is durably stored (resume from its ``offset``).

        Cancellation: not interruptible (an inline read, no checkpoint).

        Raises:
            InvalidPathError: A malformed id.
            NotFoundError: No such upload.
        """
        return await self._store.upload_status(upload_id)

    # --- the node ----------------------------------------------------------------------------

    async def node_status(self) -> NodeReport:
        """The node's health and figures: the store's, and the front doors' counts.

        Cancellation: safe at any point (reads only).

        Raises:
            StoreIOError: The store's figures could not be read.
        """
        figures = await self._store.status()
        stats = self.stats
        return NodeReport(
            version=__version__,
            node_id=self.node_id,
            uptime_ms=int((time.monotonic() - self._started_at) * 1000),
            connections=dict(stats.connections),
            requests=stats.requests,
            bytes_in=stats.bytes_in,
            bytes_out=stats.bytes_out,
            store=figures,
            inflight_bytes=self._inflight.used,
            inflight_peak_bytes=self._inflight.peak,
            read_only_reason=self._store.read_only_reason,
            read_only_since=self._store.read_only_since,
            client_errors=stats.client_errors,
            server_errors=stats.server_errors,
            python_version=platform.python_version(),
            sqlite_version=sqlite3.sqlite_version,
            checks=attrs.evolve(self.checks.figures),
        )

    # --- the live view -----------------------------------------------------------------------

    async def requests_in_flight(self, caller: Caller, *, limit: int = MAX_LISTED) -> LiveSnapshot:
        """The requests in flight across every connection: the ``limit`` oldest (at most
        :data:`~librorum.service.live.MAX_LISTED`), what each waits on, and the total count
        (spec 5.21). For administrators only (spec 2.5).

        Cancellation: not interruptible (no checkpoint: a front door may answer it inline).

        Raises:
            ForbiddenError: ``caller`` is not an administrator.
            ValueError: ``limit`` < 1 (a caller bug).
        """
        self.admins.check(caller, "the live view of requests in flight")
        return self.live.snapshot(limit)

    def shutdown(self, caller: Caller) -> None:
        """Ask the daemon to shut down gracefully, as on SIGTERM: it stops accepting, tells
        every connection GOAWAY, lets the requests in flight finish within the grace, and
        exits. Returns at once (the drain begins at the caller's next checkpoint, so the
        caller's answer goes out first).

        Cancellation: not interruptible (no checkpoint).

        Raises:
            ForbiddenError: ``caller`` is not an administrator (spec 2.5).
            UnavailableError: Nothing that runs this service can stop.
        """
        self.admins.check(caller, "stop the daemon")
        if self._on_shutdown is None:
            msg = "this service cannot be stopped from a request"
            raise UnavailableError(msg)
        who = f"uid {caller.uid}" if caller.uid is not None else "a token holder"
        log.info("shutdown requested by %s", who)
        self._on_shutdown()

    def fsync_latency(self) -> HistogramSnapshot:
        """How long the store's fsyncs have taken since it opened (a histogram, seconds).

        No checkpoint; never raises.
        """
        return self._store.fsync_latency()

    def commit_latency(self) -> HistogramSnapshot:
        """How long the store's metadata commits have taken since it opened (a histogram,
        seconds).

        No checkpoint; never raises.
        """
        return self._store.commit_latency()

    # --- checks (administrators) ---------------------------------------------------------------

    async def fsck(self, caller: Caller, progress: FsckProgress | None = None) -> FsckReport:
        """Check the whole store (see :meth:`Checks.fsck`); ``progress`` is updated as it
        goes.

        Cancellation: stops the check at once.

        Raises:
            ForbiddenError: ``caller`` is not an administrator.
            BusyError: A check or repair is running.
            StoreIOError: The metadata could not be read.
        """
        return await self.checks.fsck(caller, progress)

    async def repair(self, caller: Caller, progress: FsckProgress | None = None) -> RepairReport:
        """Check the whole store and repair what can be (see :meth:`Checks.repair`).

        Cancellation: during the check, at once; during the repair, between its steps (a
        step that began completes).

        Raises:
            ForbiddenError: ``caller`` is not an administrator.
            BusyError: A check or repair is running.
            ReadOnlyError: The store refuses writes.
            StoreIOError, NoSpaceError, TimeoutError_: A repair step failed.
        """
        return await self.checks.repair(caller, progress)

    # --- the log (spec 5.19) -----------------------------------------------------------------

    async def read_log(
        self,
        caller: Caller,
        log_filter: LogFilter,
        *,
        cursor: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
        budget: Callable[[LogEntry], bool] | None = None,
    ) -> LogPage:
        """A page of the daemon's recent log records (see :meth:`LogRing.read`).

        Cancellation: not interruptible (a scan of the ring in memory, no checkpoint).

        Raises:
            ForbiddenError: ``caller`` is not an administrator.
            BadRequestError: ``limit`` < 1.
        """
        self.admins.check(caller, "reading the log")
        if limit < 1:
            msg = f"a page of the log holds at least one record, not {limit}"
            raise BadRequestError(msg)
        return self.logs.read(
            log_filter, cursor=cursor, limit=limit, newest_first=newest_first, budget=budget
        )

    async def log_counts(self, caller: Caller) -> LogCounts:
        """The log's figures: records by level and logger, the per-minute trend.

        Cancellation: not interruptible (reads memory, no checkpoint).

        Raises:
            ForbiddenError: ``caller`` is not an administrator.
        """
        self.admins.check(caller, "reading the log")
        return self.logs.counts()

    async def follow_log(self, caller: Caller, log_filter: LogFilter, last: int) -> int:
        """Where a follower of the log starts: the cursor of the oldest of the ``last``
        newest records that pass ``log_filter`` (the next record's when ``last`` is 0 or none
        does). Read from it with :meth:`read_log`, and wait for more with
        :meth:`wait_for_log`.

        Cancellation: not interruptible (no checkpoint).

        Raises:
            ForbiddenError: ``caller`` is not an administrator.
        """
        self.admins.check(caller, "following the log")
        start = self.logs.next_seq
        if last > 0:
            page = self.logs.read(log_filter, limit=last, newest_first=True)
            if page.entries:
                start = page.entries[-1].seq
        return start

    async def wait_for_log(self, cursor: int) -> None:
        """Return once the log holds a record at or after ``cursor`` (at once if it does).

        The wait holds nothing but a listener on the ring: a record logged in any thread
        wakes it through the Trio token.

        Cancellation: safe at any point.
        """
        ring = self.logs
        if ring.next_seq > cursor:
            return
        arrived = trio.Event()
        token = trio.lowlevel.current_trio_token()
        trio_thread = threading.get_ident()

        def wake() -> None:
            # Called in the thread that logged. In the Trio thread (a task logged) the event
            # is set at once: through run_sync_soon it would be set only after the run loop
            # noticed its wakeup, later than a task that waits on it could expect.
            if threading.get_ident() == trio_thread:
                arrived.set()
                return
            try:
                token.run_sync_soon(arrived.set)
            except trio.RunFinishedError:
                pass  # the run is over: nobody waits any more

        ring.add_listener(wake)
        try:
            if ring.next_seq > cursor:  # logged between the check and the listener
                return
            await arrived.wait()
        finally:
            ring.remove_listener(wake)
