"""Typed messages and the converter: every message type round-trips, and every way a payload
can be wrong surfaces as MalformedPayloadError."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, strategies as st

from librorum.errors import LocalProtocolError, MalformedPayloadError
from librorum.protocol.constants import Command, EntryKind, Flags, WriteMode
from librorum.protocol.converter import (
    command_of,
    decode_message,
    decode_payload,
    encode_message,
    message_type,
)
from librorum.protocol.messages import (
    COMMAND_OF,
    REPLY_TYPES,
    REQUEST_TYPES,
    FileInfo,
    FileStat,
    FileStatReply,
    FileWrite,
    Hello,
    HelloReply,
    Message,
    NodeStatus,
    NodeStatusReply,
    StoreFigures,
    WindowUpdate,
)

from .strategies import ALL_MESSAGE_TYPES, record


@pytest.mark.parametrize("cls", ALL_MESSAGE_TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_every_message_type_round_trips(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(record(cls))
    payload = encode_message(message)
    assert decode_payload(payload, cls) == message
    # Encoding is deterministic: the same message always gives the same bytes.
    assert encode_message(decode_payload(payload, cls)) == payload


@given(st.binary(max_size=512), st.sampled_from(ALL_MESSAGE_TYPES))
def test_any_payload_decodes_or_raises_malformed(payload: bytes, cls: type[Message]) -> None:
    try:
        message = decode_payload(payload, cls)
    except MalformedPayloadError:
        return
    assert isinstance(message, cls)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    ),
    st.sampled_from(ALL_MESSAGE_TYPES),
)
def test_any_msgpack_value_decodes_or_raises_malformed(value: object, cls: type[Message]) -> None:
    try:
        message = decode_payload(msgpack.packb(value), cls)
    except MalformedPayloadError:
        return
    assert isinstance(message, cls)


def test_registry_is_complete_and_consistent() -> None:
    # Every command but DATA has a request or reply message; DATA is raw bytes both ways.
    for command in Command:
        has = command in REQUEST_TYPES or command in REPLY_TYPES
        assert has == (command is not Command.DATA), command
    for cls, (command, is_reply) in COMMAND_OF.items():
        table = REPLY_TYPES if is_reply else REQUEST_TYPES
        assert table[command] is cls
        assert message_type(command, Flags.REPLY if is_reply else 0) is cls
        assert command_of(cls.__new__(cls)) == (command, is_reply)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("command", "flags"),
    [(Command.DATA, 0), (Command.DATA, Flags.REPLY), (Command.GOAWAY, 0)],
)
def test_commands_without_a_message_in_that_direction(command: Command, flags: int) -> None:
    with pytest.raises(MalformedPayloadError):
        decode_message(command, flags, b"\x80")


@pytest.mark.parametrize(
    ("cls", "value"),
    [
        (FileStat, {"path": 5}),
        (FileStat, {"path": b"/a"}),
        (FileStat, {}),
        (FileStat, {"path": "/a", "extra": 1}),
        (FileStat, ["/a"]),
        (FileStat, "/a"),
        (WindowUpdate, {"increment": True}),
        (WindowUpdate, {"increment": 0}),
        (WindowUpdate, {"increment": 1.0}),
        (WindowUpdate, {"increment": "1"}),
        (Hello, {"versions": b"\x01", "max_payload": 1 << 20, "initial_window": 1}),
        (Hello, {"versions": [], "max_payload": 1 << 20, "initial_window": 1}),
        (Hello, {"versions": [0], "max_payload": 1 << 20, "initial_window": 1}),
        (Hello, {"versions": [1], "max_payload": -1, "initial_window": 1}),
        (Hello, {"versions": [1], "max_payload": 2**32, "initial_window": 1}),
        (FileWrite, {"path": "/a", "mode": "append"}),
        (FileWrite, {"path": "/a", "mode": ["create"]}),
        (FileWrite, {"path": "/a", "size": -1}),
        (FileWrite, {"path": "/a", "offset": None}),
        (NodeStatus, {"x": 1}),
        # Found by fuzz_payload: a nested record that is not a map, and binary map keys
        # (whose cattrs error message itself used to crash).
        (FileStatReply, {"info": "not a map"}),
        (FileStatReply, {"info": [1, 2]}),
        (FileStat, {b"path": "/a"}),
        (NodeStatus, {b"x": 1, "y": 2}),
    ],
)
def test_strict_types(cls: type[Message], value: object) -> None:
    with pytest.raises(MalformedPayloadError):
        decode_payload(msgpack.packb(value), cls)


VALID_REPLIES: dict[type[Message], Message] = {
    HelloReply: HelloReply(1, 1 << 20, 4 << 20, 128, 8, 1 << 40),
    NodeStatusReply: NodeStatusReply(
        "0.1.0", "node", 1, {"uds": 1}, 2, 3, 4, StoreFigures(1, 1, 3, 3, 1, 1 << 30)
    ),
}


@pytest.mark.parametrize(
    ("cls", "changes", "words"),
    [
        (HelloReply, {"version": 0}, "protocol version in 1..255"),
        (HelloReply, {"version": 256}, "protocol version in 1..255"),
        (NodeStatusReply, {"connections": {"uds": -1}}, "values must be in 0..2**64-1"),
        (NodeStatusReply, {"connections": [["uds", 1]]}, "expected a map, got list"),
    ],
    ids=["version-0", "version-256", "negative-count", "not-a-map"],
)
def test_fields_of_a_whole_reply_are_checked(
    cls: type[Message], changes: dict[str, object], words: str
) -> None:
    valid = msgpack.unpackb(encode_message(VALID_REPLIES[cls]))
    assert decode_payload(msgpack.packb(valid), cls) == VALID_REPLIES[cls]
    with pytest.raises(MalformedPayloadError, match=words.replace("*", "\\*")):
        decode_payload(msgpack.packb({**valid, **changes}), cls)


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # no map at all
        b"\xc1",  # the one byte msgpack never uses
        b"\x81\xa4path\xa2/a\x00",  # trailing bytes
        b"\x81\xa4path\xa2\xff\xfe",  # invalid UTF-8
        b"\x81\x01\xa2/a",  # integer key
        b"\x81\xa4path",  # truncated
        b"\x91" * 5000 + b"\x80",  # deep nesting
    ],
)
def test_malformed_bytes(payload: bytes) -> None:
    with pytest.raises(MalformedPayloadError):
        decode_payload(payload, FileStat)


def test_defaults_are_omitted_and_order_is_field_order() -> None:
    assert encode_message(FileStat("/a")) == b"\x81\xa4path\xa2/a"
    assert encode_message(NodeStatus()) == b"\x80"
    write = FileWrite("/a", WriteMode.EXCLUSIVE, size=3)
    assert msgpack.unpackb(encode_message(write)) == {"path": "/a", "mode": "exclusive", "size": 3}
    assert list(msgpack.unpackb(encode_message(write))) == ["path", "mode", "size"]


def test_validators_reject_out_of_range_values_in_code_too() -> None:
    with pytest.raises(ValueError, match="increment"):
        WindowUpdate(0)
    with pytest.raises(ValueError, match="size"):
        FileInfo("/a", EntryKind.FILE, -1, 0, 0)


def test_unencodable_value_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_message(FileStat(object()))  # type: ignore[arg-type]
