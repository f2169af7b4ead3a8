"""Hypothesis strategies for LBRU frames and messages, derived from the attrs definitions so
that a new message class or field is covered without touching the tests."""

from __future__ import annotations

import enum
import types
import typing
from functools import cache

import attrs
from hypothesis import strategies as st

from librorum.protocol.constants import (
    KNOWN_FLAGS,
    MAX_PING_BYTES,
    MAX_SESSION_ID,
    MAX_WINDOW,
    Command,
)
from librorum.protocol.framing import Frame
from librorum.protocol.messages import REPLY_TYPES, REQUEST_TYPES, Message

U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)

#: Integer fields are bounded by their validator; this maps each validator to its range.
_BY_VALIDATOR: dict[str, st.SearchStrategy[object]] = {
    "_u64": U64,
    "_u32": U32,
    "_i64": I64,
    "_opt_u64": st.none() | U64,
    "_versions": st.lists(st.integers(1, 255), min_size=1, max_size=16).map(tuple),
    "_ping_data": st.binary(max_size=MAX_PING_BYTES),
    "_window": st.integers(1, MAX_WINDOW),
    "_list_limit": st.integers(1, 1000),
    "_session": st.integers(1, MAX_SESSION_ID),
    "_error_code": st.integers(0, 0xFFFF),
    "_version": st.integers(1, 255),
    "_u64_values": st.dictionaries(st.text(max_size=10), U64, max_size=4),
    "_requests_limit": st.integers(1, 1000),
    "_log_limit": st.integers(0, 1000),
    "_filter_text": st.none() | st.text(max_size=40),
    "_opt_i64": st.none() | I64,
}

ALL_MESSAGE_TYPES: tuple[type[Message], ...] = tuple(
    sorted({*REQUEST_TYPES.values(), *REPLY_TYPES.values()}, key=lambda c: c.__name__)
)


def _for_type(tp: object) -> st.SearchStrategy[object]:
    if tp is str:
        return st.text(max_size=40)
    if tp is bytes:
        return st.binary(max_size=40)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return I64
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(tp)
    if isinstance(tp, type) and attrs.has(tp):
        return record(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of([_for_type(a) for a in args])
    if tp is type(None):
        return st.none()
    if origin is tuple:
        return st.lists(_for_type(args[0]), max_size=4).map(tuple)
    if origin is dict:
        return st.dictionaries(_for_type(args[0]), _for_type(args[1]), max_size=4)
    msg = f"no strategy for {tp!r}"
    raise NotImplementedError(msg)


@cache
def record(cls: type) -> st.SearchStrategy[object]:
    """A strategy for any valid instance of the attrs class ``cls``."""
    attrs.resolve_types(cls)
    kwargs = {}
    for field in attrs.fields(cls):
        name = getattr(field.validator, "__name__", None)
        kwargs[field.name] = _BY_VALIDATOR[name] if name in _BY_VALIDATOR else _for_type(field.type)
    return st.builds(cls, **kwargs)


def message() -> st.SearchStrategy[Message]:
    """Any valid message of any type."""
    return st.one_of([record(cls) for cls in ALL_MESSAGE_TYPES])  # type: ignore[arg-type]


flags = st.sampled_from([f for f in range(KNOWN_FLAGS + 1) if not f & ~KNOWN_FLAGS])
commands = st.sampled_from(Command)


@st.composite
def frames(draw: st.DrawFn, *, max_payload: int = 256) -> Frame:
    """A structurally valid frame (payload content is arbitrary bytes)."""
    command = draw(commands)
    return Frame(
        command,
        draw(flags),
        draw(U64),
        draw(st.binary(max_size=max_payload)),
    )


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into pieces at arbitrary points (including empty-looking runs)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    pieces, last = [], 0
    for cut in [*cuts, len(data)]:
        pieces.append(data[last:cut])
        last = cut
    return [p for p in pieces if p]
