"""The incremental frame decoder and the encoders.

Every valid input is fed whole, byte by byte, and in random pieces (h11's discipline); any
input at all must give frames or a RemoteProtocolError, nothing else."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterable

import pytest
from hypothesis import given, strategies as st

from librorum.errors import (
    BadMagicError,
    FrameTooLargeError,
    LocalProtocolError,
    RemoteProtocolError,
    UnsupportedVersionError,
)
from librorum.protocol.constants import (
    HEADER_SIZE,
    MAX_CONTROL_PAYLOAD,
    MAX_HANDSHAKE_PAYLOAD,
    Command,
    Flags,
)
from librorum.protocol.framing import (
    CLOSED,
    LARGE_PAYLOAD,
    NEED_DATA,
    Frame,
    FrameDecoder,
    encode_frame,
    encode_frame_parts,
    encode_frames,
)

from .strategies import frames, splits

LIMITS = {"expected_version": 1, "max_payload": 1 << 20, "max_control_payload": MAX_CONTROL_PAYLOAD}


def decoder(large_payload: int = LARGE_PAYLOAD) -> FrameDecoder:
    return FrameDecoder(**LIMITS, large_payload=large_payload)


def decode_all(
    pieces: Iterable[bytes], *, eof: bool = True, large_payload: int = LARGE_PAYLOAD
) -> list[Frame]:
    """Feed pieces one at a time, draining after each, as a transport would."""
    dec = decoder(large_payload)
    out: list[Frame] = []
    for piece in pieces:
        dec.receive_data(piece)
        out.extend(dec)
    if eof:
        dec.receive_data(b"")
        while (frame := dec.next_frame()) is not CLOSED:
            assert frame is not NEED_DATA
            out.append(frame)
    return out


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@given(st.lists(frames(), max_size=8))
def test_whole_byte_by_byte_and_with_trailing_bytes(batch: list[Frame]) -> None:
    data = encode_frames(batch)
    assert decode_all([data]) == batch
    assert decode_all(byte_by_byte(data)) == batch
    # Trailing bytes of an incomplete next frame: the complete ones come out, then NEED_DATA.
    trailing = encode_frame(Command.PING, b"\x80", session_id=1)[:-1]
    dec = decoder()
    dec.receive_data(data + trailing)
    assert list(dec) == batch
    assert dec.next_frame() is NEED_DATA
    assert dec.buffered == len(trailing)


@given(st.data(), st.lists(frames(), min_size=1, max_size=8), st.sampled_from([0, 1, 7, 64]))
def test_any_split_yields_the_same_frames(
    data: st.DataObject, batch: list[Frame], large: int
) -> None:
    # `large` moves the threshold of the separate payload buffer so both paths, and the
    # hand-over between them in the middle of a read, are exercised by small frames.
    encoded = encode_frames(batch)
    assert decode_all(data.draw(splits(encoded)), large_payload=large) == batch
    assert decode_all(byte_by_byte(encoded), large_payload=large) == batch


def test_large_payloads_whole_split_and_bytewise() -> None:
    big = bytes(range(256)) * 1024  # 256 KiB, over LARGE_PAYLOAD
    batch = [Frame(Command.DATA, 0, 1, big), Frame(Command.PING, 0, 2, b"\x80")] * 3
    encoded = encode_frames(batch)
    assert decode_all([encoded]) == batch
    for step in (1000, 65536, 1 << 20):
        pieces = [encoded[i : i + step] for i in range(0, len(encoded), step)]
        assert decode_all(pieces) == batch
    # The large payload is handed over as the decoder's own buffer, not copied again.
    dec = decoder()
    dec.receive_data(encoded[:100])
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(encoded[100:])
    first = dec.next_frame()
    assert isinstance(first, Frame)
    assert type(first.payload) is bytearray
    assert first.payload == big


@given(
    st.lists(frames(), min_size=1, max_size=8),
    st.sampled_from([0, 1, 7, 64, LARGE_PAYLOAD]),
    st.booleans(),
)
def test_whole_frames_one_per_feed_are_handed_over_uncopied(
    batch: list[Frame], large: int, mutable: bool
) -> None:
    # As a WebSocket transport feeds it: one whole frame per receive_data. A large frame that
    # ends the buffer takes the buffer itself as its payload; the decoder must own nothing of
    # it afterwards (changing the payload changes nothing that follows).
    dec = decoder(large)
    out: list[Frame] = []
    for frame in batch:
        encoded = encode_frame(
            frame.command, frame.payload, session_id=frame.session_id, flags=frame.flags
        )
        dec.receive_data(bytearray(encoded) if mutable else encoded)
        [got] = list(dec)
        assert dec.buffered == 0
        assert dec.next_frame() is NEED_DATA
        out.append(Frame(got.command, got.flags, got.session_id, bytes(got.payload), got.version))
        if len(got.payload) >= large and isinstance(got.payload, bytearray):
            got.payload[:] = b"\xff" * len(got.payload)
    assert out == batch


def test_a_large_frame_fed_whole_is_not_copied_out_of_the_buffer() -> None:
    big = os.urandom(LARGE_PAYLOAD * 2)
    dec = decoder()
    dec.receive_data(encode_frame(Command.DATA, big, session_id=1))
    frame = dec.next_frame()
    assert isinstance(frame, Frame)
    assert type(frame.payload) is bytearray
    assert frame.payload == big
    # The next frame, whole or in pieces, starts from a fresh buffer.
    tail = encode_frame(Command.DATA, big[:100], session_id=2)
    dec.receive_data(tail[:30])
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(tail[30:])
    second = dec.next_frame()
    assert isinstance(second, Frame)
    assert second.payload == big[:100]
    assert frame.payload == big


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    """A valid stream with a few bytes overwritten: reaches the checks past the magic."""
    blob = bytearray(encode_frames(draw(st.lists(frames(), min_size=1, max_size=4))))
    for _ in range(draw(st.integers(1, 4))):
        blob[draw(st.integers(0, len(blob) - 1))] = draw(st.integers(0, 255))
    return bytes(blob[: draw(st.integers(0, len(blob)))])


@given(st.binary(max_size=2048) | mutated_streams(), st.data())
def test_any_bytes_decode_to_frames_or_the_protocol_error(blob: bytes, data: st.DataObject) -> None:
    for pieces, large in ([[blob], LARGE_PAYLOAD], [data.draw(splits(blob)), 1]):
        try:
            frames_out = decode_all(pieces, large_payload=large)
        except RemoteProtocolError:
            continue
        # Whatever decodes re-encodes to exactly the input.
        assert encode_frames(frames_out) == blob


@given(st.binary(min_size=1, max_size=64))
def test_failed_decoder_stays_failed(junk: bytes) -> None:
    dec = decoder()
    dec.receive_data(b"XXXX" + junk.rjust(16, b"\0"))
    with pytest.raises(BadMagicError) as first:
        dec.next_frame()
    dec.receive_data(encode_frame(Command.PING, b"\x80"))
    with pytest.raises(BadMagicError) as second:
        dec.next_frame()
    assert second.value is first.value


def test_eof_between_frames_is_clean_and_mid_frame_is_an_error() -> None:
    frame = encode_frame(Command.STAT, b"\x81\xa4path\xa1/", session_id=3, flags=Flags.END)
    for cut in range(len(frame) + 1):
        dec = decoder()
        dec.receive_data(frame[:cut])
        dec.receive_data(b"")
        if cut in (0, len(frame)):
            assert list(dec) == ([] if cut == 0 else [Frame(Command.STAT, 1, 3, frame[20:])])
            assert dec.next_frame() is CLOSED
        else:
            with pytest.raises(RemoteProtocolError, match="middle of a frame"):
                dec.next_frame()


def test_data_after_eof_is_a_caller_bug() -> None:
    dec = decoder()
    dec.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        dec.receive_data(b"x")


@pytest.mark.parametrize("declared", [(1 << 20) + 1, 2**31, 2**32 - 1])
def test_oversized_payload_rejected_at_header_time(declared: int) -> None:
    header = encode_frame_parts(Command.DATA, b"", session_id=1)[0]
    header = header[:8] + declared.to_bytes(4, "big") + header[12:]
    dec = decoder()
    # Only the 20 header bytes are in: the size check must already fire.
    dec.receive_data(header)
    with pytest.raises(FrameTooLargeError):
        dec.next_frame()
    assert dec.buffered == HEADER_SIZE


def test_declared_size_is_never_allocated() -> None:
    # Even with the limit raised to the field's maximum (a peer announcing 4 GiB), bytes are
    # buffered only as they arrive: a slow sender costs what it sent, not what it declared.
    dec = FrameDecoder(expected_version=1, max_payload=2**32 - 1, max_control_payload=2**32 - 1)
    header = encode_frame_parts(Command.DATA, b"", session_id=1)[0]
    header = header[:8] + (2**32 - 1).to_bytes(4, "big") + header[12:]
    tracemalloc.start()
    try:
        dec.receive_data(header)
        for _ in range(100):
            dec.receive_data(b"x" * 100)
            assert dec.next_frame() is NEED_DATA
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 10
    assert dec.bytes_desired() == 2**32 - 1 - 100 * 100


def test_handshake_budget_then_negotiated_limits() -> None:
    big = encode_frame(Command.PING, b"\x80" * (MAX_HANDSHAKE_PAYLOAD + 1))
    dec = FrameDecoder()
    dec.receive_data(big)
    with pytest.raises(FrameTooLargeError):
        dec.next_frame()
    dec = FrameDecoder()
    dec.set_limits(**LIMITS)
    dec.receive_data(big)
    assert dec.next_frame() == Frame(Command.PING, 0, 0, big[20:])


def test_version_switch_after_negotiation() -> None:
    dec = decoder()
    dec.set_limits(expected_version=2, max_payload=1 << 20, max_control_payload=MAX_CONTROL_PAYLOAD)
    dec.receive_data(encode_frame(Command.PING, version=1))
    with pytest.raises(UnsupportedVersionError):
        dec.next_frame()


def test_bytes_desired_tracks_the_current_frame() -> None:
    frame = encode_frame(Command.DATA, b"abcdef", session_id=9)
    dec = decoder()
    assert dec.bytes_desired() == HEADER_SIZE
    dec.receive_data(frame[:5])
    assert dec.bytes_desired() == HEADER_SIZE - 5
    dec.receive_data(frame[5:20])
    assert dec.bytes_desired() == 0  # a whole header, not yet parsed
    assert dec.next_frame() is NEED_DATA
    assert dec.bytes_desired() == 6
    dec.receive_data(frame[20:23])
    assert dec.bytes_desired() == 3
    dec.receive_data(frame[23:])
    assert dec.next_frame() == Frame(Command.DATA, 0, 9, b"abcdef")
    assert dec.bytes_desired() == HEADER_SIZE


def test_buffer_is_reclaimed_as_frames_are_consumed() -> None:
    # Many frames through one decoder: the buffer must not grow with the total traffic.
    one = encode_frame(Command.DATA, b"x" * 1000, session_id=1)
    dec = decoder()
    for _ in range(1000):
        dec.receive_data(one + one[:10])
        dec.receive_data(one[10:])
        assert len(list(dec)) == 2
    assert dec.buffered == 0
    assert len(dec._buf) < 10 * len(one)  # the property under test: private on purpose


def test_encoders_agree() -> None:
    payload = bytearray(b"payload")
    header, body = encode_frame_parts(Command.DATA, payload, session_id=5, flags=Flags.END)
    assert body is payload
    assert header + body == encode_frame(Command.DATA, payload, session_id=5, flags=Flags.END)
    many = [Frame(Command.DATA, Flags.END, 5, payload), Frame(Command.PING, 0, 1, b"\x80")]
    assert encode_frames(many) == b"".join(
        encode_frame(f.command, f.payload, session_id=f.session_id, flags=f.flags) for f in many
    )


def test_memoryview_payloads_encode_without_conversion() -> None:
    data = memoryview(b"0123456789")[2:6]
    assert encode_frame(Command.DATA, data)[20:] == b"2345"
