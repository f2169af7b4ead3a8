"""Random SIGKILL under a mixed load (reliability campaign #2).

A real daemon process serves several actors at once, over the Unix socket and WebSocket:
writes of every size from empty to multi-chunk (some by descriptor passing), overwrites,
exclusive creates, deletes, recursive deletes, renames of files and of directories, mkdirs,
reads that check what they get, concurrent writes and deletes of shared files, and resumable
uploads that carry on across the crash. Each cycle:

1. load: the actors run; at an instant drawn uniformly over ``[0, LOAD_WINDOW)`` by a seeded
   RNG the daemon gets SIGKILL (no cleanup of any kind runs);
2. sometimes (``STARTUP_KILL_RATE``) the daemon is started and killed again at a random
   instant of its startup, so that recovery itself is interrupted;
3. with no daemon running, the store is opened in-process (which runs recovery) and
   ``fsck`` must find nothing: no corrupt, missing or orphan chunk, no reference-count or
   namespace error, and no temp file left once recovery ran;
4. the daemon restarts (spawn to serving is the recovery time) and, through a client, the
   namespace must be one the history allows: every acknowledged operation's effect is there
   (content hash checked) unless a later operation changed it, and the operation in flight at
   the kill either happened completely or not at all, never partly.

How the history is checked is in ``tests/reliability/history.py``: each actor owns a subtree
(exact sequential model, at most one operation in doubt), and a few shared paths are checked
as registers written concurrently by all actors. The resumable uploader keeps its client
(reconnecting) across the kill: its upload in flight resumes on the restarted daemon from the
committed offset and must then be acknowledged with the whole content. Its subtree is checked
when it is idle: an upload still resuming at the check finishes during the next load and is
checked after the next kill (it gets no new operation before that check).

CI: ``KILLS`` = 50 (about a minute and a half here); ``LIBRORUM_SOAK=1``: 1,000;
``LIBRORUM_SIGKILL_KILLS`` sets the number. ``LIBRORUM_SIGKILL_SEED`` picks another seed
(the default is fixed, so a run is repeatable up to the timing of the load against the
kill). Every operation and its outcome is written to ``history.log`` in the test's
directory.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import attrs
import blake3
import pytest
import trio

from librorum.client.aio import Client, open_client
from librorum.client.sync import connect
from librorum.errors import (
    ConnectionClosed,
    LibrorumError,
    NotFoundError,
    RemoteProtocolError,
    TransportError,
)
from librorum.protocol.constants import EntryKind, WriteMode
from librorum.protocol.messages import PingReply
from librorum.protocol.session import HelloReceived, RequestReceived, ServerLimits, ServerSession
from librorum.store import open_store
from tests.figures import FigureBook
from tests.reliability.harness import DaemonProcess
from tests.reliability.history import (
    DIR,
    File,
    Node,
    Op,
    Outcome,
    RegisterModel,
    SubtreeModel,
    Tree,
    delete_patch,
    mkdir_patch,
    rename_patch,
    subtree,
    write_patch,
)

SOAK: Final = bool(os.environ.get("LIBRORUM_SOAK"))
KILLS: Final = int(os.environ.get("LIBRORUM_SIGKILL_KILLS", 1000 if SOAK else 50))
SEED: Final = int(os.environ.get("LIBRORUM_SIGKILL_SEED", "20241204"))
#: The kill comes at an instant uniform over this many seconds of load.
LOAD_WINDOW: Final = 1.0
#: Share of cycles that also kill a daemon during its startup (recovery interrupted).
STARTUP_KILL_RATE: Final = 0.15
#: Startup kills land uniformly over this many seconds after the spawn (a start takes
#: ~0.7 s here, so some land before the store is open, some during recovery, some after).
STARTUP_WINDOW: Final = 0.9
#: Actors with a private subtree each, plus the resumable uploader.
WORKERS: Final = 3
MAX_FILES: Final = 8
MAX_DIRS: Final = 5
MAX_DEPTH: Final = 3
SHARED: Final = ("/shared/h0", "/shared/h1")
#: After the kill, each actor's operation must end (ConnectionClosed) within this.
WORKER_EXIT_TIMEOUT: Final = 15.0
#: How long the resumable uploader may take to finish (resume) after the restart.
RESUME_TIMEOUT: Final = 60.0
#: The whole test: generous, as the machine is shared.
TIME_LIMIT: Final = KILLS * 12.0 + 120.0

KiB: Final = 1 << 10
MiB: Final = 1 << 20
CHUNK: Final = 4 * MiB


# --- Content -----------------------------------------------------------------------------------


@attrs.frozen
class Content:
    data: bytes
    file: File
    #: A local copy, for writes by descriptor passing (only for unmodified pool items).
    path: Path | None = None


class Contents:
    """Seeded content. A pool shared by all actors, so that files share chunks and the
    store's deduplication and reference counts are exercised across files; variants with a
    unique tail (all chunks shared but the last) and prefixes (whole chunks shared)."""

    def __init__(self, seed: int, directory: Path) -> None:
        self._seed = seed
        rng = random.Random(seed)
        directory.mkdir()
        self.small = [self._item("s0", 0)]
        self.small += [self._item(f"s{i}", rng.randrange(1, 64 * KiB)) for i in range(1, 12)]
        self.medium = [
            self._item(f"m{i}", rng.randrange(64 * KiB, 2 * MiB), directory) for i in range(4)
        ]
        self.large = [
            self._item(f"l{i}", rng.randrange(CHUNK + 1, 9 * MiB), directory) for i in range(2)
        ]
        # Resumable uploads of more than one publish batch (8 chunks) resume from a committed
        # offset above zero when the kill comes late enough.
        self.huge = self._item("h", 36 * MiB)
        self.serial = 0

    def _item(self, name: str, size: int, directory: Path | None = None) -> Content:
        data = blake3.blake3(f"{self._seed}:{name}".encode()).digest(length=size)
        path = None
        if directory is not None:
            path = directory / name
            path.write_bytes(data)
        return Content(data, File.of(data), path)

    def _variant(self, rng: random.Random, base: Content, minimum: int = 0) -> Content:
        roll = rng.random()
        if roll < 0.5:
            return base
        if roll < 0.8:
            self.serial += 1
            data = base.data + f"|{self._seed}:{self.serial}".encode()
        else:
            data = base.data[: rng.randrange(minimum, len(base.data) + 1)]
        return Content(data, File.of(data))

    def pick(self, rng: random.Random, *, large: bool = True) -> Content:
        roll = rng.random()
        if roll < 0.6 or (not large and roll < 0.8):
            return self._variant(rng, rng.choice(self.small))
        if roll < 0.88 or not large:
            return self._variant(rng, rng.choice(self.medium))
        return self._variant(rng, rng.choice(self.large), CHUNK + 1)

    def pick_resumable(self, rng: random.Random) -> Content:
        if rng.random() < 0.35:
            return self._variant(rng, self.huge, 33 * MiB)
        return self.pick(rng)


# --- Actors ------------------------------------------------------------------------------------


Runner = Callable[[Client], Awaitable[str | None]]


@attrs.define
class Planned:
    """An operation chosen by an actor: its record, how to run it, which errors it may get."""

    op: Op
    run: Runner
    #: The model the operation belongs to.
    model: SubtreeModel | RegisterModel
    may_fail: tuple[type[LibrorumError], ...] = ()
    written: int = 0


@attrs.define
class Campaign:
    """The test's state: the daemon, the actors' models, the figures, the problems found."""

    rng: random.Random
    contents: Contents
    daemon: DaemonProcess
    workers: list[SubtreeModel]
    uploader: SubtreeModel
    registers: list[RegisterModel]
    seq: int = 0
    problems: list[str] = attrs.field(factory=list)
    # Figures.
    ops: int = 0
    bytes_written: int = 0
    acked_checked: int = 0
    in_flight: int = 0
    in_flight_applied: int = 0
    survived: int = 0
    startup_kills: int = 0
    resumes: int = 0
    resumes_above_zero: int = 0
    recovery_ms: list[float] = attrs.field(factory=list)
    store_recovery_ms: list[float] = attrs.field(factory=list)
    temp_files_removed: int = 0
    chunks_collected: int = 0
    fsck_findings: int = 0
    uploader_phase: Phase | None = None
    uploader_deferred: int = 0
    uploader_checked: bool = True
    cut_mid_frame: int = 0
    #: Every operation with its outcome, one line each (written next to the daemon's log).
    history: list[str] = attrs.field(factory=list)

    def _op(self, actor: str, kind: str, paths: tuple[str, ...], detail: str, transport: str) -> Op:
        self.seq += 1
        return Op(self.seq, actor, kind, paths, detail, transport, trio.current_time(), {})

    # --- Choosing operations ----------------------------------------------------------------

    def plan_worker(self, model: SubtreeModel, rng: random.Random) -> Planned:
        tree = model.tree
        files = sorted(p for p, n in tree.items() if isinstance(n, File))
        dirs = sorted(p for p, n in tree.items() if n is DIR)
        subdirs = [d for d in dirs if d != model.root]
        room = len(files) < MAX_FILES
        weights = {
            "create": 24 if room else 0,
            "exclusive": 5 if room else 0,
            "overwrite": 20 if files else 0,
            "delete": 10 if files else 0,
            "rename": 12 if files or subdirs else 0,
            "mkdir": 7 if len(dirs) < MAX_DIRS else 0,
            "rmtree": 3 if subdirs else 0,
            "read": 9 if files else 0,
            "shared": 10,
        }
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        transport = "local" if rng.random() < 0.6 else "remote"
        name = model.root.rsplit("/", 1)[1]
        if kind == "shared":
            return self._plan_shared(name, rng, transport)
        if kind in ("create", "exclusive"):
            target = _free_name(tree, rng.choice(dirs), "f", rng)
            if target is None and files:
                kind = "overwrite"
            elif target is not None:
                mode = WriteMode.CREATE if kind == "create" else WriteMode.EXCLUSIVE
                return self._plan_write(name, model, target, mode, rng, transport)
        if kind == "overwrite":
            target = rng.choice(files)
            mode = rng.choice([WriteMode.CREATE, WriteMode.OVERWRITE])
            return self._plan_write(name, model, target, mode, rng, transport)
        if kind in ("delete", "rmtree"):
            target = rng.choice(files if kind == "delete" else subdirs)
            op = self._op(name, kind, (target,), target, transport)
            op.patch = delete_patch(tree, target)
            recursive = kind == "rmtree"

            async def delete(client: Client) -> str | None:
                await client.delete(target, recursive=recursive)
                return None

            return Planned(op, delete, model)
        if kind == "rename":
            return self._plan_rename(name, model, files, subdirs, dirs, rng, transport)
        if kind == "mkdir":
            shallow = [d for d in dirs if d.count("/") < MAX_DEPTH]
            target = _free_name(tree, rng.choice(shallow), "d", rng)
            if target is not None:
                op = self._op(name, kind, (target,), target, transport)
                op.patch = mkdir_patch(target)

                async def mkdir(client: Client) -> str | None:
                    await client.mkdir(target)
                    return None

                return Planned(op, mkdir, model)
        target = rng.choice(files) if files else None
        if target is None:
            return self._plan_shared(name, rng, transport)
        return self._plan_read(name, model, target, transport)

    def _plan_write(
        self,
        actor: str,
        model: SubtreeModel,
        target: str,
        mode: WriteMode,
        rng: random.Random,
        transport: str,
        *,
        resumable: bool = False,
    ) -> Planned:
        content = self.contents.pick_resumable(rng) if resumable else self.contents.pick(rng)
        # Over the Unix socket a file of 1 MiB or more goes by descriptor passing.
        source: bytes | Path = content.data
        if transport == "local" and content.path is not None and not resumable:
            source = content.path
        how = "resumable " if resumable else ("by fd " if isinstance(source, Path) else "")
        detail = f"{target} {how}{mode.name.lower()} {content.file}"
        op = self._op(actor, "write", (target,), detail, transport)
        op.patch = write_patch(target, content.file)
        campaign = self

        async def write(client: Client) -> str | None:
            if not resumable:
                await client.write(target, source, mode=mode)
                return None
            sent = 0

            def progress(done: int, total: int | None) -> None:
                # Progress restarts from the committed offset when the upload resumes.
                nonlocal sent
                if done <= sent:
                    campaign.resumes += 1
                    campaign.resumes_above_zero += done > MiB
                    op.detail += f" (resumed below {done})"
                sent = done

            await client.write(target, content.data, mode=mode, resumable=True, progress=progress)
            return None

        return Planned(op, write, model, written=len(content.data))

    def _plan_rename(
        self,
        actor: str,
        model: SubtreeModel,
        files: list[str],
        subdirs: list[str],
        dirs: list[str],
        rng: random.Random,
        transport: str,
    ) -> Planned:
        tree = model.tree
        src = rng.choice(files + subdirs)
        overwrite = False
        others = [f for f in files if f != src]
        if isinstance(tree[src], File) and others and rng.random() < 0.3:
            dst: str | None = rng.choice(others)
            overwrite = True
        else:
            # Not into itself; and a directory keeps within the depth limit.
            depth = max(p.count("/") for p in subtree(tree, src) if p in dirs or p == src)
            depth -= src.count("/")
            homes = [
                d
                for d in dirs
                if d != src
                and not d.startswith(src + "/")
                and (src in files or d.count("/") + depth < MAX_DEPTH)
            ]
            dst = None
            if homes:
                dst = _free_name(tree, rng.choice(homes), "f" if src in files else "d", rng)
        if dst is None:
            return (
                self._plan_read(actor, model, rng.choice(files), transport)
                if files
                else (self._plan_shared(actor, rng, transport))
            )
        detail = f"{src} -> {dst}{' overwrite' if overwrite else ''}"
        op = self._op(actor, "rename", (src, dst), detail, transport)
        op.patch = rename_patch(tree, src, dst)

        async def rename(client: Client) -> str | None:
            await client.rename(src, dst, overwrite=overwrite)
            return None

        return Planned(op, rename, model)

    def _plan_read(self, actor: str, model: SubtreeModel, target: str, transport: str) -> Planned:
        expected = model.tree[target]
        op = self._op(actor, "read", (target,), target, transport)

        async def read(client: Client) -> str | None:
            got = File.of(await client.read(target))
            if got != expected:
                return f"read of {target} (op #{op.seq}) gave {got}, the acked state is {expected}"
            return None

        return Planned(op, read, model)

    def _plan_shared(self, actor: str, rng: random.Random, transport: str) -> Planned:
        register = rng.choice(self.registers)
        target = register.path
        if rng.random() < 0.25:
            op = self._op(actor, "delete", (target,), f"{target} (shared)", transport)
            op.patch = {target: None}

            async def delete(client: Client) -> str | None:
                await client.delete(target)
                return None

            # Another actor may have deleted it first: refused, no effect.
            return Planned(op, delete, register, may_fail=(NotFoundError,))
        content = self.contents.pick(rng, large=False)
        op = self._op(actor, "write", (target,), f"{target} (shared) {content.file}", transport)
        op.patch = {target: content.file}

        async def write(client: Client) -> str | None:
            await client.write(target, content.data)
            return None

        return Planned(op, write, register, written=len(content.data))

    def plan_uploader(self, rng: random.Random) -> Planned:
        model = self.uploader
        files = sorted(p for p, n in model.tree.items() if isinstance(n, File))
        roll = rng.random()
        if files and roll < 0.12:
            target = rng.choice(files)
            op = self._op("r", "delete", (target,), target, "local")
            op.patch = delete_patch(model.tree, target)

            async def delete(client: Client) -> str | None:
                await client.delete(target)
                return None

            return Planned(op, delete, model)
        if files and roll < 0.25:
            return self._plan_read("r", model, rng.choice(files), "local")
        target = f"{model.root}/f{rng.randrange(3)}"
        return self._plan_write("r", model, target, WriteMode.CREATE, rng, "local", resumable=True)

    # --- Running operations -----------------------------------------------------------------

    async def execute(self, planned: Planned, client: Client, phase: Phase) -> bool:
        """Run one operation and record its answer; False when its outcome is unknown (the
        actor must stop: nothing may follow an operation in doubt)."""
        op = planned.op
        planned.model.invoke(op)
        self.ops += 1
        try:
            problem = await planned.run(client)
        except TransportError as exc:
            op.unknown(exc)
        except RemoteProtocolError as exc:
            # The client reports a connection that ended in the middle of a frame (the
            # daemon died while sending it) as a protocol error, not ConnectionClosed: a lost
            # connection all the same (see test_a_reply_cut_short_is_a_lost_connection).
            op.unknown(exc)
            self.cut_mid_frame += 1
        except LibrorumError as exc:
            op.failed(trio.current_time(), exc)
        else:
            op.ok(trio.current_time())
            self.bytes_written += planned.written
            if problem is not None:
                self.problems.append(f"cycle {phase.cycle}: {problem}")
        if isinstance(planned.model, SubtreeModel):
            planned.model.settle(op)
        self.history.append(str(op))
        if op.outcome is Outcome.UNKNOWN and phase.killed_at is None:
            self.problems.append(f"cycle {phase.cycle}: connection lost before the kill: {op}")
        if op.outcome is Outcome.FAILED and not any(
            op.error is not None and op.error.startswith(cls.__name__ + ":")
            for cls in planned.may_fail
        ):
            self.problems.append(f"cycle {phase.cycle}: unexpected error: {op}")
        return op.outcome is not Outcome.UNKNOWN

    async def run_worker(
        self, model: SubtreeModel, clients: dict[str, Client], phase: Phase, seed: int
    ) -> None:
        rng = random.Random(seed)
        while not phase.stopping:
            planned = self.plan_worker(model, rng)
            if not await self.execute(planned, clients[planned.op.transport], phase):
                return

    async def run_uploader(self, phases: trio.MemoryReceiveChannel[Phase]) -> None:
        """The resumable uploader: one client for the whole test that reconnects (with
        backoff) after each kill, so that its upload in flight resumes on the next daemon."""
        async with open_client(
            transport="local",
            socket_path=self.daemon.socket_path,
            reconnect_attempts=40,
            reconnect_deadline=RESUME_TIMEOUT,
            resume_attempts=20,
        ) as client:
            async for phase in phases:
                rng = random.Random(phase.seed + 1000)
                try:
                    # Nothing may follow an operation in doubt until a check settled it.
                    while not phase.stopping and self.uploader.in_doubt is None:
                        if not await self.execute(self.plan_uploader(rng), client, phase):
                            break
                finally:
                    phase.uploader_done.set()

    def uploader_idle(self) -> bool:
        """Whether the resumable uploader is between operations (its last one, perhaps
        resumed on the restarted daemon, has ended)."""
        return self.uploader_phase is None or self.uploader_phase.uploader_done.is_set()

    # --- The cycle -------------------------------------------------------------------------

    async def start_daemon(self, nursery: trio.Nursery) -> None:
        started = time.perf_counter()
        await self.daemon.start(nursery)
        self.recovery_ms.append((time.perf_counter() - started) * 1000)

    async def load_until_kill(self, phase: Phase, uploader: trio.MemorySendChannel[Phase]) -> None:
        kill_at = self.rng.uniform(0, LOAD_WINDOW)
        daemon = self.daemon
        assert daemon.url is not None
        async with contextlib.AsyncExitStack() as stack:
            clients = []
            for _ in range(WORKERS):
                local = await stack.enter_async_context(
                    open_client(transport="local", socket_path=daemon.socket_path, reconnect=False)
                )
                remote = await stack.enter_async_context(
                    open_client(
                        transport="remote",
                        url=daemon.url,
                        token_file=daemon.token_file,
                        reconnect=False,
                    )
                )
                clients.append({"local": local, "remote": remote})
            async with trio.open_nursery() as load:
                for i, model in enumerate(self.workers):
                    load.start_soon(self.run_worker, model, clients[i], phase, phase.seed + i)
                # The uploader joins when its last operation has ended (one resumed after the
                # previous kill may still be running in the background) and a check has seen
                # its subtree since: so that each of its operations faces a kill, then a check.
                if self.uploader_idle() and self.uploader_checked:
                    self.uploader_checked = False
                    self.uploader_phase = phase
                    await uploader.send(phase)
                await trio.sleep(kill_at)
                phase.stopping = True
                phase.killed_at = trio.current_time()
                await daemon.kill()
                load.cancel_scope.deadline = trio.current_time() + WORKER_EXIT_TIMEOUT
            if load.cancel_scope.cancelled_caught:
                self.problems.append(
                    f"cycle {phase.cycle}: an operation did not end within"
                    f" {WORKER_EXIT_TIMEOUT} s of the daemon's death"
                )

    async def kill_during_startup(self, nursery: trio.Nursery) -> None:
        self.startup_kills += 1
        await self.daemon.start(nursery, wait=False)
        await trio.sleep(self.rng.uniform(0, STARTUP_WINDOW))
        await self.daemon.kill()
        process = self.daemon.process
        assert process is not None
        if process.returncode != -9:
            self.problems.append(
                f"a daemon starting on a crashed store exited with {process.returncode}"
                f" before the kill:\n{self.daemon.log_tail()}"
            )

    async def check_store(self, phase: Phase) -> None:
        async with open_store(self.daemon.data_dir / "store") as store:
            recovery = store.recovery
            report = await store.fsck()
        assert recovery is not None
        self.store_recovery_ms.append(recovery.seconds * 1000)
        self.temp_files_removed += recovery.temp_files_removed
        self.chunks_collected += recovery.chunks_collected
        findings = (
            report.corrupt_count
            + report.missing_count
            + report.orphan_count
            + report.refcount_error_count
            + len(report.namespace_errors)
            + report.temp_files
        )
        self.fsck_findings += findings
        if findings or not report.ok:
            self.problems.append(f"cycle {phase.cycle}: fsck after recovery: {report}")

    async def verify(self, phase: Phase) -> None:
        transport = "local" if phase.cycle % 2 == 0 else "remote"
        daemon = self.daemon
        async with _client(daemon, transport) as client:
            results = [
                m.resolve(await self.observe(client, phase, m.root, m.ops)) for m in self.workers
            ]
            # The uploader's subtree is checked when it is idle. An upload resuming on this
            # daemon is not waited for: it finishes during the next load, and a later check
            # (after a later kill) sees its effect.
            if self.uploader_idle():
                model = self.uploader
                found = await self.observe(client, phase, model.root, model.ops)
                results.append(model.resolve(found))
                self.uploader_checked = True
            else:
                self.uploader_deferred += 1
            shared = await self.observe(
                client, phase, "/shared", [op for r in self.registers for op in r.ops]
            )
            results += [r.resolve(shared.get(r.path)) for r in self.registers]
        problems = [p for r in results for p in r.problems]
        self.problems += [f"cycle {phase.cycle}: {p}" for p in problems]
        self.survived += not problems
        self.acked_checked += sum(r.acked_checked for r in results)
        self.in_flight += sum(r.in_flight for r in results)
        self.in_flight_applied += sum(r.in_flight_applied for r in results)

    async def verify_uploader(self, phase: Phase) -> None:
        async with _client(self.daemon, "local") as client:
            model = self.uploader
            result = model.resolve(await self.observe(client, phase, model.root, model.ops))
        self.problems += [f"end: {p}" for p in result.problems]
        self.acked_checked += result.acked_checked
        self.in_flight += result.in_flight
        self.in_flight_applied += result.in_flight_applied

    async def observe(self, client: Client, phase: Phase, root: str, ops: list[Op]) -> Tree:
        """The subtree at ``root`` as the daemon serves it. Files that this cycle's
        operations touched are read whole and hashed; the others are known by their stat."""
        touched = {p for op in ops for p in op.patch}
        tree: Tree = {root: DIR}
        pending = [root]
        while pending:
            directory = pending.pop()
            for entry in await client.list(directory):
                path = f"{directory}/{entry.name}"
                if entry.kind is EntryKind.DIRECTORY:
                    tree[path] = DIR
                    pending.append(path)
                    continue
                info = await client.stat(path)
                assert info.content_hash is not None
                node: Node = File(info.size, info.content_hash)
                if path in touched:
                    content = File.of(await client.read(path))
                    if content != node:
                        self.problems.append(
                            f"cycle {phase.cycle}: {path} holds {content} but its stat says {node}"
                        )
                    node = content
                tree[path] = node
        return tree

    async def run(self, nursery: trio.Nursery) -> None:
        await self.start_daemon(nursery)
        async with _client(self.daemon, "local") as client:
            for model in [*self.workers, self.uploader]:
                await client.mkdir(model.root)
            await client.mkdir("/shared")
        send, receive = trio.open_memory_channel[Phase](1)
        async with trio.open_nursery() as background:
            background.start_soon(self.run_uploader, receive)
            for cycle in range(KILLS):
                phase = Phase(cycle, self.rng.randrange(1 << 32))
                await self.load_until_kill(phase, send)
                if self.rng.random() < STARTUP_KILL_RATE:
                    await self.kill_during_startup(nursery)
                await self.check_store(phase)
                await self.start_daemon(nursery)
                await self.verify(phase)
            await send.aclose()
            # The last check of the uploader's subtree, once its last operation ended.
            with trio.move_on_after(RESUME_TIMEOUT):
                assert self.uploader_phase is not None
                await self.uploader_phase.uploader_done.wait()
            if self.uploader_idle():
                await self.verify_uploader(Phase(KILLS, 0))
            else:
                self.problems.append(f"the resumable uploader did not finish in {RESUME_TIMEOUT} s")
        status = await self.daemon.stop()
        if status != 0:
            self.problems.append(f"the daemon exited with status {status} on SIGTERM")
        self.problems += [f"daemon log: {line}" for line in self.daemon.tracebacks()]


@attrs.define(eq=False)
class Phase:
    """One load phase, from the start of the load to the restart after the kill."""

    cycle: int
    seed: int
    stopping: bool = False
    killed_at: float | None = None
    uploader_done: trio.Event = attrs.field(factory=trio.Event)


def _free_name(tree: Tree, directory: str, prefix: str, rng: random.Random) -> str | None:
    names = [f"{directory.rstrip('/')}/{prefix}{i}" for i in range(10)]
    free = [n for n in names if n not in tree]
    return rng.choice(free) if free else None


@contextlib.asynccontextmanager
async def _client(daemon: DaemonProcess, transport: str) -> AsyncIterator[Client]:
    if transport == "local":
        async with open_client(
            transport="local", socket_path=daemon.socket_path, reconnect=False
        ) as client:
            yield client
    else:
        assert daemon.url is not None
        async with open_client(
            transport="remote", url=daemon.url, token_file=daemon.token_file, reconnect=False
        ) as client:
            yield client


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else 0.0


async def test_random_sigkill_under_mixed_load(tmp_path: Path, figures: FigureBook) -> None:
    started = time.perf_counter()
    campaign = Campaign(
        rng=random.Random(SEED),
        contents=Contents(SEED, tmp_path / "content"),
        daemon=DaemonProcess(tmp_path / "daemon"),
        workers=[SubtreeModel(f"/w{i}", {f"/w{i}": DIR}) for i in range(WORKERS)],
        uploader=SubtreeModel("/r", {"/r": DIR}),
        registers=[RegisterModel(path, None) for path in SHARED],
    )
    history = trio.Path(tmp_path / "history.log")
    with trio.fail_after(TIME_LIMIT):
        async with trio.open_nursery() as nursery:
            try:
                await campaign.run(nursery)
            finally:
                # On any failure the daemon must die too: the harness waits for its exit.
                with trio.CancelScope(shield=True):
                    await campaign.daemon.kill()
                    await history.write_text("\n".join(campaign.history) + "\n")
    wall = time.perf_counter() - started
    figures.record(
        "crash.sigkill",
        {
            "kills": KILLS,
            "survived": campaign.survived,
            "seed": SEED,
            "ops": campaign.ops,
            "mib_written": round(campaign.bytes_written / MiB, 1),
            "acked_ops_checked": campaign.acked_checked,
            "in_flight_resolved": campaign.in_flight,
            "in_flight_applied": campaign.in_flight_applied,
            "startup_kills": campaign.startup_kills,
            "uploader_checks_deferred": campaign.uploader_deferred,
            "replies_cut_mid_frame": campaign.cut_mid_frame,
            "resumed_uploads": campaign.resumes,
            "resumed_above_zero": campaign.resumes_above_zero,
            "recovery_ms_p50": round(_percentile(campaign.recovery_ms, 50)),
            "recovery_ms_p99": round(_percentile(campaign.recovery_ms, 99)),
            "store_recovery_ms_p50": round(_percentile(campaign.store_recovery_ms, 50), 1),
            "store_recovery_ms_p99": round(_percentile(campaign.store_recovery_ms, 99), 1),
            "temp_files_removed": campaign.temp_files_removed,
            "chunks_collected": campaign.chunks_collected,
            "fsck_findings": campaign.fsck_findings,
            "problems": len(campaign.problems),
            "wall_s": round(wall, 1),
            "s_per_kill": round(wall / KILLS, 2),
        },
    )
    problems = "\n\n".join(campaign.problems[:10])
    assert not campaign.problems, f"{problems}\n\n(every operation: {history})"


@pytest.mark.parametrize("blocking", [False, True], ids=["async", "blocking"])
async def test_a_reply_cut_short_is_a_lost_connection(tmp_path: Path, blocking: bool) -> None:
    """What the campaign saw when the kill landed while the daemon was writing a frame (a
    DATA frame of a download, most often): the client raised RemoteProtocolError
    ("connection closed in the middle of a frame") instead of the ConnectionClosed that the
    clients document for a connection lost with a request in flight, so a caller could not
    tell a crash from a protocol violation, and ``write(resumable=True)``, which resumes only
    on ConnectionClosed, gave up instead of resuming.

    Here a minimal server answers HELLO, then dies halfway through the PING reply."""
    path = tmp_path / "daemon.sock"

    async def serve_one(listener: trio.socket.SocketType) -> None:
        sock, _ = await listener.accept()
        session = ServerSession(ServerLimits())
        async with trio.SocketStream(sock) as stream:
            while True:
                session.receive_data(await stream.receive_some())
                for event in session.events():
                    if isinstance(event, HelloReceived):
                        session.accept_hello(event.hello)
                        await stream.send_all(_joined(session.frames_to_send()))
                    elif isinstance(event, RequestReceived):
                        session.reply(event.session_id, PingReply(b""))
                        reply = _joined(session.frames_to_send())
                        await stream.send_all(reply[: len(reply) // 2])
                        return  # the daemon dies here

    with trio.fail_after(30), trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        await listener.bind(str(path))
        listener.listen()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one, listener)
            if blocking:

                def ping() -> None:
                    with connect(transport="local", socket_path=path, reconnect=False) as client:
                        client.ping()

                with pytest.raises(ConnectionClosed, match="middle of a frame"):
                    await trio.to_thread.run_sync(ping)
                return
            async with open_client(transport="local", socket_path=path, reconnect=False) as client:
                with pytest.raises(ConnectionClosed, match="middle of a frame"):
                    await client.ping()


def _joined(frames: list[tuple[bytes, Any]]) -> bytes:
    return b"".join(bytes(header) + bytes(payload) for header, payload in frames)
