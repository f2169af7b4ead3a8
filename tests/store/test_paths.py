"""The path rules (librorum/store/paths.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from librorum.errors import InvalidPathError
from librorum.protocol.constants import MAX_NAME_BYTES, MAX_PATH_BYTES
from librorum.store.paths import components, is_within, join, normalize, split


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/", "/"),
        ("", "/"),  # spec 5.1: the root, a leading "/" being optional
        ("a", "/a"),
        ("/a", "/a"),
        ("a/b", "/a/b"),
        ("/a b/ü/日本", "/a b/ü/日本"),
        ("/.a/..b/...", "/.a/..b/..."),
        ("/a\\b", "/a\\b"),
    ],
)
def test_normal_forms(raw: str, normal: str) -> None:
    assert normalize(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        "a/",  # spec 5.1: no trailing "/" except for the root
        "/a/",
        "/a/b/",
        "//",
        "a//b",
        "/a//",
        "//a",
        "/./a",
        "/a/..",
        "..",
        ".",
        "/a/./b",
        "/a\x00b",
        "/\udc80",
        "/" + "x" * (MAX_NAME_BYTES + 1),
        "/" + "é" * (MAX_NAME_BYTES // 2 + 1),
        ("/" + "x" * 200) * (MAX_PATH_BYTES // 200 + 1),
    ],
)
def test_rejected(raw: str) -> None:
    with pytest.raises(InvalidPathError):
        normalize(raw)


def test_limits_are_inclusive() -> None:
    name = "x" * MAX_NAME_BYTES
    assert normalize(name) == "/" + name
    long = "/".join(["y" * 254] * 16)  # 16 * 255 = 4080 bytes with the slashes
    assert len(normalize(long).encode()) <= MAX_PATH_BYTES


names = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="/\x00"),
    min_size=1,
    max_size=20,
).filter(lambda s: s not in (".", ".."))


@given(st.lists(names, min_size=0, max_size=8), st.booleans(), st.booleans())
def test_normalize_is_idempotent_and_splits_back(parts: list[str], lead: bool, trail: bool) -> None:
    raw = ("/" if lead else "") + "/".join(parts)
    if trail and parts:
        with pytest.raises(InvalidPathError):
            normalize(raw + "/")
    normal = normalize(raw)
    assert normalize(normal) == normal
    assert components(normal) == parts
    if parts:
        parent, name = split(normal)
        assert join(parent, name) == normal
        assert is_within(normal, parent)
        assert not is_within(parent, normal)


@given(st.text(max_size=30))
def test_anything_is_accepted_or_rejected_cleanly(raw: str) -> None:
    try:
        normal = normalize(raw)
    except InvalidPathError:
        return
    assert normal.startswith("/")
    assert "//" not in normal
    assert "\x00" not in normal
    assert all(c not in (".", "..", "") for c in components(normal))
