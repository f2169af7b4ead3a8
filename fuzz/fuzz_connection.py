"""Fuzz target: one server connection (``Server.handle``) fed the input as a byte stream.

A real ``Server`` over a real store (a copy of a small template store, in a temporary
directory) serves a :class:`librorum.testing.StreamTransport` over
``trio.testing.lockstep_stream_pair()``: the peer's writes wait until the server reads them,
and the server's writes wait until the peer reads them, like a socket whose buffers are full,
so a server that keeps producing for a peer that does not read has to hold the output itself.
Everything runs under ``trio.run`` with ``MockClock(autojump_threshold=0)``: whenever every task
waits, the clock jumps to the next deadline, so the handshake, frame, idle and close deadlines
pass instantly.

Input layout (every byte string is a valid input)::

    byte 0     options: bit 0 puts a valid HELLO in front of the stream; bits 1-2 choose how
               the peer reads the server's output (0 and 3: as it comes; 1: not until the
               input has been sent; 2: 1 KiB per mock second); bit 3 ends the input with an
               abrupt close of both directions instead of a clean end of stream
    byte 1     n = low 4 bits: how many split sizes follow
    n bytes    split sizes, used in turn to cut the rest into the pieces the peer writes:
               0 is a pause of PAUSE_SECONDS (mock) instead of a piece, 1-127 that many bytes,
               128-255 (v - 127) * 256 bytes; with no positive size the rest goes whole
    the rest   the byte stream

Invariants (any violation is a bug):

* nothing escapes the connection handler, and the daemon logs no error (a bug in a request
  is logged at ERROR and answered INTERNAL; a bug in the connection is logged at ERROR);
* the connection ends when the input ends: the handler returns within END_DEADLINE mock
  seconds of the peer's last byte (and the whole exchange within HANG_DEADLINE), leaving no
  task behind and nothing registered in the server;
* the server never holds more than OUTPUT_BOUND bytes of output that the peer has not read
  (what it handed to the transport minus what the peer received, measured at each send):
  the per-connection output cap the reliability plan recommends;
* the store stays consistent: ``fsck`` after the connection finds nothing wrong, and no
  descriptor is left open;
* no livelock: the scheduler never runs STALL_STEPS steps without progress (mock time
  passing, bytes moving), which would mean tasks keeping each other busy forever.

Why the store's worker threads run inline. With autojump, the clock jumps whenever every task
waits, and a task waiting for a worker thread (``trio.to_thread.run_sync``) is waiting: the
clock would jump while the store hashes or fsyncs, firing deadlines (a lock timeout, the
frame deadline) that real time would never reach, at instants that depend on how fast the
thread ran. Long store timeouts would hide only the store's deadlines, and a clock that
stops jumping while threads are out would keep the executions timing-dependent (which
thread finishes first). So for the duration of an execution ``trio.to_thread.run_sync`` runs
the function on the Trio thread, between a cancellation point and an uncancellable
reschedule, as the real one behaves to its caller: no thread is ever outstanding, time only
moves when the connection really waits, and with Trio's scheduler seeded each execution is
deterministic (libFuzzer needs that to keep and minimise inputs). The cost: store work never
overlaps the connection's tasks, which is not what this target is about (the store's own
tests cover its concurrency).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, TypeVar

from harness import fast_temp_dir, instrumented, main

with instrumented():
    import outcome
    import trio
    import trio.testing

    from librorum.limits import CLOSE_GRACE
    from librorum.protocol.constants import Command, Flags, WriteMode
    from librorum.protocol.converter import encode_message
    from librorum.protocol.framing import encode_frame
    from librorum.protocol.messages import (
        Cancel,
        Delete,
        FileList,
        FileRead,
        FileStat,
        FileWrite,
        MakeDirectory,
        NodeStatus,
        Ping,
        Rename,
        UploadStatus,
        WindowUpdate,
    )
    from librorum.protocol.session import (
        ClientSession,
        HelloReceived,
        ServerLimits,
        ServerSession,
    )
    from librorum.server.app import Server
    from librorum.store import open_store
    from librorum.store.fs import OsFS
    from librorum.testing import StreamTransport, test_config
    from librorum.transport.base import FrameParts

T = TypeVar("T")

HERE: Final = Path(__file__).resolve().parent
VECTORS: Final = HERE.parent / "protocol_spec" / "vectors"

#: Store settings: small chunks, so that inputs of fuzzer size span several; a small maximum
#: file size, so that declared sizes reach both sides of the check.
CHUNK_SIZE: Final = 4096
MAX_FILE_SIZE: Final = 1 << 20
#: A pause in the input (split size 0) lasts this long in mock time: past the handshake (10 s)
#: and frame (30 s) deadlines; three pass the idle deadline (120 s for this transport kind).
PAUSE_SECONDS: Final = 40.0
MAX_PAUSES: Final = 8
#: After the peer's last byte, the connection must be over within this (mock seconds): a
#: final flush and the settling of downloads take at most a close grace each.
END_DEADLINE: Final = 4 * CLOSE_GRACE + 10.0
#: The whole exchange, pauses and idle deadlines included (mock seconds).
HANG_DEADLINE: Final = 3600.0
#: The output cap per connection the reliability campaign sets (4 MiB for a client that does
#: not read its replies).
OUTPUT_BOUND: Final = 4 << 20
#: How much the peer reads at once.
READ_SIZE: Final = 64 << 10

OPT_HELLO: Final = 0x01
OPT_ABORT: Final = 0x08
READ_EAGER, READ_LAZY, READ_SLOW = 0, 1, 2

#: The upload the template store keeps in progress (the id the spec's vectors use).
UPLOAD_ID: Final = "u_Zk2Hf9Lq0Wc7Rb1Tn5Ye4g"
UPLOAD_KEPT: Final = 8 * CHUNK_SIZE
HELLO_TEXT: Final = b"hello world"
BIG: Final = bytes(range(256)) * 160 + b"tail"


@contextlib.contextmanager
def _silence() -> Iterator[None]:
    """Nothing to the terminal: the connection logs every peer error at INFO."""
    logger = logging.getLogger("librorum")
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.propagate = propagate


class _Errors(logging.Handler):
    """Collects what the daemon logs at ERROR or above (a bug, by the daemon's own rules)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {record.exc_info[1]!r}"
        self.records.append(text)


@contextlib.contextmanager
def _captured_errors() -> Iterator[_Errors]:
    handler = _Errors()
    logger = logging.getLogger("librorum")
    logger.addHandler(handler)
    try:
        with _silence():
            yield handler
    finally:
        logger.removeHandler(handler)


async def _run_inline(
    fn: Callable[..., T],
    *args: object,
    thread_name: str | None = None,
    abandon_on_cancel: bool = False,
    limiter: object = None,
    cancellable: bool | None = None,
) -> T:
    """``trio.to_thread.run_sync`` as its caller sees it, without the thread: cancellable
    before ``fn`` starts, not after (see the module docstring for why)."""
    await trio.lowlevel.checkpoint_if_cancelled()
    result = outcome.capture(fn, *args)
    await trio.lowlevel.cancel_shielded_checkpoint()
    return result.unwrap()


@contextlib.contextmanager
def _inline_threads() -> Iterator[None]:
    real = trio.to_thread.run_sync
    trio.to_thread.run_sync = _run_inline
    try:
        yield
    finally:
        trio.to_thread.run_sync = real


#: Seeds Trio's scheduler before each execution (see _seed_scheduler).
SCHEDULER_SEED = 0x4C425255


def _seed_scheduler() -> None:
    # Trio runs each batch of runnable tasks in a random order (to shake out order
    # dependence); a fixed seed makes an execution repeatable. Private, hence the guard.
    rng = getattr(getattr(trio, "_core", None), "_run", None)
    rng = getattr(rng, "_r", None)
    if rng is not None:
        rng.seed(SCHEDULER_SEED)


# --- The store ---------------------------------------------------------------------------------


class _RecordingFS(OsFS):
    """The store's file system, noting which chunk shards an execution changed."""

    def __init__(self, chunk_dir: str) -> None:
        self.chunk_dir = chunk_dir + os.sep
        self.touched: set[str] = set()

    def rename(self, src: str, dst: str) -> None:
        super().rename(src, dst)
        self._note(dst)

    def unlink(self, path: str) -> None:
        super().unlink(path)
        self._note(path)

    def _note(self, path: str) -> None:
        if path.startswith(self.chunk_dir):
            self.touched.add(os.path.dirname(path)[len(self.chunk_dir) :])


class Workspace:
    """The store every execution starts from (the template), and the one it runs on.

    Resetting the working store to the template after each execution costs a copy of the
    database and a look at the shards the execution changed, not a copy of the whole tree.
    """

    def __init__(self) -> None:
        given = os.environ.get("LIBRORUM_FUZZ_TMP")
        if given:
            base = Path(tempfile.mkdtemp(prefix="connection-", dir=given))
        else:
            # Without the runner (a target run by hand): ours to remove at exit.
            base = Path(tempfile.mkdtemp(prefix="lbru-fuzz-connection-", dir=fast_temp_dir()))
            atexit.register(shutil.rmtree, base, ignore_errors=True)
        self.base = base
        self.template = base / "template"
        self.store = base / "store"
        self.config = test_config(base)
        with _inline_threads(), _silence():
            trio.run(_build_template, self.template)
        shutil.copytree(self.template, self.store, copy_function=_link_chunks)
        self.fs = _RecordingFS(str(self.store / "chunks"))

    def journal_size(self) -> int:
        """The size of the working store's SQLite write-ahead log (it grows with every
        commit until the store closes)."""
        try:
            return os.stat(self.store / "meta.db-wal").st_size
        except FileNotFoundError:
            return 0

    def reset(self) -> None:
        """Make the working store the template again."""
        for shard in self.fs.touched:
            have = set(os.listdir(self.store / "chunks" / shard))
            want = set(os.listdir(self.template / "chunks" / shard))
            for name in have - want:
                os.unlink(self.store / "chunks" / shard / name)
            for name in want - have:
                os.link(
                    self.template / "chunks" / shard / name, self.store / "chunks" / shard / name
                )
        self.fs.touched.clear()
        for name in os.listdir(self.store / "tmp"):
            os.unlink(self.store / "tmp" / name)
        for name in os.listdir(self.store):
            if name.startswith("meta.db"):
                os.unlink(self.store / name)
        for name in os.listdir(self.template):
            if name.startswith("meta.db"):
                shutil.copyfile(self.template / name, self.store / name)


async def _build_template(directory: Path) -> None:
    """The files the spec's vectors name, a multi-chunk file, and a resumable upload in
    progress with some of its data recorded."""
    async with open_store(directory, chunk_size=CHUNK_SIZE, max_file_size=MAX_FILE_SIZE) as s:
        for folder in ("/docs/archive", "/tmp/scratch", "/backups", "/videos", "/logs"):
            await s.mkdir(folder, parents=True)
        await s.write_bytes("/docs/hello.txt", HELLO_TEXT)
        await s.write_bytes("/docs/draft.txt", b"draft")
        await s.write_bytes("/tmp/scratch/a", b"a" * 5000)
        await s.write_bytes("/tmp/scratch/b", b"")
        await s.write_bytes("/big", BIG)
        upload = await s.begin_upload("/backups/db.dump", upload_id=UPLOAD_ID)
        await upload.write(BIG[:UPLOAD_KEPT] + b"not yet recorded")
        await upload.detach()


def _link_chunks(src: str, dst: str) -> object:
    # Chunk files are never changed in place (written under a temp name, renamed, deleted),
    # so the working store can share them with the template.
    if f"{os.sep}chunks{os.sep}" in src:
        os.link(src, dst)
        return dst
    return shutil.copy2(src, dst)


_workspace: Workspace | None = None


def workspace() -> Workspace:
    """The process's workspace, created on first use."""
    global _workspace
    if _workspace is None:
        _workspace = Workspace()
    return _workspace


def close_workspace() -> None:
    """Remove the process's workspace now (a test session's teardown)."""
    global _workspace
    if _workspace is not None:
        shutil.rmtree(_workspace.base, ignore_errors=True)
        _workspace = None


# --- One execution -------------------------------------------------------------------------------


class Scenario:
    """The input, decoded (see the module docstring)."""

    def __init__(self, data: bytes) -> None:
        options = data[0] if data else 0
        count = data[1] & 0x0F if len(data) > 1 else 0
        sizes = [_size(b) for b in data[2 : 2 + count]]
        stream = data[2 + count :]
        if options & OPT_HELLO:
            stream = _vector_frames()["hello"] + stream
        self.read_mode = (options >> 1) & 3
        self.abort = bool(options & OPT_ABORT)
        self.pieces: list[bytes | None] = []  # None: a pause
        pauses = 0
        if not any(sizes):
            pauses = min(len(sizes), MAX_PAUSES)
            self.pieces += [None] * pauses
            sizes = []
        at, turn = 0, 0
        while at < len(stream):
            size = sizes[turn % len(sizes)] if sizes else len(stream)
            turn += 1
            if size == 0:
                if pauses < MAX_PAUSES:
                    pauses += 1
                    self.pieces.append(None)
                continue
            self.pieces.append(stream[at : at + size])
            at += size


def _size(byte: int) -> int:
    return byte if byte < 128 else (byte - 127) * 256


class Measured(StreamTransport):
    """The server's transport, noting the most output it held unread by the peer."""

    peer_received = 0
    peak = 0

    async def send_frames(self, frames: Sequence[FrameParts]) -> None:
        batch = sum(memoryview(part).nbytes for frame in frames for part in frame)
        self.peak = max(self.peak, self.bytes_sent + batch - self.peer_received)
        await super().send_frames(frames)


#: Scheduler steps without progress (mock time, bytes moved) after which the execution is a
#: livelock: tasks keeping each other runnable, so the clock never moves and nothing else
#: happens. No legitimate execution of the seeds (or of 300 mutations of them) went 2,048
#: steps without progress; a burst of pipelined requests answered from one receive comes
#: closest.
STALL_STEPS: Final = 1 << 14


class Livelock(Exception):  # noqa: N818 - what it is, not an error class of the project
    pass


class _Watchdog(trio.abc.Instrument):
    """Notices a livelock. The first time, it makes the peer read everything from then on
    (a real client would read eventually; in mock time, with tasks always runnable, its
    next read never comes); if the stall persists, it cancels the exchange."""

    def __init__(self, progress: Callable[[], object], rescue: trio.Event) -> None:
        self._progress = progress
        self._rescue = rescue
        self._mark: object = None
        self._steps = 0
        self._stalled = 0
        self._tasks: set[trio.lowlevel.Task] = set()
        self.scope = trio.CancelScope()
        #: What the spinning tasks were doing, when the watchdog tripped.
        self.report: list[str] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._steps += 1
        if self._stalled:
            self._tasks.add(task)
        if self._steps % 1024:
            return
        mark = self._progress()
        if mark != self._mark:
            self._mark, self._stalled = mark, 0
            self._tasks.clear()
            return
        self._stalled += 1024
        if self._stalled >= STALL_STEPS:
            self.report.append(" | ".join(sorted(_where(t) for t in self._tasks)))
            self._stalled = 0
            self._tasks.clear()
            if self._rescue.is_set():
                self.scope.cancel()
            self._rescue.set()


def _where(task: trio.lowlevel.Task) -> str:
    """A task's name and the innermost frames it is suspended in."""
    frames = []
    coro: object = task.coro
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None and "librorum" in frame.f_code.co_filename:
            frames.append(frame.f_code.co_name)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return f"{task.name.rsplit('.', 1)[-1]}[{'>'.join(frames)}]"


#: Figures over the executions of this process (the runner reads them from LIBRORUM_FUZZ_STATS).
STATS = {"executions": 0, "max_output_buffered": 0}


def test_one_input(data: bytes) -> None:
    scenario = Scenario(data)
    space = workspace()
    descriptors = _open_descriptors()
    try:
        with _inline_threads(), _captured_errors() as errors:
            clock = trio.testing.MockClock(autojump_threshold=0)
            _seed_scheduler()
            peak, livelock = trio.run(_exercise, scenario, space, clock=clock)
    finally:
        space.reset()
    leaked = _open_descriptors() - descriptors
    assert not leaked, f"descriptors left open: {sorted(leaked)}"
    assert not errors.records, f"the daemon logged errors: {errors.records}"
    assert peak <= OUTPUT_BOUND, f"{peak} bytes of output held for the peer"
    STATS["executions"] += 1
    if livelock:
        raise Livelock("\n".join(livelock))
    if peak > STATS["max_output_buffered"]:
        STATS["max_output_buffered"] = peak
        _save_stats()


def _open_descriptors() -> set[str]:
    """This process's open descriptors (Linux; empty elsewhere)."""
    try:
        return set(os.listdir("/proc/self/fd"))
    except FileNotFoundError:
        return set()


def _save_stats() -> None:
    path = os.environ.get("LIBRORUM_FUZZ_STATS")
    if path:
        Path(path).write_text(json.dumps(STATS))


async def _exercise(scenario: Scenario, space: Workspace) -> tuple[int, list[str]]:
    """Run one connection over the scenario; returns the most output it held unread, and
    what the watchdog saw spinning if the exchange livelocked."""
    async with open_store(
        space.store, chunk_size=CHUNK_SIZE, max_file_size=MAX_FILE_SIZE, fs=space.fs
    ) as store:
        server = Server(space.config, store, max_file_size=MAX_FILE_SIZE)
        peer, server_end = trio.testing.lockstep_stream_pair()
        transport = Measured(server_end)
        input_sent = trio.Event()
        rescue = trio.Event()
        watchdog = _Watchdog(
            lambda: (
                trio.current_time(),
                transport.bytes_sent,
                transport.bytes_received,
                transport.peer_received,
            ),
            rescue,
        )
        trio.lowlevel.add_instrument(watchdog)
        ended_at: list[float] = []
        baseline = trio.lowlevel.current_statistics().tasks_living
        journal = space.journal_size()

        async def serve() -> None:
            await server.handle(transport)
            ended_at.append(trio.current_time())

        async def read_output() -> None:
            if scenario.read_mode == READ_LAZY:
                await _either(input_sent, rescue)
            while True:
                slow = scenario.read_mode == READ_SLOW and not rescue.is_set()
                try:
                    data = await peer.receive_some(1024 if slow else READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                transport.peer_received += len(data)
                if slow:
                    with trio.move_on_after(1):
                        await rescue.wait()

        with trio.fail_after(HANG_DEADLINE), watchdog.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                nursery.start_soon(read_output)
                for piece in scenario.pieces:
                    if piece is None:
                        await trio.sleep(PAUSE_SECONDS)
                        continue
                    try:
                        await peer.send_all(piece)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break  # the server closed the connection
                input_sent.set()
                sent_at = trio.current_time()
                if scenario.abort:
                    await peer.aclose()
                else:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await peer.send_eof()
            await peer.aclose()
        trio.lowlevel.remove_instrument(watchdog)
        if watchdog.report:
            return transport.peak, watchdog.report
        assert ended_at, "the handler did not return"
        took = ended_at[0] - sent_at
        assert took <= END_DEADLINE, f"the connection outlived its input by {took:.0f} s"
        assert not server.connections, "the connection is still registered"
        assert server.stats.connections[transport.kind] == 0
        living = trio.lowlevel.current_statistics().tasks_living
        assert living == baseline, f"{living - baseline} tasks left running"
        # fsck is most of an execution's cost: only when the connection changed the store
        # (a metadata commit grows the journal; chunk files were published or collected).
        if space.fs.touched or space.journal_size() != journal:
            report = await store.fsck()
            assert report.ok, f"fsck after the connection: {report}"
            assert report.temp_files == 0, f"{report.temp_files} temp files left"
    return transport.peak, []


async def _either(first: trio.Event, second: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        for event in (first, second):

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)


# --- Seeds ---------------------------------------------------------------------------------------

_VECTORS: dict[str, bytes] = {}


def _vector_frames() -> dict[str, bytes]:
    """The client-to-server golden frames, by name."""
    if not _VECTORS:
        for vector in json.loads((VECTORS / "frames.json").read_text()):
            if vector["direction"] == "client-to-server":
                _VECTORS[vector["name"]] = bytes.fromhex(vector["hex"])
    return _VECTORS


def _input(stream: bytes, *, options: int = 0, sizes: bytes = b"") -> bytes:
    return bytes([options, len(sizes)]) + sizes + stream


def _client(build: Callable[[ClientSession], None], **hello: int) -> bytes:
    """A client's bytes: its HELLO, then what ``build`` queues (the handshake is completed
    with a sans-I/O server so that requests can be queued)."""
    client, server = ClientSession(), ServerSession(ServerLimits())
    client.hello(**hello)
    stream = b"".join(h + bytes(p) for h, p in client.frames_to_send())
    server.receive_data(stream)
    for event in server.events():
        assert isinstance(event, HelloReceived)
        server.accept_hello(event.hello)
    client.receive_data(b"".join(h + bytes(p) for h, p in server.frames_to_send()))
    list(client.events())
    build(client)
    return stream + b"".join(h + bytes(p) for h, p in client.frames_to_send())


def _write(client: ClientSession, path: str, data: bytes, *, pieces: int = 3, **kw: object) -> int:
    sid = client.start_request(FileWrite(path, size=len(data), **kw), end=False)
    step = max(1, len(data) // pieces)
    for at in range(0, len(data), step):
        client.send_data(sid, data[at : at + step], end=at + step >= len(data))
    if not data:
        client.send_data(sid, b"", end=True)
    return sid


def _hand_written() -> dict[str, bytes]:
    """Sequences the vectors do not cover: uploads with DATA, downloads with WINDOW, cancels,
    resumes, bursts, and the deadlines (pauses)."""
    data = bytes(range(256)) * 40

    def upload(c: ClientSession) -> None:
        _write(c, "/new", data)
        c.start_request(FileStat("/new"))
        c.start_request(FileRead("/new"))

    def exclusive_twice(c: ClientSession) -> None:
        _write(c, "/docs/x", b"one", mode=WriteMode.EXCLUSIVE)
        _write(c, "/docs/x", b"two", mode=WriteMode.EXCLUSIVE)
        _write(c, "/nowhere/x", b"three", mode=WriteMode.OVERWRITE)

    def half_upload(c: ClientSession) -> None:
        sid = c.start_request(FileWrite("/half", size=len(data), upload_id="fuzz-up"), end=False)
        c.send_data(sid, data[: len(data) // 2])

    def resume(c: ClientSession) -> None:
        c.start_request(UploadStatus(UPLOAD_ID))
        msg = FileWrite(
            "/backups/db.dump", size=UPLOAD_KEPT + 100, upload_id=UPLOAD_ID, offset=UPLOAD_KEPT
        )
        sid = c.start_request(msg, end=False)
        c.send_data(sid, b"r" * 100, end=True)

    def windowed_read(c: ClientSession) -> None:
        sid = c.start_request(FileRead("/big"))
        for _ in range(6):
            c.grant(sid, 8192)
        c.start_request(FileRead("/big", offset=5000, length=3000))

    def cancels(c: ClientSession) -> None:
        read = c.start_request(FileRead("/big"))
        c.start_request(Cancel(read))
        write = c.start_request(FileWrite("/cancelled", size=10000), end=False)
        c.send_data(write, b"x" * 5000)
        c.start_request(Cancel(write))
        c.start_request(Cancel(12345))

    def namespace(c: ClientSession) -> None:
        c.start_request(MakeDirectory("/n/a/b", parents=True))
        c.start_request(Rename("/docs/draft.txt", "/n/a/final.txt", overwrite=True))
        c.start_request(FileList("/n/a", limit=1))
        c.start_request(FileList("/", limit=1000))
        c.start_request(Delete("/tmp", recursive=True))
        c.start_request(Delete("/docs"))
        c.start_request(NodeStatus())

    def stats(c: ClientSession) -> None:
        for _ in range(100):
            c.start_request(FileStat("/docs/hello.txt"))

    seeds = {
        "upload": _input(_client(upload)),
        "upload-split": _input(_client(upload), sizes=bytes([7, 130, 1])),
        "exclusive-twice": _input(_client(exclusive_twice)),
        "half-upload": _input(_client(half_upload)),
        "half-upload-abort": _input(_client(half_upload), options=OPT_ABORT),
        "resume": _input(_client(resume)),
        "windowed-read": _input(_client(windowed_read, initial_window=4096)),
        "windowed-read-slow-peer": _input(
            _client(windowed_read, initial_window=4096), options=READ_SLOW << 1
        ),
        "cancels": _input(_client(cancels), sizes=bytes([200])),
        "namespace": _input(_client(namespace)),
        "stats-bytewise": _input(_client(stats), sizes=bytes([1])),
        # A frame begun and never finished; a HELLO that never comes; an idle client.
        "frame-deadline": _input(_client(upload)[:130], sizes=bytes([100, 0])),
        "handshake-deadline": _input(b"", sizes=bytes([0])),
        "idle-deadline": _input(
            _vector_frames()["ping"], options=OPT_HELLO, sizes=bytes([0, 0, 0, 0, 200])
        ),
    }
    # The same session id twice; DATA and WINDOW for sessions that never existed.
    reuse = encode_frame(Command.PING, encode_message(Ping(b"")), session_id=9)
    stray = encode_frame(Command.DATA, b"stray", session_id=77)
    stray += encode_frame(Command.WINDOW, encode_message(WindowUpdate(100)), session_id=78)
    read = encode_frame(Command.READ, encode_message(FileRead("/big")), session_id=9)
    seeds["session-reuse-and-strays"] = _input(read + reuse + stray, options=OPT_HELLO)
    # More requests than the server queues replies for, to a peer that reads nothing until
    # it has sent them all (cheap requests are answered inline, never in flight for long).
    ping = encode_message(Ping(b"abcd"))
    flood = b"".join(
        encode_frame(Command.PING, ping, session_id=i, flags=int(Flags.END)) for i in range(1, 1101)
    )
    seeds["ping-flood-lazy-peer"] = _input(flood, options=OPT_HELLO | READ_LAZY << 1)
    # More uploads at once than the server allows (the client session would refuse).
    uploads = b"".join(
        encode_frame(Command.WRITE, encode_message(FileWrite(f"/u{i}", size=10)), session_id=i)
        for i in range(1, 7)
    )
    end = int(Flags.END)
    uploads += b"".join(
        encode_frame(Command.DATA, b"0123456789", session_id=i, flags=end) for i in range(1, 7)
    )
    seeds["too-many-uploads"] = _input(uploads, options=OPT_HELLO)
    return seeds


def named_seeds() -> dict[str, bytes]:
    """The seed corpus, by name: each client-to-server golden frame after a HELLO (and
    alone), each malformed frame after a HELLO (and alone), all the golden frames in one
    stream, and the hand-written sequences."""
    frames = _vector_frames()
    hello = frames["hello"]
    result = {}
    for name, frame in frames.items():
        if name != "hello":
            result[f"vector-{name}"] = _input(hello + frame)
            result[f"vector-{name}-alone"] = _input(frame)
    for vector in json.loads((VECTORS / "malformed.json").read_text()):
        frame = bytes.fromhex(vector["hex"])
        result[f"malformed-{vector['name']}"] = _input(hello + frame)
        result[f"malformed-{vector['name']}-alone"] = _input(frame)
    result["vectors-all"] = _input(b"".join(frames.values()), sizes=bytes([13]))
    return result | _hand_written()


def seeds() -> list[bytes]:
    return list(named_seeds().values())


if __name__ == "__main__":
    main(test_one_input, sys.argv)
