"""The codec against the golden vectors of ``protocol_spec/vectors`` (spec section 11).

Every valid frame decodes to its stated header and message and re-encodes to the same bytes,
whether fed whole, byte by byte, or followed by part of the next frame. Every malformed input
is rejected with its stated exception and error code, at its stated stage. Lenient payloads
decode to their message and re-encode to the canonical form. Plus cheap consistency checks
between the vectors, the codec's tables and the specification text.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import attrs
import msgpack
import pytest

from librorum.errors import ErrorCode, RemoteProtocolError
from librorum.protocol.constants import HEADER_SIZE, Command, Flags
from librorum.protocol.converter import decode_message, encode_message
from librorum.protocol.framing import CLOSED, NEED_DATA, Frame, FrameDecoder, encode_frame
from librorum.protocol.messages import REPLY_TYPES, REQUEST_TYPES, Message

SPEC_DIR = Path(__file__).resolve().parents[2] / "protocol_spec"
VECTORS = SPEC_DIR / "vectors"
SPEC = SPEC_DIR / "lbru-v1.md"

#: The decoder limits a vector assumes unless it states its own: version 1 negotiated.
DEFAULT_LIMITS = {"expected_version": 1, "max_payload": 1 << 20, "max_control_payload": 64 << 10}


def _load(name: str) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())
    return vectors


FRAMES = _load("frames.json")
MALFORMED = _load("malformed.json")
LENIENT = _load("lenient.json")


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


def _decoder(limits: dict[str, int] | None = None) -> FrameDecoder:
    return FrameDecoder(**(limits or DEFAULT_LIMITS))


def to_json(value: Any) -> Any:
    """The JSON form of spec 11 / vectors/README.md, written independently of the converter:
    every field of a record (defaults included), enums by value, bytes as lowercase hex."""
    if attrs.has(type(value)):
        return {f.name: to_json(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    return value.value


def _frames_of(pieces: list[bytes], limits: dict[str, int] | None = None) -> list[Frame]:
    """Feed pieces one at a time, draining after each, then EOF; the input must end cleanly."""
    dec = _decoder(limits)
    out: list[Frame] = []
    for piece in pieces:
        dec.receive_data(piece)
        out.extend(dec)
    dec.receive_data(b"")
    assert dec.next_frame() is CLOSED
    return out


def _check_frame(frame: Frame, vector: dict[str, Any]) -> None:
    header = vector["header"]
    assert frame.version == header["version"]
    assert frame.command.name == header["command"]
    assert [f.name for f in Flags if f and frame.flags & f] == header["flags"]
    assert frame.flags & ~(Flags.END | Flags.REPLY | Flags.FD) == 0
    assert len(frame.payload) == header["payload_size"]
    assert frame.session_id == header["session_id"]
    if "data_hex" in vector:
        assert frame.command is Command.DATA
        assert bytes(frame.payload).hex() == vector["data_hex"]
    else:
        assert bytes(frame.payload).hex() == vector["payload_hex"]
        message = decode_message(frame.command, frame.flags, frame.payload)
        assert type(message).__name__ == vector["message"]["type"]
        assert to_json(message) == vector["message"]["fields"]


def _reencode(frame: Frame) -> bytes:
    if frame.command is Command.DATA:
        payload = bytes(frame.payload)
    else:
        payload = encode_message(decode_message(frame.command, frame.flags, frame.payload))
    return encode_frame(frame.command, payload, session_id=frame.session_id, flags=frame.flags)


# --- Valid frames ------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", FRAMES, ids=_ids(FRAMES))
def test_frame_whole(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    [frame] = _frames_of([raw])
    _check_frame(frame, vector)
    assert _reencode(frame) == raw


@pytest.mark.parametrize("vector", FRAMES, ids=_ids(FRAMES))
def test_frame_byte_by_byte(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    dec = _decoder()
    for i in range(len(raw) - 1):
        dec.receive_data(raw[i : i + 1])
        assert dec.next_frame() is NEED_DATA
    dec.receive_data(raw[-1:])
    frame = dec.next_frame()
    assert isinstance(frame, Frame)
    _check_frame(frame, vector)
    assert _reencode(frame) == raw
    assert dec.next_frame() is NEED_DATA


@pytest.mark.parametrize("index", range(len(FRAMES)), ids=_ids(FRAMES))
def test_frame_with_trailing_bytes(index: int) -> None:
    """A frame followed by part of the next one: the frame comes out, the rest waits."""
    vector = FRAMES[index]
    raw = bytes.fromhex(vector["hex"])
    following = bytes.fromhex(FRAMES[(index + 1) % len(FRAMES)]["hex"])
    for cut in sorted({1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 1, len(following) - 1}):
        if not 0 < cut < len(following):
            continue
        dec = _decoder()
        dec.receive_data(raw + following[:cut])
        frame = dec.next_frame()
        assert isinstance(frame, Frame)
        _check_frame(frame, vector)
        assert dec.next_frame() is NEED_DATA
        dec.receive_data(following[cut:])
        assert isinstance(dec.next_frame(), Frame)


def test_all_frames_as_one_stream() -> None:
    stream = b"".join(bytes.fromhex(v["hex"]) for v in FRAMES)
    frames = _frames_of([stream])
    assert len(frames) == len(FRAMES)
    for frame, vector in zip(frames, FRAMES, strict=True):
        _check_frame(frame, vector)


def _canonical(value: Any) -> Any:
    """What spec 5.16 says the payload holds for a message value: records as maps of their
    non-default fields in field order, enums by value; bytes stay bytes (msgpack bin)."""
    if attrs.has(type(value)):
        return {
            f.name: _canonical(getattr(value, f.name))
            for f in attrs.fields(type(value))
            if f.default is attrs.NOTHING or getattr(value, f.name) != f.default
        }
    if isinstance(value, tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (bytes, bool, int, str)) or value is None:
        return value
    return value.value


@pytest.mark.parametrize("vector", [v for v in FRAMES if "message" in v], ids=lambda v: v["name"])
def test_payload_is_the_canonical_map(vector: dict[str, Any]) -> None:
    """Read with plain MessagePack, not the converter: one map, keys in field order, every
    field at its default omitted (spec 5.16)."""
    payload = bytes.fromhex(vector["payload_hex"])
    raw = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    message = decode_message(Command[vector["header"]["command"]], _flags(vector), payload)
    expected = _canonical(message)
    assert raw == expected
    assert list(raw) == list(expected)


def _flags(vector: dict[str, Any]) -> int:
    return sum(int(Flags[name]) for name in vector["header"]["flags"])


def test_frame_vector_fields_are_consistent() -> None:
    """hex = header + payload, and the header block says what the 20 bytes say."""
    for vector in FRAMES:
        raw = bytes.fromhex(vector["hex"])
        payload = vector.get("data_hex", vector.get("payload_hex"))
        assert raw[HEADER_SIZE:].hex() == payload, vector["name"]
        assert vector["header"]["payload_size"] == len(raw) - HEADER_SIZE, vector["name"]
        reply = "REPLY" in vector["header"]["flags"]
        expected = "server-to-client" if reply else "client-to-server"
        assert vector["direction"] == expected, vector["name"]


def test_every_command_in_every_direction() -> None:
    """frames.json holds a frame for each (command, direction) that has a message class, DATA
    both ways, ERROR on a request session and on session 0 both ways."""
    seen = {(v["header"]["command"], "REPLY" in v["header"]["flags"]) for v in FRAMES}
    wanted = {(c.name, False) for c in REQUEST_TYPES} | {(c.name, True) for c in REPLY_TYPES}
    wanted |= {("DATA", False), ("DATA", True)}
    assert wanted <= seen, sorted(wanted - seen)
    assert {c.name for c in Command} == {c for c, _ in seen}
    errors = [v for v in FRAMES if v["header"]["command"] == "ERROR"]
    assert any(v["header"]["session_id"] != 0 for v in errors)
    assert {
        ("REPLY" in v["header"]["flags"]) for v in errors if v["header"]["session_id"] == 0
    } == {
        True,
        False,
    }
    shapes = {(v["header"]["command"], tuple(v["header"]["flags"])) for v in FRAMES}
    assert ("WRITE", ("END", "FD")) in shapes
    assert any(v["header"]["session_id"] == 2**64 - 1 for v in FRAMES)
    assert any(v.get("data_hex") == "" and v["header"]["flags"] == ["END"] for v in FRAMES)
    assert any(v.get("payload_hex") == "80" for v in FRAMES)  # an empty message


def test_vector_names_are_unique() -> None:
    for vectors in (FRAMES, MALFORMED, LENIENT):
        names = _ids(vectors)
        assert len(names) == len(set(names))


# --- Malformed inputs --------------------------------------------------------------------------


def _expect(exc: BaseException, vector: dict[str, Any]) -> None:
    assert type(exc).__name__ == vector["error"], exc
    assert isinstance(exc, RemoteProtocolError)
    assert exc.code is ErrorCode[vector["code"]]


@pytest.mark.parametrize("vector", MALFORMED, ids=_ids(MALFORMED))
def test_malformed(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    dec = _decoder(vector.get("limits"))
    dec.receive_data(raw)
    if vector["feed"] == "eof":
        dec.receive_data(b"")
    if vector["stage"] == "payload":
        frame = dec.next_frame()
        assert isinstance(frame, Frame), "a payload-stage vector is a well-formed frame"
        with pytest.raises(RemoteProtocolError) as info:
            decode_message(frame.command, frame.flags, frame.payload)
        _expect(info.value, vector)
        return
    with pytest.raises(RemoteProtocolError) as info:
        dec.next_frame()
    _expect(info.value, vector)
    # The decoder stays failed and raises the same error again.
    with pytest.raises(RemoteProtocolError) as again:
        dec.next_frame()
    assert again.value is info.value


@pytest.mark.parametrize(
    "vector", [v for v in MALFORMED if v["stage"] == "header"], ids=lambda v: v["name"]
)
def test_malformed_header_rejected_from_header_alone(vector: dict[str, Any]) -> None:
    """Spec 3.1: the checks run as soon as the 20 header bytes are in, before any payload;
    fed byte by byte, nothing is reported before the 20th byte."""
    raw = bytes.fromhex(vector["hex"])[:HEADER_SIZE]
    dec = _decoder(vector.get("limits"))
    for byte in raw[:-1]:
        dec.receive_data(bytes([byte]))
        assert dec.next_frame() is NEED_DATA
    dec.receive_data(raw[-1:])
    with pytest.raises(RemoteProtocolError) as info:
        dec.next_frame()
    _expect(info.value, vector)


def test_malformed_covers_the_required_classes() -> None:
    classes = {v["class"] for v in MALFORMED}
    assert {
        "bad-magic",
        "bad-version",
        "unknown-command",
        "reserved-flags",
        "control-too-large",
        "data-too-large",
        "payload-size-max",
        "pre-handshake-limit",
        "truncated-header",
        "truncated-payload",
        "not-a-map",
        "missing-field",
        "unknown-field",
        "wrong-type",
        "invalid-utf8",
        "trailing-bytes",
        "out-of-range",
        "invalid-enum",
        "non-str-key",
        "repeated-key",
    } <= classes
    for vector in MALFORMED:
        assert vector["stage"] in {"header", "frame", "payload"}
        assert vector["feed"] in {"whole", "eof"}
        assert vector["code"] in ErrorCode.__members__


# --- Lenient payloads --------------------------------------------------------------------------


@pytest.mark.parametrize("vector", LENIENT, ids=_ids(LENIENT))
def test_lenient(vector: dict[str, Any]) -> None:
    raw = bytes.fromhex(vector["hex"])
    [frame] = _frames_of([raw])
    message = decode_message(frame.command, frame.flags, frame.payload)
    assert type(message).__name__ == vector["message"]["type"]
    assert to_json(message) == vector["message"]["fields"]
    assert _reencode(frame) == bytes.fromhex(vector["canonical_hex"]) != raw


# --- The vectors and the specification text ----------------------------------------------------


def test_vectors_are_up_to_date() -> None:
    """The committed JSON is exactly what generate.py produces from the codec now."""
    spec = importlib.util.spec_from_file_location("lbru_vectors_generate", VECTORS / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, vectors in module.build().items():
        assert module.render(vectors) == (VECTORS / name).read_text(), name


def _spec_section(number: str) -> str:
    text = SPEC.read_text()
    start = re.search(rf"^#+ {re.escape(number)}\.? ", text, re.MULTILINE)
    assert start is not None, f"section {number} not found"
    following = re.search(r"^#+ \d+(\.\d+)*\.? ", text[start.end() :], re.MULTILINE)
    return text[start.start() : start.end() + following.start() if following else len(text)]


def _table_rows(section: str) -> list[list[str]]:
    return [
        [cell.strip().strip("`") for cell in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("|") and not re.match(r"^\|[\s:|-]+\|$", line)
    ]


def test_spec_error_table_lists_every_code() -> None:
    rows = _table_rows(_spec_section("7.2"))
    table = {row[1]: row[0] for row in rows if re.fullmatch(r"0x[0-9A-F]{4}", row[0])}
    assert table == {code.name: f"0x{code:04X}" for code in ErrorCode}


def test_spec_command_table_lists_every_command() -> None:
    rows = _table_rows(_spec_section("5"))
    table = {row[1]: row[0] for row in rows if re.fullmatch(r"0x[0-9A-F]{2}", row[0])}
    assert table == {command.name: f"0x{command:02X}" for command in Command}


def test_spec_message_tables_name_every_message() -> None:
    text = SPEC.read_text()
    for cls in {*REQUEST_TYPES.values(), *REPLY_TYPES.values()}:
        assert f"`{cls.__name__}`" in text, cls.__name__
        for field in attrs.fields(cls):
            assert f"`{field.name}`" in text, f"{cls.__name__}.{field.name}"


def _message_classes() -> set[type[Message]]:
    return {*REQUEST_TYPES.values(), *REPLY_TYPES.values()}


def test_every_message_class_has_a_vector() -> None:
    names = {v["message"]["type"] for v in FRAMES if "message" in v}
    assert names == {cls.__name__ for cls in _message_classes()}
