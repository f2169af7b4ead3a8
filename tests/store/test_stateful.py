"""Random sequences of namespace operations and restarts, checked against an in-memory model.

The store runs on its own Trio loop in a helper thread (``StoreHost``) so that Hypothesis's
synchronous state machine can drive it step by step, and close and reopen it (``restart``).
After every step the whole namespace (every listing, every file's content) must equal the
model's, and every operation must fail with exactly the model's exception class or succeed
with the model's result. Each example ends with fsck.
"""

from __future__ import annotations

import itertools
import queue
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import blake3
import trio
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from librorum.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    IsADirectoryError_,
    NotADirectoryError_,
    NotEmptyError,
    NotFoundError,
    StoreError,
)
from librorum.protocol.constants import EntryKind, WriteMode
from librorum.store import Store, open_store
from librorum.store.paths import is_within, join, split
from tests.store.conftest import FIGURES, TEST_CHUNK_SIZE
from tests.store.test_api import data
from tests.store.test_crash import DIR, tree

CS = TEST_CHUNK_SIZE
_STOP = object()
_RESTART = object()
#: Longest wait for one step on the store thread.
STEP_TIMEOUT = 60.0


class StoreHost:
    """Runs a store on a Trio loop in a thread; :meth:`call` runs one coroutine there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._requests: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._replies: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._reply()

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the waiting test thread
            self._replies.put((False, exc))

    async def _main(self) -> None:
        while True:
            async with open_store(self.root, chunk_size=CS) as store:
                self._replies.put((True, None))
                while True:
                    item = await trio.to_thread.run_sync(self._requests.get)
                    if item is _STOP:
                        return
                    if item is _RESTART:
                        break
                    try:
                        result = await item(store)
                    except Exception as exc:
                        self._replies.put((False, exc))
                    else:
                        self._replies.put((True, result))

    def _reply(self) -> Any:
        ok, value = self._replies.get(timeout=STEP_TIMEOUT)
        if not ok:
            raise value
        return value

    def call(self, fn: Callable[[Store], Awaitable[Any]]) -> Any:
        self._requests.put(fn)
        return self._reply()

    def restart(self) -> None:
        self._requests.put(_RESTART)
        self._reply()

    def stop(self) -> None:
        self._requests.put(_STOP)
        self._thread.join(timeout=STEP_TIMEOUT)


# --- the model ------------------------------------------------------------------------------


class Model:
    """The namespace as a dict: path -> content (bytes) or DIR; the root is implicit."""

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}

    def kind(self, path: str) -> bytes | None:
        return DIR if path == "/" else self.entries.get(path)

    def resolve(self, path: str) -> bytes:
        if path == "/":
            return DIR
        current = "/"
        for name in path[1:].split("/"):
            if self.kind(current) != DIR:
                raise NotADirectoryError_
            current = join(current, name)
            if current not in self.entries:
                raise NotFoundError
        return self.entries[current]

    def parent_dir(self, path: str) -> None:
        parent, _ = split(path)
        if self.resolve(parent) != DIR:
            raise NotADirectoryError_

    def write(self, path: str, content: bytes, mode: WriteMode) -> None:
        if path == "/":
            raise AlreadyExistsError if mode is WriteMode.EXCLUSIVE else IsADirectoryError_
        self.parent_dir(path)
        existing = self.entries.get(path)
        if existing is None:
            if mode is WriteMode.OVERWRITE:
                raise NotFoundError
        elif mode is WriteMode.EXCLUSIVE:
            raise AlreadyExistsError
        elif existing == DIR:
            raise IsADirectoryError_
        self.entries[path] = content

    def read(self, path: str) -> bytes:
        content = self.resolve(path)
        if content == DIR:
            raise IsADirectoryError_
        return content

    def mkdir(self, path: str, parents: bool) -> None:
        if path == "/":
            if not parents:
                raise AlreadyExistsError
            return
        current = "/"
        names = path[1:].split("/")
        for i, name in enumerate(names):
            last = i == len(names) - 1
            current = join(current, name)
            kind = self.entries.get(current)
            if kind is None:
                if not (last or parents):
                    raise NotFoundError
                self.entries[current] = DIR
            elif last:
                if parents and kind == DIR:
                    return
                raise AlreadyExistsError
            elif kind != DIR:
                raise NotADirectoryError_

    def delete(self, path: str, recursive: bool) -> int:
        if path == "/":
            raise InvalidArgumentError
        kind = self.resolve(path)
        below = [p for p in self.entries if p != path and is_within(p, path)]
        if kind == DIR and below and not recursive:
            raise NotEmptyError
        for p in [path, *below]:
            del self.entries[p]
        return 1 + len(below)

    def rename(self, src: str, dst: str, overwrite: bool) -> None:
        if "/" in (src, dst):
            raise InvalidArgumentError
        kind = self.resolve(src)
        if src == dst:
            return
        self.parent_dir(dst)
        if kind == DIR and is_within(dst, src):
            raise InvalidArgumentError
        existing = self.entries.get(dst)
        if existing is not None:
            if not overwrite:
                raise AlreadyExistsError
            if existing == DIR:
                raise IsADirectoryError_
            if kind == DIR:
                raise NotADirectoryError_
        moved = {p: c for p, c in self.entries.items() if is_within(p, src)}
        for p in moved:
            del self.entries[p]
        for p, c in moved.items():
            self.entries[dst + p[len(src) :]] = c

    def listing(self, path: str) -> list[tuple[str, bool]]:
        if self.resolve(path) != DIR:
            raise NotADirectoryError_
        return sorted(
            (p.rpartition("/")[2], c == DIR) for p, c in self.entries.items() if split(p)[0] == path
        )


# --- strategies -------------------------------------------------------------------------------

names = st.sampled_from(["a", "b", "c"])
paths = st.one_of(
    st.just("/"),
    st.lists(names, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts)),
)
sizes = st.sampled_from([0, 1, 100, CS - 1, CS, CS + 1, 2 * CS + 5, 3 * CS])
seeds = st.integers(0, 3)  # few seeds: identical contents (dedup) come up often
modes = st.sampled_from(list(WriteMode))


def expect(model_fn: Callable[[], Any]) -> str:
    """The name of the exception class the model raises, or "ok"."""
    try:
        model_fn()
    except (
        AlreadyExistsError,
        InvalidArgumentError,
        IsADirectoryError_,
        NotADirectoryError_,
        NotEmptyError,
        NotFoundError,
    ) as exc:
        return type(exc).__name__
    return "ok"


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory()
        self.host = StoreHost(Path(self._tmp.name) / "store")
        self.model = Model()
        self.steps = 0

    def teardown(self) -> None:
        try:
            report = self.host.call(lambda s: self._fsck(s))
            assert report.ok, report
        finally:
            self.host.stop()
            self._tmp.cleanup()
        stats = FIGURES.setdefault("stateful", {"examples": 0, "steps": 0})
        stats["examples"] += 1
        stats["steps"] += self.steps

    @staticmethod
    async def _fsck(store: Store) -> Any:
        await store.collect_garbage()
        return await store.fsck()

    def check(
        self, model_fn: Callable[[], Any], store_fn: Callable[[Store], Awaitable[Any]]
    ) -> Any:
        self.steps += 1
        snapshot = dict(self.model.entries)
        wanted = expect(model_fn)
        if wanted != "ok":
            self.model.entries = snapshot  # the model changed nothing either
        try:
            result = self.host.call(store_fn)
            got = "ok"
        except StoreError as exc:
            result, got = None, type(exc).__name__
        assert got == wanted, f"store: {got}, model: {wanted}"
        return result

    @rule(path=paths, size=sizes, seed=seeds, mode=modes)
    def write(self, path: str, size: int, seed: int, mode: WriteMode) -> None:
        content = data(size, seed)
        info = self.check(
            lambda: self.model.write(path, content, mode),
            lambda s: s.write_bytes(path, content, mode=mode),
        )
        if info is not None:
            assert info.content_hash == blake3.blake3(content).digest()

    @rule(path=paths, size=sizes, seed=seeds, cuts=st.lists(st.integers(0, 3 * CS), max_size=4))
    def upload_in_pieces(self, path: str, size: int, seed: int, cuts: list[int]) -> None:
        content = data(size, seed)
        bounds = sorted({0, size, *(c for c in cuts if c < size)})

        async def run(store: Store) -> Any:
            async with await store.begin_upload(path) as up:
                for lo, hi in itertools.pairwise(bounds):
                    await up.write(content[lo:hi])
                return await up.commit()

        self.check(lambda: self.model.write(path, content, WriteMode.CREATE), run)

    @rule(path=paths, offset=st.integers(0, 3 * CS), length=st.none() | st.integers(0, 2 * CS))
    def read(self, path: str, offset: int, length: int | None) -> None:
        result = self.check(
            lambda: self.model.read(path),
            lambda s: s.read_bytes(path, offset=offset, length=length),
        )
        if result is not None:
            content = self.model.read(path)
            end = None if length is None else offset + length
            assert result == content[offset:end]

    @rule(path=paths, parents=st.booleans())
    def mkdir(self, path: str, parents: bool) -> None:
        self.check(
            lambda: self.model.mkdir(path, parents), lambda s: s.mkdir(path, parents=parents)
        )

    @rule(path=paths, recursive=st.booleans())
    def delete(self, path: str, recursive: bool) -> None:
        expected: list[int] = []
        count = self.check(
            lambda: expected.append(self.model.delete(path, recursive)),
            lambda s: s.delete(path, recursive=recursive),
        )
        if count is not None:
            assert [count] == expected

    @rule(src=paths, dst=paths, overwrite=st.booleans())
    def rename(self, src: str, dst: str, overwrite: bool) -> None:
        self.check(
            lambda: self.model.rename(src, dst, overwrite),
            lambda s: s.rename(src, dst, overwrite=overwrite),
        )

    @rule(path=paths)
    def listing(self, path: str) -> None:
        async def run(store: Store) -> list[tuple[str, bool]]:
            out: list[tuple[str, bool]] = []
            cursor = None
            while True:
                page = await store.list(path, cursor=cursor, limit=2)
                out += [(e.name, e.kind is EntryKind.DIRECTORY) for e in page.entries]
                cursor = page.next_cursor
                if cursor is None:
                    return out

        result = self.check(lambda: self.model.listing(path), run)
        if result is not None:
            assert result == self.model.listing(path)

    @rule()
    def restart(self) -> None:
        self.steps += 1
        self.host.restart()

    @invariant()
    def namespace_matches(self) -> None:
        found = self.host.call(tree)
        assert found == self.model.entries


# The profile's sizes (ci: 200 examples of up to 50 steps) run in ~35 s on 2 cores, within
# the budget: no override.
TestStoreMachine = StoreMachine.TestCase
