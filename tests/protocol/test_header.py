"""The 20-byte header: round trip over the full field ranges, the check order, and the
guarantee that any 20 bytes give a header or a RemoteProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from librorum.errors import (
    BadFlagsError,
    BadMagicError,
    FrameTooLargeError,
    LocalProtocolError,
    RemoteProtocolError,
    UnknownCommandError,
    UnsupportedVersionError,
)
from librorum.protocol.constants import (
    HEADER_SIZE,
    KNOWN_FLAGS,
    MAGIC,
    MAX_CONTROL_PAYLOAD,
    Command,
    Flags,
)
from librorum.protocol.header import HEADER, Header, pack_header

from .strategies import U32, U64, commands, flags

NO_LIMIT = {"max_payload": 2**32 - 1, "max_control_payload": 2**32 - 1}


def raw_header(
    magic: bytes = MAGIC,
    version: int = 1,
    command: int = Command.PING,
    flag_bits: int = 0,
    size: int = 0,
    session: int = 0,
) -> bytes:
    return struct.pack("!4sBBHIQ", magic, version, command, flag_bits, size, session)


def test_layout_is_the_specs() -> None:
    assert HEADER.size == HEADER_SIZE == 20
    data = Header(Command.WRITE, Flags.END, 0x01020304, 0x05060708090A0B0C).pack()
    assert data == bytes.fromhex("4c425255010100010102030405060708090a0b0c")


@given(
    command=commands,
    flag_bits=flags,
    size=U32,
    session=U64,
    version=st.integers(0, 255),
)
def test_round_trip_full_ranges(
    command: Command, flag_bits: int, size: int, session: int, version: int
) -> None:
    header = Header(command, flag_bits, size, session, version)
    data = header.pack()
    assert len(data) == HEADER_SIZE
    assert Header.unpack(data, expected_version=version, **NO_LIMIT) == header


@given(st.binary(min_size=0, max_size=40), st.integers(0, 255))
def test_any_bytes_give_a_header_or_the_protocol_error(data: bytes, version: int) -> None:
    try:
        header = Header.unpack(data, expected_version=version)
    except RemoteProtocolError:
        return
    # Whatever is accepted re-encodes to the same 20 bytes.
    assert header.pack() == data[:HEADER_SIZE]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        # Each row breaks one rule and all the later ones: the first check must win.
        (raw_header(magic=b"LBRV", version=9, command=0xFF, flag_bits=0x8000), BadMagicError),
        (
            raw_header(version=2, command=0xFF, flag_bits=0x8000, size=2**32 - 1),
            UnsupportedVersionError,
        ),
        (raw_header(command=0x00, flag_bits=0x8000, size=2**32 - 1), UnknownCommandError),
        (raw_header(command=0x7F), UnknownCommandError),
        (raw_header(flag_bits=0x0008, size=2**32 - 1), BadFlagsError),
        (raw_header(size=MAX_CONTROL_PAYLOAD + 1), FrameTooLargeError),
        (raw_header(command=Command.DATA, size=(1 << 20) + 1), FrameTooLargeError),
        (raw_header(size=2**32 - 1), FrameTooLargeError),
        (raw_header()[:19], RemoteProtocolError),
    ],
)
def test_check_order(data: bytes, error: type[RemoteProtocolError]) -> None:
    with pytest.raises(error) as info:
        Header.unpack(data)
    assert type(info.value) is error
    assert info.value.code == error.code


def test_limits_by_command() -> None:
    # DATA may use the whole max_payload; control frames only the control limit.
    Header.unpack(raw_header(command=Command.DATA, size=1 << 20))
    Header.unpack(raw_header(size=MAX_CONTROL_PAYLOAD))
    with pytest.raises(FrameTooLargeError):
        Header.unpack(raw_header(size=MAX_CONTROL_PAYLOAD + 1))


@given(flag_bits=st.integers(0, 0xFFFF).filter(lambda f: f & ~KNOWN_FLAGS))
def test_reserved_flags_rejected_both_ways(flag_bits: int) -> None:
    with pytest.raises(BadFlagsError):
        Header.unpack(raw_header(flag_bits=flag_bits))
    with pytest.raises(LocalProtocolError):
        pack_header(Command.PING, flag_bits, 0, 0)


@pytest.mark.parametrize(
    "fields",
    [
        {"payload_size": 2**32},
        {"payload_size": -1},
        {"session_id": 2**64},
        {"session_id": -1},
        {"version": 256},
        {"command": 256},
    ],
)
def test_pack_rejects_out_of_range(fields: dict[str, int]) -> None:
    args = {"command": Command.PING, "flags": 0, "payload_size": 0, "session_id": 0, "version": 1}
    args.update(fields)
    with pytest.raises(LocalProtocolError):
        pack_header(**args)
