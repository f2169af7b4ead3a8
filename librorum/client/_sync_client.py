# GENERATED FILE: do not edit. Generated from librorum/client/_async_client.py by
# scripts/unasync.py; edit the source and run `python scripts/unasync.py`.
"""The client's request logic, written once: connections and reconnects, the namespace
requests, WRITE (streamed, resumable, or as a passed descriptor) and READ.

Written once, as the async client: ``scripts/unasync.py`` generates the blocking client
from it. What the two do differently lives in their drivers and primitives (the
``_async_*`` and ``_sync_*`` modules of this package), which have the same interface.

* **Reconnect**: a dropped connection fails the requests in flight with
  :class:`~librorum.errors.ConnectionClosed` (outcome unknown). The next request opens a new
  connection, retrying with exponential backoff (immediately, then 0.05 s doubling to 2 s,
  at most 8 attempts in 15 s). After GOAWAY new requests go to a new connection while the
  old one drains. A resumable upload interrupted by a disconnect resumes from the offset
  the server committed.
* **GOAWAY refusals**: a request the draining server refused had no effect and is sent again
  on a new connection (spec 5.15), up to :data:`~librorum.client._common.ROUTE_ATTEMPTS`
  times.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from librorum.client._common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_WINDOW,
    DEFAULT_RESUME_ATTEMPTS,
    DEFAULT_TIMEOUT,
    RECONNECT_ATTEMPTS,
    RECONNECT_DEADLINE,
    RECONNECT_INITIAL_DELAY,
    ROUTE_ATTEMPTS,
    M,
    ProgressCallback,
    RefusedByGoAway,
    backoff_delays,
    refused_by_goaway,
    written_in_place,
)
from librorum.client._endpoints import Endpoint
from librorum.client._sync_driver import SyncConnection, SyncConnections, SyncRequest
from librorum.client._sync_primitives import (
    Lock,
    checkpoint,
    current_time,
    deadline_scope,
    remove_file,
    replace_file,
    shielded,
    sleep,
    write_file,
)
from librorum.client._sync_sources import SyncSource, SyncWriteData, open_sync_source
from librorum.client._sync_streams import SyncListIterator, SyncLogFollower, SyncReadStream
from librorum.errors import (
    ConflictError,
    ConnectionClosed,
    LibrorumError,
    NotFoundError,
    RemoteProtocolError,
    ServerError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
)
from librorum.protocol.constants import (
    DEFAULT_LIST_LIMIT,
    MAX_REQUESTS_LISTED,
    Feature,
    WriteMode,
)
from librorum.protocol.messages import (
    Delete,
    DeleteReply,
    DirEntry,
    FileInfo,
    FileList,
    FileListReply,
    FileStat,
    FileStatReply,
    FileWrite,
    FileWriteReply,
    Fsck,
    FsckReply,
    HelloReply,
    LogGet,
    LogGetReply,
    LogStats,
    LogStatsReply,
    LogStream,
    MakeDirectory,
    MakeDirectoryReply,
    Message,
    NodeStatus,
    NodeStatusReply,
    Ping,
    PingReply,
    Rename,
    RenameReply,
    Requests,
    RequestsReply,
    Shutdown,
    ShutdownReply,
    UploadStatus,
    UploadStatusReply,
)

__all__ = ["SyncClient"]


class SyncClient:
    """A connection (or, across reconnects and GOAWAY, a series of them) to a Librorum
    daemon. Get one from :func:`connect`. The async client is safe to share between
    tasks (their requests are multiplexed); the blocking one runs one request at a time and
    belongs to one thread.

    Every method may raise, besides what it lists:

    * the exception class of the server's ERROR code (a
      :class:`~librorum.errors.LibrorumError` subclass carrying ``.code`` and the message);
    * :class:`~librorum.errors.ConnectionClosed` when the connection dropped with the request
      in flight (its outcome is unknown) or no connection could be made;
    * :class:`~librorum.errors.ConnectionTimeoutError` when the server made no progress on
      the request within ``timeout`` seconds (the request is then cancelled).

    Cancellation: every method can be cancelled; a request in flight is then cancelled on the
    server (the caller does not wait for the CANCEL's reply).
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        reconnect: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_window: int = DEFAULT_READ_WINDOW,
        resume_attempts: int = DEFAULT_RESUME_ATTEMPTS,
        reconnect_attempts: int = RECONNECT_ATTEMPTS,
        reconnect_deadline: float = RECONNECT_DEADLINE,
        pass_fds: bool = True,
    ) -> None:
        self._connections = SyncConnections()
        self._features = int(Feature.FD_PASSING | Feature.MEMFD) if pass_fds else 0
        self._reconnect_attempts = reconnect_attempts
        self._reconnect_deadline = reconnect_deadline
        self._endpoints = tuple(endpoints)
        self._reconnect = reconnect
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._read_window = read_window
        self._resume_attempts = resume_attempts
        self._conn: SyncConnection | None = None
        self._connect_lock = Lock()
        self._closed = False

    def __enter__(self) -> Self:
        """Connect now, unless connected (otherwise the first request does).

        Raises:
            As :func:`connect`.
        """
        self._connection()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Connections -------------------------------------------------------------------------------

    @property
    def endpoint(self) -> Endpoint | None:
        """Where the current connection goes (``None`` before the first one)."""
        return None if self._conn is None else self._conn.endpoint

    @property
    def server(self) -> HelloReply | None:
        """The HELLO reply of the current connection: negotiated limits and features."""
        return None if self._conn is None else self._conn.server

    def _connection(self) -> SyncConnection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.usable:
                return conn
            if self._closed:
                msg = "the client is closed"
                raise ConnectionClosed(msg)
            if conn is not None and conn.error is None:
                self._conn = self._replace_draining(conn)
                return self._conn
            if conn is not None and not self._reconnect:
                msg = f"connection to {conn.endpoint} is closed ({conn.error}) and reconnect is off"
                raise ConnectionClosed(msg)
            self._conn = self._connect(attempts=1 if conn is None else self._reconnect_attempts)
            return self._conn

    def _replace_draining(self, conn: SyncConnection) -> SyncConnection:
        """A new connection in place of one the server is retiring (GOAWAY). One immediate
        attempt, no backoff: the server said it is going away, so a failure is reported at
        once rather than retried for seconds.

        Raises:
            UnavailableError: no new connection could be made (or reconnect is off).
        """
        goaway = conn.session.goaway_received
        reason = f": {goaway.reason}" if goaway is not None and goaway.reason else ""
        conn.retire()
        if not self._reconnect:
            msg = f"{conn.endpoint} is going away{reason}, and reconnect is off"
            raise UnavailableError(msg)
        try:
            return self._connect(attempts=1)
        except ConnectionClosed as exc:
            msg = f"{conn.endpoint} is going away{reason}, and no new connection could be made"
            raise UnavailableError(msg) from exc

    def _connect(self, *, attempts: int) -> SyncConnection:
        """Connect, retrying with backoff.

        Raises:
            UnauthorizedError: the server refused the credentials (never retried).
            ConnectionClosed: every attempt failed (the last failure is the cause).
        """
        last: LibrorumError | None = None
        deadline = current_time() + self._reconnect_deadline
        with deadline_scope(deadline):
            for delay in backoff_delays(attempts=attempts):
                if current_time() + delay > deadline:
                    break  # no attempt could start before the deadline
                sleep(delay)
                try:
                    return self._connect_once()
                except UnauthorizedError:
                    raise
                except (TransportError, ServerError) as exc:
                    last = exc
        where = ", ".join(map(str, self._endpoints))
        # The last error names its endpoint already; only a deadline needs saying where.
        msg = str(last) if last is not None else f"cannot connect to {where}: deadline passed"
        raise ConnectionClosed(msg) from last

    def _connect_once(self) -> SyncConnection:
        """One attempt at each endpoint in order (``auto``: local first)."""
        failures: list[str] = []
        last: LibrorumError | None = None
        refused: UnauthorizedError | None = None
        for endpoint in self._endpoints:
            try:
                return self._open_connection(endpoint)
            except UnauthorizedError as exc:
                # In auto mode a local socket we may not use is no reason not to try the
                # remote one; if nothing works, the refusal is the error worth reporting.
                refused = refused or exc
                failures.append(str(exc))  # names its endpoint already
            except (TransportError, ServerError) as exc:
                failures.append(str(exc))  # names its endpoint already
                last = exc
        if refused is not None:
            raise refused
        msg = "; ".join(failures)
        raise ConnectionClosed(msg) from last

    def _open_connection(self, endpoint: Endpoint) -> SyncConnection:
        return self._connections.open(
            endpoint,
            timeout=self._timeout,
            connect_timeout=self._connect_timeout,
            read_window=self._read_window,
            features=self._features,
        )

    def close(self) -> None:
        """Close every connection; requests in flight end with ConnectionClosed. Idempotent.
        Leaving the :func:`connect` block does this.

        Cancellation: the connections are closed even if cancelled.
        """
        self._closed = True
        self._connections.close()
        checkpoint()

    # Request plumbing --------------------------------------------------------------------------

    def _start(self, message: Message, *, end: bool, upload: bool) -> SyncRequest:
        for _ in range(ROUTE_ATTEMPTS):
            conn = self._connection()
            if not conn.acquire(upload=upload):
                continue  # it died or got GOAWAY while we queued: the next one is new
            request = conn.start(message, end=end, upload=upload)
            try:
                conn.flush()
            except BaseException:
                conn.close_request(request)
                raise
            return request
        msg = "no usable connection: each one ended while the request waited for it"
        raise ConnectionClosed(msg)

    @contextmanager
    def _request(
        self, message: Message, *, end: bool = True, upload: bool = False
    ) -> Iterator[SyncRequest]:
        """A request in flight for the duration of the block; abandoned (and cancelled on
        the server) if the block exits before the request finished."""
        request = self._start(message, end=end, upload=upload)
        try:
            yield request
        except BaseException as exc:
            # Not an Exception (KeyboardInterrupt, trio.Cancelled): the blocking driver may
            # have been stopped in the middle of a frame.
            request.conn.close_request(request, interrupted=not isinstance(exc, Exception))
            raise
        request.conn.close_request(request)

    def _unary(self, message: Message, reply_type: type[M]) -> M:
        for attempt in range(1, ROUTE_ATTEMPTS + 1):
            with self._request(message) as request:
                request.wait_finished()
                if attempt < ROUTE_ATTEMPTS and refused_by_goaway(
                    request.error, draining=request.conn.draining
                ):
                    continue  # it had no effect: send it again on a new connection
                return request.result(reply_type)
        raise AssertionError("unreachable: the last attempt returns or raises")

    # Namespace ---------------------------------------------------------------------------------

    def ping(self) -> float:
        """Round trip to the server.

        Returns:
            The round-trip time in seconds.
        """
        data = secrets.token_bytes(8)
        start = current_time()
        reply = self._unary(Ping(data), PingReply)
        elapsed = current_time() - start
        if reply.data != data:
            msg = "PING reply does not echo the PING's data"
            raise RemoteProtocolError(msg)
        return elapsed

    def stat(self, path: str) -> FileInfo:
        """Describe the file or directory at ``path``.

        Raises:
            NotFoundError: nothing is there.
            InvalidPathError: the path breaks the path rules.
        """
        return (self._unary(FileStat(path), FileStatReply)).info

    def iter_list(self, path: str, *, page_size: int = DEFAULT_LIST_LIMIT) -> SyncListIterator:
        """The entries of directory ``path``, sorted by name, as an iterator that
        fetches pages of ``page_size`` entries as needed.

        Raises (while iterating):
            NotFoundError, NotADirectoryError_: ``path`` is missing or not a directory.
        """
        return SyncListIterator(self._list_page, path, page_size)

    def _list_page(self, message: FileList) -> FileListReply:
        return self._unary(message, FileListReply)

    def list(self, path: str, *, page_size: int = DEFAULT_LIST_LIMIT) -> list[DirEntry]:
        """Every entry of directory ``path``, sorted by name (all pages).

        Raises:
            NotFoundError, NotADirectoryError_: ``path`` is missing or not a directory.
        """
        return list(self.iter_list(path, page_size=page_size))

    def mkdir(self, path: str, *, parents: bool = False) -> FileInfo:
        """Create directory ``path``; with ``parents``, also missing parents, and succeed if
        it exists.

        Raises:
            AlreadyExistsError: something is at ``path`` (without ``parents``).
            NotFoundError: the parent is missing (without ``parents``).
        """
        return (self._unary(MakeDirectory(path, parents), MakeDirectoryReply)).info

    def delete(self, path: str, *, recursive: bool = False) -> int:
        """Delete a file, an empty directory, or with ``recursive`` a tree.

        Returns:
            The number of entries removed.

        Raises:
            NotFoundError: nothing is at ``path``.
            NotEmptyError: a non-empty directory without ``recursive``.
        """
        return (self._unary(Delete(path, recursive), DeleteReply)).removed

    def rename(self, src: str, dst: str, *, overwrite: bool = False) -> FileInfo:
        """Move ``src`` to ``dst`` atomically.

        Returns:
            The entry at its new path.

        Raises:
            NotFoundError: ``src`` is missing.
            AlreadyExistsError: ``dst`` exists and ``overwrite`` is false (a directory at
                ``dst`` is never replaced).
        """
        return (self._unary(Rename(src, dst, overwrite), RenameReply)).info

    def status(self) -> NodeStatusReply:
        """The node's health and figures."""
        return self._unary(NodeStatus(), NodeStatusReply)

    def upload_status(self, upload_id: str) -> UploadStatusReply:
        """How much of resumable upload ``upload_id`` the server has committed.

        Raises:
            NotFoundError: no such upload (it never started, completed, or expired).
        """
        return self._unary(UploadStatus(upload_id), UploadStatusReply)

    def shutdown(self) -> ShutdownReply:
        """Ask the daemon to stop gracefully, as on SIGTERM (spec 5.22; administrators only).
        The reply comes first; then the daemon drains (GOAWAY) and exits.

        Returns:
            The grace the requests in flight get, and the daemon's pid.

        Raises:
            ForbiddenError: this client is not an administrator (spec 2.5).
        """
        return self._unary(Shutdown(), ShutdownReply)

    # Writing -----------------------------------------------------------------------------------

    def write(
        self,
        path: str,
        data: SyncWriteData,
        *,
        mode: WriteMode = WriteMode.CREATE,
        size: int | None = None,
        resumable: bool = False,
        progress: ProgressCallback | None = None,
    ) -> FileInfo:
        """Store ``data`` as the file at ``path``.

        Args:
            path: where in the store.
            data: bytes-like content; a :class:`pathlib.Path` (any ``os.PathLike``) of a local
                file to upload; or an iterable of byte strings (not rewindable: a
                disconnect cannot be resumed; do not mutate an item after yielding it).
            mode: create-or-replace, exclusive create, or overwrite only.
            size: the total size, for an iterable (sent up front so the server can
                refuse an oversized file at once); exactly this many bytes are sent.
            resumable: give the upload an id (``secrets.token_urlsafe(16)``) so that a
                disconnect resumes from what the server committed instead of failing
                (a buffer or a file only; ``resume_attempts`` times at most).
            progress: ``progress(done, total)`` after each chunk is sent.

        Returns:
            The stored file's :class:`FileInfo`.

        Raises:
            AlreadyExistsError, NotFoundError: per ``mode``.
            TooLargeError: the file exceeds the server's maximum file size.
            ConnectionClosed: the connection dropped and the upload could not resume; its
                outcome is unknown.
            TypeError, ValueError: ``data`` is a ``str``, or ``size`` contradicts the data.
            OSError: the local file cannot be read.

        Cancellation: the upload is cancelled on the server (nothing is committed unless the
        final reply was already on its way).
        """
        source = open_sync_source(data, size)
        upload_id = secrets.token_urlsafe(16) if resumable else None
        try:
            offset = 0
            resumes = 0
            reroutes = 0
            conflict_delays = backoff_delays()
            while True:
                try:
                    return self._write_once(
                        path, source, mode=mode, upload_id=upload_id, offset=offset,
                        progress=progress,
                    )  # fmt: skip
                except RefusedByGoAway as refused:
                    # Refused before it started (spec 5.15): it had no effect, so the same
                    # WRITE may go to a new connection if the content can be read again.
                    reroutes += 1
                    if not source.seekable or reroutes >= ROUTE_ATTEMPTS:
                        raise refused.error from None
                except ConnectionClosed:
                    resumes += 1
                    if upload_id is None or not source.seekable:
                        raise
                    if resumes > self._resume_attempts:
                        raise
                    offset = self._committed(upload_id)
                except ConflictError:
                    # A resumed WRITE may find the upload still attached to the stream that
                    # broke, until the server notices the disconnect (spec 5.10): ask again
                    # after a pause, as the committed offset may also have moved.
                    if upload_id is None or resumes == 0:
                        raise
                    delay = next(conflict_delays, None)
                    if delay is None:
                        raise
                    sleep(delay or RECONNECT_INITIAL_DELAY)
                    offset = self._committed(upload_id)
                source.seek(offset)
        finally:
            with shielded():
                source.close()

    def _committed(self, upload_id: str) -> int:
        """Where an interrupted upload resumes: the committed offset, or 0 if the server
        never saw it. Retries (with backoff) while the server still has the upload in flight
        on the old stream (CONFLICT), which it may until it notices the disconnect."""
        delays = backoff_delays()
        while True:
            try:
                return (self.upload_status(upload_id)).offset
            except NotFoundError:
                return 0
            except ConflictError:
                delay = next(delays, None)
                if delay is None:
                    raise
                sleep(delay or RECONNECT_INITIAL_DELAY)

    def _write_once(
        self,
        path: str,
        source: SyncSource,
        *,
        mode: WriteMode,
        upload_id: str | None,
        offset: int,
        progress: ProgressCallback | None,
    ) -> FileInfo:
        total = source.size
        no_data = total is not None and offset >= total
        message = FileWrite(path, mode, total, upload_id, offset)
        if upload_id is None and not no_data:
            info = self._write_passing_fd(message, source, progress)
            if info is not None:
                return info
        with self._request(message, end=no_data, upload=True) as request:
            if not no_data:
                self._send_content(request, source, offset, total, progress)
            request.wait_finished("WRITE reply")
            if refused_by_goaway(request.error, draining=request.conn.draining):
                assert request.error is not None
                raise RefusedByGoAway(request.error)
            return request.result(FileWriteReply).info

    def _write_passing_fd(
        self, message: FileWrite, source: SyncSource, progress: ProgressCallback | None
    ) -> FileInfo | None:
        """The WRITE with the content as a local file's descriptor (spec 8), when the
        connection negotiated it and the source is worth it; ``None`` to stream it instead.
        A sealed memfd given as a file (its /proc/self/fd path) is stored as MEMFD."""
        conn = self._connection()
        features = conn.session.features
        fd = source.descriptor(features) if features else None
        if fd is None:
            return None
        if not conn.acquire(upload=True):
            return None  # the connection ended meanwhile: stream on the next one
        request = conn.start_passing_fd(message, fd)
        try:
            request.wait_finished("WRITE reply")
            if refused_by_goaway(request.error, draining=request.conn.draining):
                assert request.error is not None
                raise RefusedByGoAway(request.error)
            info = request.result(FileWriteReply).info
        finally:
            conn.close_request(request)
        if progress is not None:
            progress(info.size, info.size)
        return info

    def _send_content(
        self,
        request: SyncRequest,
        source: SyncSource,
        done: int,
        total: int | None,
        progress: ProgressCallback | None,
    ) -> None:
        """DATA frames of at most ``max_payload`` bytes within the server's window; the last
        carries END. Stops early if the request finishes (the server's early ERROR)."""
        conn = request.conn
        session = conn.session
        session_id = request.session_id
        while True:
            # After a failed send nothing more goes out: wait for the request's end instead.
            request.wait_until(
                lambda: session.send_window(session_id) > 0 and conn.send_error is None,
                "WRITE window",
            )
            if request.finished:
                return  # an early ERROR (or the connection died): stop sending
            room = min(session.send_window(session_id), conn.max_payload)
            if total is not None:
                room = min(room, total - done)
            chunk = source.read(room)
            done += len(chunk)
            last = not chunk or (total is not None and done >= total)
            session.send_data(session_id, chunk, end=last)
            conn.flush()
            if progress is not None:
                progress(done, total)
            if last:
                return

    # Reading -----------------------------------------------------------------------------------

    def open_read(
        self,
        path: str,
        *,
        offset: int = 0,
        length: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> SyncReadStream:
        """Stream the content of ``path`` from ``offset``, ``length`` bytes or to the end::

            with client.open_read("/big") as stream:
                for chunk in stream:
                    ...

        Memory stays bounded by the read window whatever the file size.

        Raises (on entering):
            NotFoundError, IsADirectoryError_: ``path`` is missing or a directory.
        """
        return SyncReadStream(self._request, path, offset=offset, length=length, progress=progress)

    def read(self, path: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """The content of ``path`` from ``offset``, ``length`` bytes or to the end.

        Raises:
            NotFoundError, IsADirectoryError_: ``path`` is missing or a directory.
        """
        with self.open_read(path, offset=offset, length=length) as stream:
            chunks = list(stream)
        return b"".join(chunks)

    def read_to_file(
        self,
        path: str,
        local_path: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
    ) -> FileInfo:
        """Download ``path`` into ``local_path``. The content goes to a temporary file next
        to it that replaces ``local_path`` only once complete, so an interrupted download
        never leaves a torn file. A ``local_path`` that is a device, a FIFO or a socket is
        written to as it is (a temporary file cannot replace it).

        Returns:
            The :class:`FileInfo` of what was read.

        Raises:
            NotFoundError, IsADirectoryError_: ``path`` is missing or a directory.
            OSError: the local file cannot be written.
        """
        target = Path(local_path)
        if written_in_place(target):
            with self.open_read(path, progress=progress) as stream:
                write_file(target, stream)
                info = stream.info
            assert info is not None  # set on entering the stream
            return info
        partial_path = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        try:
            with self.open_read(path, progress=progress) as stream:
                write_file(partial_path, stream)
                info = stream.info
            replace_file(partial_path, target)
        except BaseException:
            with shielded():
                remove_file(partial_path)
            raise
        assert info is not None  # set on entering the stream
        return info

    # Operating ---------------------------------------------------------------------------------

    def requests(self, *, limit: int = MAX_REQUESTS_LISTED) -> RequestsReply:
        """The requests in flight across every connection of the daemon, for the live view
        (spec 5.21): the oldest ``limit`` (1 to 1000) at most, as many as fit one reply,
        each with its peer, path, age, bytes moved and what it waits on; and how many there
        are in all (``total``). For administrators (spec 2.5).

        Raises:
            ForbiddenError: the caller is not an administrator (another uid than the
                daemon's or its admin list; over WebSocket, no token).
            ValueError: ``limit`` is outside 1..1000.
        """
        return self._unary(Requests(limit), RequestsReply)

    def fsck(
        self,
        *,
        repair: bool = False,
        on_progress: Callable[[FsckReply], None] | None = None,
    ) -> FsckReply:
        """Check the whole store (spec 5.20), or with ``repair`` check and repair it.
        Administrators only. A check reads everything and may take long: the server sends
        progress about once a second, handed to ``on_progress`` (the latest only: a caller
        slower than that misses some), and each one restarts the client's ``timeout``.

        Returns:
            The report (``ok`` says whether anything is left to do).

        Raises:
            ForbiddenError: the caller is not an administrator.
            BusyError: a check or repair is running already.
            ReadOnlyError: ``repair`` on a store that refuses writes.
        """
        with self._request(Fsck(repair)) as request:
            while True:
                request.wait_reply("FSCK progress or report")
                if request.finished:
                    return request.result(FsckReply)
                # Taken, so that the next wait is for the next reply (only the latest is
                # kept: progress never piles up here).
                progress, request.reply = request.reply, None
                if on_progress is not None and isinstance(progress, FsckReply):
                    on_progress(progress)

    # The daemon's log (spec 5.19; administrators only) ----------------------------------------

    def log_get(
        self,
        *,
        min_level: int = 0,
        logger: str | None = None,
        grep: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        newest_first: bool = False,
        cursor: int | None = None,
    ) -> LogGetReply:
        """A page of the daemon's recent log records that pass every filter given.

        Args:
            min_level: The least level (``logging.WARNING``: warnings and worse).
            logger: A logger name prefix ("librorum.store").
            grep: A substring of the message.
            since, until: The time range, seconds since the epoch (until exclusive).
            limit: Records at most, 1 to 1000 (a reply may hold fewer, to fit a frame).
            newest_first: Newest first, going back in time.
            cursor: A previous reply's ``cursor``, to continue from it.

        Raises:
            ForbiddenError: the caller is not one of the daemon's administrators.
            BadRequestError: ``limit`` is 0.
            ValueError: ``limit`` over 1000, a filter over 256 bytes.
        """
        message = LogGet(
            min_level=min_level,
            logger=logger,
            grep=grep,
            since_ms=None if since is None else int(since * 1000),
            until_ms=None if until is None else int(until * 1000),
            limit=limit,
            newest_first=newest_first,
            cursor=cursor,
        )
        return self._unary(message, LogGetReply)

    def log_stats(self) -> LogStatsReply:
        """The figures of the daemon's log: records by level and by logger since it started,
        and per minute over the last hour.

        Raises:
            ForbiddenError: the caller is not one of the daemon's administrators.
        """
        return self._unary(LogStats(), LogStatsReply)

    def follow_log(
        self,
        *,
        last: int = 0,
        min_level: int = 0,
        logger: str | None = None,
        grep: str | None = None,
    ) -> SyncLogFollower:
        """The daemon's log as it is written: the ``last`` newest records that pass the
        filters (0 to 1000), then each new one::

            with client.follow_log(last=10) as follower:
                for batch in follower:
                    for record in batch.records:
                        ...

        Leaving the block cancels the stream.

        Raises (on entering):
            ForbiddenError: the caller is not one of the daemon's administrators.
            ValueError: ``last`` over 1000, a filter over 256 bytes.
        """
        message = LogStream(last=last, min_level=min_level, logger=logger, grep=grep)
        return SyncLogFollower(self._request, message)
