"""Operation histories for crash tests, and the checks that decide whether the state found
after a crash is one that the history allows.

A crash test logs every operation's invocation and, when the client got one, its answer:
``OK`` (acknowledged: its effect must survive), ``FAILED`` (the server refused it: no
effect), or ``UNKNOWN`` (the connection died with it in flight: it may or may not have
happened, but never partly). After the crash the namespace is observed and compared with the
states the history allows. Two shapes of history make that check exact:

* :class:`SubtreeModel`: one sequential actor owns a subtree. Renames and recursive deletes
  change many paths at once, so a per-path view cannot say what a whole tree must look like;
  with one owner, the model knows the exact tree after every acknowledged operation, at most
  one operation is in flight at a crash, and the tree found afterwards must equal the model
  with that operation either wholly applied or not at all.
* :class:`RegisterModel`: one path written and deleted by many actors at once (a register).
  The value found must be the one written by an operation that no acknowledged operation
  certainly followed: one whose invocation came after that operation's acknowledgement
  (real-time order; an operation in flight at the crash may have taken effect at any point
  after its invocation, or never).

Content is compared by size and BLAKE3 digest (the store's content hash), so a torn or mixed
file never equals an allowed state.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

import attrs
import blake3


@attrs.frozen
class File:
    """A file's content, by size and BLAKE3 digest."""

    size: int
    digest: bytes

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> File:
        return cls(len(data), blake3.blake3(data).digest())

    def __str__(self) -> str:
        return f"file({self.size} B, {self.digest[:6].hex()})"


@attrs.frozen
class Dir:
    """A directory."""

    def __str__(self) -> str:
        return "dir"


DIR = Dir()
Node = File | Dir
#: A namespace (or a part of it): absolute path -> node. An absent path has no key.
Tree = dict[str, Node]
#: What one operation does to a tree: path -> its new node, or ``None`` for removed.
Patch = dict[str, Node | None]


class Outcome(enum.Enum):
    PENDING = "pending"
    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"


@attrs.define(eq=False)
class Op:
    """One operation of a history, and what became of it."""

    seq: int
    actor: str
    kind: str
    paths: tuple[str, ...]
    detail: str
    transport: str
    invoked: float
    patch: Patch
    acked: float | None = None
    outcome: Outcome = Outcome.PENDING
    error: str | None = None

    def ok(self, now: float) -> None:
        self.outcome = Outcome.OK
        self.acked = now

    def failed(self, now: float, error: BaseException) -> None:
        self.outcome = Outcome.FAILED
        self.acked = now
        self.error = f"{type(error).__name__}: {error}"

    def unknown(self, error: BaseException) -> None:
        self.outcome = Outcome.UNKNOWN
        self.error = f"{type(error).__name__}: {error}"

    def __str__(self) -> str:
        acked = "-" if self.acked is None else f"{self.acked:.3f}"
        error = f" ({self.error})" if self.error else ""
        return (
            f"#{self.seq} {self.actor} {self.kind} {self.detail} via {self.transport}"
            f" [{self.invoked:.3f} .. {acked}] {self.outcome.value}{error}"
        )


def apply(tree: Mapping[str, Node], patch: Patch) -> Tree:
    """``tree`` with ``patch`` applied (a new dict)."""
    result = dict(tree)
    for path, node in patch.items():
        if node is None:
            result.pop(path, None)
        else:
            result[path] = node
    return result


def subtree(tree: Mapping[str, Node], path: str) -> list[str]:
    """``path`` and every path below it that ``tree`` holds."""
    prefix = path + "/"
    return [p for p in tree if p == path or p.startswith(prefix)]


def parent(path: str) -> str:
    return path.rpartition("/")[0] or "/"


# --- Patches: what each operation does, computed from the exact state it applies to --------


def write_patch(path: str, content: File) -> Patch:
    return {path: content}


def mkdir_patch(path: str) -> Patch:
    return {path: DIR}


def delete_patch(tree: Mapping[str, Node], path: str) -> Patch:
    """A delete (recursive for a directory) of ``path`` in ``tree``."""
    return dict.fromkeys(subtree(tree, path))


def rename_patch(tree: Mapping[str, Node], src: str, dst: str) -> Patch:
    """A rename of ``src`` (and everything below it) to ``dst``; a file at ``dst`` is
    replaced (the caller passes overwrite when it means that)."""
    moved = subtree(tree, src)
    patch: Patch = dict.fromkeys(moved)
    for path in moved:
        patch[dst + path[len(src) :]] = tree[path]
    return patch


# --- The checks --------------------------------------------------------------------------


def describe_difference(found: Mapping[str, Node], expected: Mapping[str, Node]) -> str:
    """The paths where two trees differ, one per line."""
    lines = []
    for path in sorted(set(found) | set(expected)):
        have, want = found.get(path), expected.get(path)
        if have != want:
            lines.append(f"  {path}: found {have or 'nothing'}, allowed {want or 'nothing'}")
    return "\n".join(lines)


@attrs.define
class Resolution:
    """What checking one observation against a model found."""

    #: Descriptions of violations (empty when the observation is allowed).
    problems: list[str] = attrs.field(factory=list)
    #: Acknowledged operations whose effect the observation confirmed.
    acked_checked: int = 0
    #: Operations in flight at the crash that the observation settled.
    in_flight: int = 0
    #: Of those, how many had taken effect.
    in_flight_applied: int = 0


@attrs.define
class SubtreeModel:
    """The exact state of a subtree owned by one sequential actor (see the module docstring).

    Use: :meth:`invoke` an operation with the patch computed from :attr:`tree`; report its
    answer with :meth:`settle`; after a crash, :meth:`resolve` an observation of the
    subtree, which then becomes the model's state.
    """

    root: str
    tree: Tree
    #: The operation whose outcome is unknown (in flight at the crash).
    in_doubt: Op | None = None
    #: Operations since the last resolution, for reports.
    ops: list[Op] = attrs.field(factory=list)
    acked: int = 0

    def invoke(self, op: Op) -> None:
        assert self.in_doubt is None, "no operation may follow one whose outcome is unknown"
        self.ops.append(op)

    def settle(self, op: Op) -> None:
        """Take in the answer recorded on ``op``."""
        if op.outcome is Outcome.OK:
            self.tree = apply(self.tree, op.patch)
            self.acked += bool(op.patch)  # a read changes nothing to check
        elif op.outcome is Outcome.UNKNOWN:
            self.in_doubt = op

    def allowed(self) -> list[Tree]:
        """The states the history allows now."""
        if self.in_doubt is None:
            return [self.tree]
        return [self.tree, apply(self.tree, self.in_doubt.patch)]

    def resolve(self, found: Tree) -> Resolution:
        """Check ``found`` (the whole subtree as observed) and adopt it as the state."""
        result = Resolution(acked_checked=self.acked)
        allowed = self.allowed()
        if self.in_doubt is not None:
            result.in_flight = 1
        if found in allowed:
            # Ambiguous when the operation changed nothing (the same content written again).
            result.in_flight_applied = int(len(allowed) == 2 and found != allowed[0])
        else:
            touched = {p for op in self.ops for p in op.paths}
            history = "\n".join(
                f"  {op}" for op in self.ops if any(_related(p, touched) for p in op.paths)
            )
            options = "\n".join(
                f" allowed state {i + 1}:\n{describe_difference(found, tree)}"
                for i, tree in enumerate(allowed)
            )
            result.problems.append(
                f"{self.root}: the state found is not one the history allows\n{options}\n"
                f" history since the last check:\n{history}"
            )
        self.tree = dict(found)
        self.in_doubt = None
        self.ops = []
        self.acked = 0
        return result


def _related(path: str, touched: Iterable[str]) -> bool:
    return any(path == t or path.startswith(t + "/") or t.startswith(path + "/") for t in touched)


@attrs.define
class RegisterModel:
    """One path written and deleted concurrently by many actors (see the module docstring).
    Each operation's patch is ``{path: File}`` (a write) or ``{path: None}`` (a delete)."""

    path: str
    value: Node | None
    ops: list[Op] = attrs.field(factory=list)

    def invoke(self, op: Op) -> None:
        assert set(op.patch) == {self.path}, op
        self.ops.append(op)

    def allowed(self) -> list[Node | None]:
        """The values the history allows now (an unordered list; duplicates possible)."""
        effective = [op for op in self.ops if op.outcome in (Outcome.OK, Outcome.UNKNOWN)]
        acked = [op for op in effective if op.outcome is Outcome.OK]
        values: list[Node | None] = [] if acked else [self.value]
        # An operation can be the last to take effect unless an acknowledged one began after
        # it was acknowledged (that one certainly took effect later).
        values += [
            op.patch[self.path]
            for op in effective
            if op.acked is None or not any(other.invoked > op.acked for other in acked)
        ]
        return values

    def resolve(self, found: Node | None) -> Resolution:
        result = Resolution(
            acked_checked=sum(op.outcome is Outcome.OK for op in self.ops),
            in_flight=sum(op.outcome is Outcome.UNKNOWN for op in self.ops),
        )
        allowed = self.allowed()
        if found not in allowed:
            history = "\n".join(f"  {op}" for op in self.ops)
            choices = ", ".join(sorted({str(v or "nothing") for v in allowed}))
            result.problems.append(
                f"{self.path}: found {found or 'nothing'}, allowed: {choices}\n"
                f" value before: {self.value or 'nothing'}\n history:\n{history}"
            )
        else:
            result.in_flight_applied = sum(
                op.outcome is Outcome.UNKNOWN and op.patch[self.path] == found for op in self.ops
            )
        self.value = found
        self.ops = []
        return result
