"""One client connection: the Trio driver between a transport and a ``ServerSession``.

Shape (h11's trio example, hypercorn's handler): the connection task reads and feeds the
sans-I/O session; each request runs in its own task (so replies go out in whatever order they
finish); one writer task sends everything the session queued, as one batch per wake-up, which
coalesces the small replies of many requests into one write.

What a request means is not decided here: the command table (``commands.py``) gives each
request command its handler, which calls the service core, and says whether the reader answers
it itself and what cancelling it does. This module is the driver around the handlers: reading
and writing, deadlines, the requests' tasks, and matching passed descriptors to their frames;
the content of READ and WRITE streams under credit both ways is paced in ``streams.py``, over
the primitives of the writer here.

Requests the table marks inline (cheap metadata reads the service answers without a
checkpoint, and a CANCEL whose target is not running) are answered by the reader itself,
without a task: a task would only add scheduler passes (and they cannot be cancelled midway
anyway). The reader then writes the replies of everything it received in one batch itself
when no write is under way, instead of waking the writer. A request served inline has
finished before the next frame is read: a CANCEL for it answers UNKNOWN (spec 5.14, "already
completed"), after its reply. Every ``READER_BATCH_FRAMES`` frames of a long burst the reader
lets other connections run. When more than ``MAX_READER_QUEUED_FRAMES`` frames wait to be
sent, the reader sends them (or waits for the writer) before it takes the next request, so a
client that sends without reading cannot grow the server's buffers; it waits at most the idle
deadline, then the connection ends.

Cancellation and outcomes (spec 5.14): every request task has its own cancel scope. A
mutation that has begun is completed by the service (shielded) until it has committed or
failed, so a CANCEL or a disconnect never leaves an outcome unknown to the server: the
request's final frame says what happened and the CANCEL reply repeats it (NOT_STARTED,
ABORTED, COMMITTED, UNKNOWN).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, cast

import trio

from librorum.activity import bind
from librorum.errors import (
    BadRequestError,
    CancelledError,
    ConnectionClosed,
    ConnectionLimitError,
    ConnectionTimeoutError,
    ErrorCode,
    ForbiddenError,
    InternalError,
    LibrorumError,
    RemoteProtocolError,
    UnavailableError,
)
from librorum.limits import SMALL_RECEIVE_SIZE, next_receive_size
from librorum.protocol.constants import Command
from librorum.protocol.framing import FileRegion, Payload
from librorum.protocol.messages import Message, Rename
from librorum.protocol.session import (
    ConnectionEnded,
    DataReceived,
    Event,
    HelloReceived,
    RequestReceived,
    ServerSession,
    State,
    WindowGranted,
)
from librorum.server.commands import COMMANDS, Row, Unary
from librorum.server.context import ServerContext
from librorum.server.logsetup import failure_level
from librorum.server.requests import RequestState
from librorum.service.caller import Caller
from librorum.service.live import LiveConnection, Peer
from librorum.transport.base import PeerInfo, file_transport

if TYPE_CHECKING:
    from librorum.service import Service
    from librorum.transport import FrameParts, FrameTransport

log = logging.getLogger("librorum.server")

#: Frames the session may hold unsent before a READ producer waits for the writer: bounds a
#: connection's output buffer (with 1 MiB frames, a few MiB) when the client reads slowly.
MAX_QUEUED_FRAMES: Final = 4
#: DATA frames buffered between the reader and an upload task. The window bounds the bytes;
#: this bounds the count, so a client sending tiny frames cannot queue millions of them.
UPLOAD_QUEUE_FRAMES: Final = 256
#: Unsent frames above which the reader stops reading new requests until the writer catches
#: up: bounds the replies a connection buffers for a client that does not read them (control
#: frames are at most 64 KiB; a STAT reply is ~150 bytes).
MAX_READER_QUEUED_FRAMES: Final = 1024
#: Frames the reader handles before it lets other tasks run: a client pipelining thousands of
#: cheap requests in one write must not hold the event loop (and every other connection) for
#: the whole burst. 32 STATs are ~1-2 ms here.
READER_BATCH_FRAMES: Final = 32
#: Each command's name, looked up once rather than through the enum on every request.
COMMAND_NAMES: Final[Mapping[Command, str]] = {command: command.name for command in Command}


class Connection:
    """Serve one client over ``transport`` until it leaves, breaks the protocol, times out,
    or the server shuts down (GOAWAY, then drain)."""

    def __init__(self, context: ServerContext, transport: FrameTransport) -> None:
        self.context = context
        self.service: Service = context.service
        self.transport = transport
        #: Who sends this connection's requests, as the service core judges callers.
        self.caller = caller_of(transport.peer)
        self.session = ServerSession(context.limits, features=context.features_for(transport))
        self.requests: dict[int, RequestState] = {}
        self._doorbell_send, self._doorbell = trio.open_memory_channel[None](1)
        self._drained = trio.lowlevel.ParkingLot()
        self._writer_done = trio.Event()
        # Set once the last flush is over: nothing is written to the transport any more.
        self._flushed = False
        # Unix sockets send a READ's DATA straight from the chunk files (os.sendfile).
        self.file_transport = file_transport(transport)
        # Batches being written (by the writer, or by the reader for its own replies): their
        # frames are out of the session's queue but not yet on the wire.
        self._sending = 0
        self._nursery: trio.Nursery | None = None
        self._last_activity = self._accepted = trio.current_time()
        # Bytes last moved either way: how long the connection has waited on its client.
        self._last_progress = self._last_activity
        self._frame_started: float | None = None
        self._receive_size = SMALL_RECEIVE_SIZE
        # The deadline of what the reader waits for now (a receive, or its own flush), what
        # passing it means, and whether it waits for a receive. Plain attributes, checked by
        # the deadline task (``_watch_deadlines``): a cancel scope per receive would cost a
        # small request more than its reply does.
        self._deadline = math.inf
        self._deadline_what = ""
        self._waiting: str | None = None
        # When the deadline task wakes next, and the scope to wake it sooner.
        self._watch_at = math.inf
        self._watch_scope: trio.CancelScope | None = None
        # Descriptors received (spec 8) and not yet handed to their WRITE: at most one per
        # receive, and at most one left over between receives (for a frame still arriving).
        self._fds: deque[int] = deque()
        # How many of the session's FD frames have been given their descriptor.
        self._fds_matched = 0
        # Closed by the server to make room under a connection cap (Server.reclaim).
        self.evicted = False
        # What this connection received, sent and was asked (for its closing line).
        self.bytes_in = 0
        self.bytes_out = 0
        self.request_count = 0
        self._loop_scope: trio.CancelScope | None = None
        # This connection in the daemon's registry of requests in flight (the live view, spec
        # 5.21), from run() on; its requests that run in a task are listed there.
        self._live = LiveConnection(0, live_peer(transport.peer))

    # --- Top level -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until the connection ends. Never raises for anything the peer does; a bug in
        the server is logged with its traceback and ends only this connection."""
        peer = self.transport.peer
        opened = trio.current_time()
        log.debug("connection from %s", peer)
        self.context.stats.connection_opened(self.transport.kind)
        self._live = self.service.live.open_connection(self._live.peer)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                nursery.start_soon(self._watch_deadlines)
                try:
                    with trio.CancelScope() as self._loop_scope:
                        await self._read_loop()
                finally:
                    # Whatever ended the loop, say goodbye (a queued ERROR, the last replies)
                    # before the requests still running are cancelled with the connection.
                    with trio.move_on_after(self.context.timeouts.close) as scope:
                        scope.shield = True
                        await self._flush_and_stop_writer()
                    nursery.cancel_scope.cancel()
        except* ConnectionClosed:
            pass  # the peer went away mid-reply: an ordinary disconnect, not worth a traceback
        except* Exception:
            log.exception("connection from %s failed", peer)
        finally:
            self.context.stats.connection_closed(self.transport.kind)
            self.service.live.close_connection(self._live)
            _close_fds(self._fds)
            with trio.CancelScope(shield=True):
                # The transport says why too, where it can (WebSocket: the close code).
                await self.transport.aclose(error=self.session.error)
            reason = self.session.error
            # The one INFO line of a connection: who, how long, how much (at DEBUG beyond its
            # peer's budget of lines; its next INFO line counts those).
            held_back = self.context.closing_lines.allow(str(peer.key), time.monotonic())
            log.log(
                logging.DEBUG if held_back is None else logging.INFO,
                "connection from %s closed after %.1f s: %d requests, %d bytes in, %d bytes "
                "out%s%s",
                peer,
                trio.current_time() - opened,
                self.request_count,
                self.bytes_in,
                self.bytes_out,
                f": {reason}" if reason else "",
                f" ({held_back} more connections of this peer closed since its last line)"
                if held_back
                else "",
            )

    async def _read_loop(self) -> None:
        session = self.session
        framed = self.transport.message_framed
        while not session.closed:
            data = await self._receive()
            if data is None:
                return
            before = mark = session.frames_received
            session.receive_data(data)
            for event in session.events():
                await self._dispatch(event)
                if session.frames_received - mark >= READER_BATCH_FRAMES:
                    # A long burst of pipelined requests, answered inline: let the other
                    # connections run before going on. The replies wait for the end of the
                    # burst (or the cap below): each write wakes the client, which costs
                    # far more here than the pass.
                    mark = session.frames_received
                    await trio.lowlevel.checkpoint()
                if session.queued_frames > MAX_READER_QUEUED_FRAMES:
                    await self._flush(MAX_READER_QUEUED_FRAMES)
            self._check_fds()
            one_frame = session.frames_received - before == 1 and not session.partial_frame
            if framed and data and not session.closed and not one_frame:
                msg = "a WebSocket message must hold exactly one LBRU frame"
                session.fail(RemoteProtocolError(msg))
            if not data or session.closed or self._sending:
                self.wake_writer()  # a write is under way: the writer takes these next
            elif session.queued_frames:
                await self._flush(0)
            if not data:
                return

    async def _flush(self, limit: int) -> None:
        """Bring the unsent frames down to ``limit``: send them from this task when no write
        is under way (cheaper than waking the writer), else wait for the writer.

        Cancellation: when the client does not take them within the idle deadline (it does
        not read its replies), the deadline task fails the session and cancels the
        connection's loop, this wait included."""
        session = self.session
        if session.queued_frames <= limit or self._writer_done.is_set():
            return
        self._wait_until(
            trio.current_time() + self.context.timeouts.idle(self.transport.kind),
            "the client did not read its replies",
            "flush",
        )
        try:
            while session.queued_frames > limit and not self._writer_done.is_set():
                if self._sending:
                    self.wake_writer()
                    await self._drained.park()
                else:
                    await self._send_queued()
        finally:
            self._waiting = None

    async def _receive(self) -> bytes | bytearray | memoryview | None:
        """The next bytes, or ``None`` when a deadline passed or the descriptors that came
        broke the rules (an ERROR is then queued)."""
        session = self.session
        now = trio.current_time()
        limits = self.context.timeouts
        if session.partial_frame:
            if self._frame_started is None:
                self._frame_started = now
            deadline = self._frame_started + limits.frame
            what = "frame not completed"
            # The handshake deadline runs from accept to a complete HELLO (spec 9.2), however
            # the HELLO's bytes trickle in: a frame begun in time does not extend it.
            if session.state is State.HANDSHAKE and self._accepted + limits.handshake < deadline:
                deadline = self._accepted + limits.handshake
                what = "no HELLO"
        else:
            self._frame_started = None
            if session.state is State.HANDSHAKE:
                deadline = self._accepted + limits.handshake
                what = "no HELLO"
            elif session.in_flight():
                deadline = math.inf  # requests are running: not idle
                what = ""
            else:
                deadline = self._last_activity + limits.idle(self.transport.kind)
                what = "idle"
        if deadline <= now:
            session.fail(ConnectionTimeoutError(f"{what} within the deadline"))
            return None
        self._wait_until(deadline, what, "receive")
        data: bytes | bytearray | memoryview
        try:
            if session.features:
                # recvmsg takes the descriptors a client passes (spec 8); a plain receive
                # would have the kernel close them.
                try:
                    data, fds = await self.transport.receive_with_fds(self._receive_size)
                except RemoteProtocolError as exc:  # too many descriptors at once (spec 8.1)
                    session.fail(exc)
                    return None
                self._fds.extend(fds)
            else:
                try:
                    data = await self.transport.receive_some(self._receive_size)
                except (RemoteProtocolError, ConnectionTimeoutError) as exc:
                    # The transport refused the peer's input (WebSocket, spec 2.2: a message
                    # that cannot be a frame, over the size limit, or not complete within the
                    # frame deadline): a connection error like the session's own.
                    session.fail(exc)
                    return None
        finally:
            self._waiting = None
        self._last_activity = self._last_progress = trio.current_time()
        self._receive_size = next_receive_size(len(data))
        self.context.stats.received(self.transport.kind, len(data))
        self.bytes_in += len(data)
        return data

    # --- Deadlines -------------------------------------------------------------------------

    def _wait_until(self, deadline: float, what: str, waiting: str) -> None:
        """Say that the reader now waits (for a ``waiting``: "receive" or "flush") until
        ``deadline`` at most; past it the deadline task fails the connection with ``what``."""
        self._deadline = deadline
        self._deadline_what = what
        self._waiting = waiting
        if deadline < self._watch_at and self._watch_scope is not None:
            # The deadline task sleeps past this deadline: wake it to sleep less.
            self._watch_scope.cancel()

    def _stop_receiving(self) -> None:
        """Stop waiting for the client (the session has closed by itself); a flush under way
        goes on, and the reader sees the closed session when it is done."""
        if self._waiting == "receive" and self._loop_scope is not None:
            self._loop_scope.cancel()

    async def _watch_deadlines(self) -> None:
        """Fail the connection when the reader waits past its deadline: sleep until the
        deadline of the reader's wait, and on waking look again (the reader may be in a later
        wait by then, with a later deadline; one sooner than this task's wake-up wakes it).
        Runs until the connection's nursery is cancelled."""
        while True:
            if self._waiting is not None and trio.current_time() >= self._deadline:
                break
            # Not waiting: the reader's next wait wakes this task.
            self._watch_at = self._deadline if self._waiting is not None else math.inf
            with trio.CancelScope() as self._watch_scope:
                await trio.sleep_until(self._watch_at)
            self._watch_scope = None
            self._watch_at = math.inf
        what = self._deadline_what
        if self._waiting == "receive":
            what = f"{what} within the deadline"
        self._waiting = None
        if not self.session.closed:
            self.session.fail(ConnectionTimeoutError(what))
        if self._loop_scope is not None:
            self._loop_scope.cancel()

    # --- Events ----------------------------------------------------------------------------

    async def _dispatch(self, event: Event) -> None:
        session = self.session
        if isinstance(event, RequestReceived):
            self.context.stats.requests += 1
            self.request_count += 1
            message = event.message
            row = COMMANDS.get(type(message))
            if row is None:
                # The session opens requests only for request commands, which all have rows.
                msg = f"{type(message).__name__} is not a request this server handles"
                session.send_error(event.session_id, BadRequestError(msg))
                return
            inline = row.inline
            if (
                inline is not False
                and isinstance(row, Unary)
                and (inline is True or inline(self, message))
            ):
                await self._serve_inline(event.session_id, row, message, event.command)
            else:
                self._start_request(event, row)
        elif isinstance(event, DataReceived):
            state = self.requests.get(event.session_id)
            if state is not None and state.data_in is not None:
                try:
                    await state.data_in.send(event.data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the upload already ended; the session discards the rest
                if event.end:
                    state.end_received = True
                    state.data_in.close()
                if state.wake is not None:
                    state.wake.set()
        elif isinstance(event, WindowGranted):
            state = self.requests.get(event.session_id)
            if state is not None:
                state.window.unpark_all()
        elif isinstance(event, HelloReceived):
            try:
                session.accept_hello(event.hello)
            except LibrorumError:
                return  # no common version: the ERROR is queued and the session closed
            if self.context.shutting_down:
                session.goaway("server is shutting down", self.context.grace_ms)
        elif isinstance(event, ConnectionEnded) and event.error is not None:
            # DEBUG: the connection's closing line (INFO) says the same as its reason.
            log.debug("%s: connection error: %s", self.transport.peer, event.error)

    async def _serve_inline(
        self, sid: int, row: Unary[Message], message: Message, command: Command
    ) -> None:
        """Answer a request the table marks inline from the reader: its reply (or ERROR) is
        queued before the next frame is read. The service answers these without waiting; a
        cancellation (the connection ending) leaves it unanswered, like a request task
        cancelled with its connection."""
        session = self.session
        # Latency for the metrics: two clock reads, the cheapest figure there is.
        started = time.perf_counter()
        try:
            reply = await row.handler(self, message)
        except Exception as exc:
            error = self._error_for(exc, type(message).__name__, sid)
            self._log_failure(type(message).__name__, error)
            session.send_error(sid, error)
            self.context.stats.request_done(
                COMMAND_NAMES[command], time.perf_counter() - started, error.code
            )
        else:
            session.reply(sid, reply)
            self.context.stats.request_done(COMMAND_NAMES[command], time.perf_counter() - started)

    def _log_failure(self, what: str, error: LibrorumError) -> None:
        """Log a request's failure at the level its kind deserves (see logsetup.py): a
        refused caller is a WARNING, at most once per peer and interval."""
        peer = self.transport.peer
        if isinstance(error, ForbiddenError):
            self.context.refusals.refused(
                f"forbidden {peer.key}",
                trio.current_time(),
                "%s: %s refused: %s",
                peer,
                what,
                error,
            )
            return
        log.log(failure_level(error), "%s: %s failed: %s", peer, what, error)

    def _error_for(self, exc: Exception, what: str, sid: int) -> LibrorumError:
        """What a request's failure tells the client: a LibrorumError as it is; anything
        else is a server bug, logged with its traceback and reported as INTERNAL."""
        if isinstance(exc, LibrorumError):
            return exc
        log.exception("%s: %s on session %d failed", self.transport.peer, what, sid)
        return InternalError(f"internal error ({type(exc).__name__}); see the server log")

    def _start_request(self, event: RequestReceived, row: Row) -> None:
        assert self._nursery is not None
        fd = self._take_fd() if event.fd else None
        if event.fd and fd is None:
            return  # no descriptor came with it: the connection is failing
        state = RequestState(event.session_id, event.command, fd=fd)
        state.activity.path = path_of(event.message)
        self.requests[event.session_id] = state
        self._live.requests[event.session_id] = state.activity
        if row.receives_data and fd is None:
            send, receive = trio.open_memory_channel[Payload](UPLOAD_QUEUE_FRAMES)
            state.data_in, state.data_out = send, receive
            if event.end:
                state.end_received = True
                send.close()
            else:
                # The window of the HELLO reply: the client has it already, so it is taken
                # from the budget even past its limit (see budget.py).
                state.reserved = self.session.receive_window(event.session_id)
                state.budgeted = True
                self.context.budget.open_upload(state.reserved)
        self._nursery.start_soon(self._run_request, state, row, event.message)

    async def _run_request(self, state: RequestState, row: Row, message: Message) -> None:
        session = self.session
        sid = state.session_id
        error: LibrorumError | None = None
        # The waits of this task (and of the tasks it starts) record in the request's
        # activity. The task ends with the request, so nothing needs undoing.
        bind(state.activity)
        started = time.perf_counter()
        # Whether the handler returned (a READ's last DATA frame is its answer) rather than
        # being cancelled: for the outcome the metrics count.
        completed = False
        try:
            with state.cancel_scope:
                reply = await row.run(self, state, message)
                if reply is not None:
                    state.reply = reply
                completed = True
        except Exception as exc:
            error = self._error_for(exc, state.command.name, sid)
        finally:
            del self.requests[sid]
            self._live.requests.pop(sid, None)
            if state.data_out is not None:
                # Late DATA for an upload that ended is discarded (the reader's send fails).
                state.data_out.close()
            if state.budgeted:
                # Credit not used and DATA not taken: late DATA is discarded by the session.
                self.context.budget.close_upload(state.reserved)
                state.reserved = 0
            if state.fd is not None:
                os.close(state.fd)
                state.fd = None
            outcome: ErrorCode | None = None
            if state.reply is not None:
                session.reply(sid, state.reply)
            elif error is not None:
                self._log_failure(state.command.name, error)
                session.send_error(sid, error)
                outcome = error.code
            elif session.is_in_flight(sid):
                # Cancelled (CANCEL, shutdown deadline or disconnect) before any effect.
                what = "aborted: no effect" if state.started else "cancelled before it started"
                session.send_error(sid, CancelledError(what))
                outcome = ErrorCode.CANCELLED
            elif not completed:
                outcome = ErrorCode.CANCELLED  # by a disconnect: no one to tell
            self.context.stats.request_done(
                COMMAND_NAMES[state.command], time.perf_counter() - started, outcome
            )
            state.done.set()
            self.wake_writer()
            if session.closed:
                self._stop_receiving()  # a drained connection: stop waiting for the client

    # --- Descriptors (spec 8) ------------------------------------------------------------------

    def _take_fd(self) -> int | None:
        """The descriptor of the FD frame just decoded (``None``, and the connection failed,
        when it did not come)."""
        if not self._match_fds(keep_last=True):
            return None
        self._fds_matched += 1
        return self._fds.popleft()

    def _check_fds(self) -> None:
        """After the frames of one receive: close the descriptors of refused FD frames, and
        fail the connection for a descriptor no FD frame claims. One may wait for the frame
        that is still arriving (the kernel hands it over with the frame's first bytes)."""
        self._match_fds(keep_last=False)
        if len(self._fds) > (1 if self.session.partial_frame else 0):
            _close_fds(self._fds)
            if not self.session.closed:
                msg = "a descriptor arrived without a WRITE frame carrying the FD flag"
                self.session.fail(RemoteProtocolError(msg))

    def _match_fds(self, *, keep_last: bool) -> bool:
        """Descriptors are matched to FD frames in order: close those of the FD frames
        decoded so far and not matched yet (refused by the session: BUSY, draining, ...),
        all but the last one's with ``keep_last``. False (and the connection failed) when
        fewer descriptors came than those frames."""
        owed = self.session.fd_frames - self._fds_matched
        if owed > len(self._fds):
            if not self.session.closed:
                msg = "a WRITE with the FD flag arrived without a descriptor"
                self.session.fail(RemoteProtocolError(msg))
            return False
        for _ in range(owed - 1 if keep_last else owed):
            os.close(self._fds.popleft())
            self._fds_matched += 1
        return True

    # --- Writing -----------------------------------------------------------------------------

    def wake_writer(self) -> None:
        try:
            self._doorbell_send.send_nowait(None)
        except trio.WouldBlock:
            pass  # already rung: the writer will take everything queued
        except trio.ClosedResourceError:
            pass  # the writer has stopped

    async def wait_for_writer(self) -> None:
        """Backpressure for producers of bulk data: wait while the session holds more than
        a few unsent frames (the transport is slower than the producer)."""
        while self.session.queued_frames > MAX_QUEUED_FRAMES and not self._writer_done.is_set():
            await self._drained.park()

    async def wait_until_sent(self) -> None:
        """Wait until every frame queued so far has been written to the transport, or can no
        longer be: a batch being written always finishes first (whoever writes it), and
        frames still queued are waited for until the connection's last flush is over."""
        while self._sending or (self.session.queued_frames and not self._flushed):
            # A send under way (the writer's, or the reader's own flush) unparks us when it
            # is done; waking the writer meanwhile would only have it find nothing queued
            # and unpark us at once, round and round while a slow peer holds that send.
            if not self._sending:
                self.wake_writer()
            await self._drained.park()

    async def settle_output(self) -> None:
        """Before a download releases its reader: wait until none of the frames queued so far
        can still be written. Bounded by the close timeout; past it the transport is closed,
        so that no later write can send bytes from a released buffer or a reused descriptor.

        Cancellation: shielded (a cancelled download must settle all the same).
        """
        with trio.move_on_after(self.context.timeouts.close) as scope:
            scope.shield = True
            await self.wait_until_sent()
        if scope.cancelled_caught:
            log.debug("%s: output not drained in time; closing", self.transport.peer)
            with trio.CancelScope(shield=True):
                await self.transport.aclose()

    async def _writer(self) -> None:
        """The one task that writes to the transport (frames are never interleaved)."""
        try:
            async for _ in self._doorbell:
                await self._send_queued()
        finally:
            self._writer_done.set()
            self._drained.unpark_all()

    async def _send_queued(self) -> None:
        frames = self.session.frames_to_send()
        if frames:
            self._sending += 1
            try:
                if self.file_transport is not None:
                    await self.file_transport.send_frames(frames)
                else:
                    # FileRegion payloads are queued only when the transport sends files.
                    await self.transport.send_frames(cast("list[FrameParts]", frames))
            finally:
                self._sending -= 1
            sent = sum(
                len(header) + (payload.length if type(payload) is FileRegion else len(payload))
                for header, payload in frames
            )
            self.context.stats.sent(self.transport.kind, sent)
            self.bytes_out += sent
            self._last_progress = trio.current_time()
        self._drained.unpark_all()

    async def _flush_and_stop_writer(self) -> None:
        """Stop the writer after its current batch, then send what is still queued from this
        task (the writer may have been cancelled: a closed connection's last frames must not
        depend on it). Nothing is written to the transport after this."""
        self._doorbell_send.close()
        try:
            await self._writer_done.wait()
            await self._send_queued()
        except ConnectionClosed:
            pass
        finally:
            self._flushed = True
            self._drained.unpark_all()

    # --- Under a full connection cap ----------------------------------------------------------

    def waiting_on_client(self, now: float) -> float:
        """Seconds this connection has been waiting on its client: since bytes last moved
        either way, provided every request in flight waits for the client too (0 while the
        server works on one, or holds one back for the budget)."""
        if any(not state.waiting_on_peer for state in self.requests.values()):
            return 0.0
        return now - self._last_progress

    def evict(self, reason: str) -> None:
        """Close the connection to make room for another (Server.reclaim): ERROR
        CONNECTION_LIMIT with ``reason``, then close within the close grace; the requests
        in flight end as on a disconnect (nothing partial is committed)."""
        if self.evicted:
            return
        self.evicted = True
        log.debug("%s: %s", self.transport.peer, reason)  # the closing line gives the reason
        self.session.fail(ConnectionLimitError(reason))
        if self._loop_scope is not None:
            self._loop_scope.cancel()
        self.wake_writer()

    # --- Shutdown ------------------------------------------------------------------------------

    def goaway(self) -> None:
        """Start draining this connection (server shutdown): GOAWAY now, close when the last
        request in flight has finished."""
        self.session.goaway("server is shutting down", self.context.grace_ms)
        self.wake_writer()
        if self.session.closed:
            self._stop_receiving()  # nothing in flight: stop reading now

    def cancel_requests(self) -> None:
        """The shutdown grace expired: cancel what still runs. Each request ends with ERROR
        CANCELLED (no effect; commits in progress are shielded and complete)."""
        for state in list(self.requests.values()):
            state.cancel_scope.cancel()
        if not self.requests:
            self.session.fail(UnavailableError("server shut down"))
            self._stop_receiving()


def _close_fds(fds: deque[int]) -> None:
    while fds:
        os.close(fds.popleft())


def caller_of(peer: PeerInfo) -> Caller:
    """The service core's view of ``peer``: its uid (from SO_PEERCRED) on a Unix socket;
    whether it presented the token on WebSocket (spec 2.5)."""
    if peer.kind == "websocket":
        return Caller(token=peer.authenticated)
    return Caller(uid=peer.uid)


def live_peer(peer: PeerInfo) -> Peer:
    """What the live view shows of ``peer``: uid and pid, or address."""
    return Peer(transport=peer.kind, uid=peer.uid, pid=peer.pid, address=peer.address)


def path_of(message: Message) -> str | None:
    """The path a request works on, for the live view (RENAME: ``src -> dst``)."""
    if isinstance(message, Rename):
        return f"{message.src} -> {message.dst}"
    path = getattr(message, "path", None)
    return path if isinstance(path, str) else None
