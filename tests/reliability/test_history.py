"""The crash tests' history checks (tests/reliability/history.py): they must accept exactly
the states a history allows, or a crash test proves nothing."""

from __future__ import annotations

from tests.reliability.history import (
    DIR,
    File,
    Op,
    Patch,
    RegisterModel,
    SubtreeModel,
    Tree,
    delete_patch,
    mkdir_patch,
    rename_patch,
    write_patch,
)

OLD = File.of(b"old")
NEW = File.of(b"new content")
TORN = File.of(b"new")


def op(patch: Patch, invoked: float = 0.0, seq: int = 1) -> Op:
    return Op(seq, "a", "op", tuple(patch), "", "local", invoked, patch)


def model(tree: Tree) -> SubtreeModel:
    return SubtreeModel("/w", {"/w": DIR, **tree})


def test_an_acknowledged_write_must_be_found() -> None:
    m = model({"/w/f": OLD})
    write = op(write_patch("/w/f", NEW))
    m.invoke(write)
    write.ok(1.0)
    m.settle(write)
    assert not m.resolve({"/w": DIR, "/w/f": NEW}).problems
    m = model({"/w/f": OLD})
    m.invoke(write)
    m.settle(write)
    result = m.resolve({"/w": DIR, "/w/f": OLD})
    assert len(result.problems) == 1
    assert "/w/f: found file(3 B" in result.problems[0]


def test_a_write_in_doubt_is_all_or_nothing() -> None:
    for found, applied in ((OLD, 0), (NEW, 1), (TORN, None)):
        m = model({"/w/f": OLD})
        write = op(write_patch("/w/f", NEW))
        m.invoke(write)
        write.unknown(ConnectionError("killed"))
        m.settle(write)
        result = m.resolve({"/w": DIR, "/w/f": found})
        assert result.in_flight == 1
        if applied is None:
            assert result.problems  # a torn file is never allowed
        else:
            assert not result.problems
            assert result.in_flight_applied == applied


def test_a_refused_operation_has_no_effect() -> None:
    m = model({})
    mkdir = op(mkdir_patch("/w/d"))
    m.invoke(mkdir)
    mkdir.failed(1.0, FileExistsError("exists"))
    m.settle(mkdir)
    assert not m.resolve({"/w": DIR}).problems
    assert m.resolve({"/w": DIR, "/w/d": DIR}).problems


def test_rename_and_recursive_delete_move_whole_subtrees() -> None:
    tree: Tree = {"/w": DIR, "/w/d": DIR, "/w/d/f": OLD, "/w/d/e": DIR, "/w/d/e/g": NEW}
    moved = rename_patch(tree, "/w/d", "/w/x")
    m = model(tree)
    rename = op(moved)
    m.invoke(rename)
    rename.ok(1.0)
    m.settle(rename)
    assert m.tree == {"/w": DIR, "/w/x": DIR, "/w/x/f": OLD, "/w/x/e": DIR, "/w/x/e/g": NEW}
    after = dict(m.tree)
    delete = op(delete_patch(after, "/w/x/e"), seq=2)
    delete.unknown(ConnectionError("killed"))
    for found, allowed in (
        ({"/w": DIR, "/w/x": DIR, "/w/x/f": OLD}, True),
        (after, True),
        # Half a recursive delete is neither state.
        ({"/w": DIR, "/w/x": DIR, "/w/x/f": OLD, "/w/x/e": DIR}, False),
    ):
        m = SubtreeModel("/w", after)
        m.invoke(delete)
        m.settle(delete)
        assert bool(m.resolve(found).problems) is not allowed


def test_rename_over_a_file_replaces_it() -> None:
    tree: Tree = {"/w": DIR, "/w/a": NEW, "/w/b": OLD}
    assert rename_patch(tree, "/w/a", "/w/b") == {"/w/a": None, "/w/b": NEW}


def register(*ops: Op, value: File | None = OLD) -> RegisterModel:
    r = RegisterModel("/s", value)
    for o in ops:
        r.invoke(o)
    return r


def write(content: File | None, invoked: float, acked: float | None, seq: int = 1) -> Op:
    o = op({"/s": content}, invoked, seq)
    if acked is None:
        o.unknown(ConnectionError("killed"))
    else:
        o.ok(acked)
    return o


def test_register_sequential_writes_leave_the_last() -> None:
    first, second = write(NEW, 0, 1), write(TORN, 2, 3, seq=2)
    assert register(first, second).allowed() == [TORN]
    assert register(first, second).resolve(NEW).problems


def test_register_concurrent_writes_leave_either() -> None:
    first, second = write(NEW, 0, 2), write(TORN, 1, 3, seq=2)
    assert sorted(map(str, register(first, second).allowed())) == sorted([str(NEW), str(TORN)])


def test_register_write_in_doubt_may_or_may_not_have_happened() -> None:
    acked, doubt = write(NEW, 0, 1), write(None, 2, None, seq=2)
    r = register(acked, doubt)
    assert r.allowed() == [NEW, None]
    result = r.resolve(None)
    assert not result.problems
    assert result.in_flight == result.in_flight_applied == 1
    # An operation in doubt invoked before an acknowledged one may still have come last.
    assert register(write(None, 0, None), write(NEW, 1, 2, seq=2)).allowed() == [None, NEW]


def test_register_keeps_its_value_only_without_acknowledged_writes() -> None:
    refused = op({"/s": None})
    refused.failed(1.0, FileNotFoundError("gone"))
    assert register(refused).allowed() == [OLD]
    assert register(write(NEW, 0, None)).allowed() == [OLD, NEW]
    assert OLD not in register(write(NEW, 0, 1)).allowed()
