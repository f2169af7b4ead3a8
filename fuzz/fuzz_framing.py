"""Fuzz target: the incremental frame decoder, fed whole and byte by byte.

Invariants: decoding gives frames or raises RemoteProtocolError, nothing else; feeding the
same bytes whole or one byte at a time (with the separate large-payload buffer used for
payloads of 16 bytes and more) gives the same frames and the same error; the frames
decoded re-encode to exactly the bytes they were decoded from.
"""

from __future__ import annotations

import sys

from harness import instrumented, main

with instrumented():
    from librorum.errors import RemoteProtocolError
    from librorum.protocol.framing import CLOSED, NEED_DATA, Frame, FrameDecoder, encode_frames

# Small limits, so that inputs of fuzzer size reach both sides of every size check.
LIMITS = {"expected_version": 1, "max_payload": 8192, "max_control_payload": 1024}
#: Fed one byte at a time up to here, then in odd-sized pieces: byte-by-byte feeding of whole
#: 64 KiB inputs would make each execution 100x slower for little extra coverage.
BYTEWISE_PREFIX = 512
PIECE = 61


def decode(
    pieces: list[bytes], large_payload: int
) -> tuple[list[Frame], type[BaseException] | None]:
    decoder = FrameDecoder(**LIMITS, large_payload=large_payload)
    frames: list[Frame] = []
    try:
        for piece in [*pieces, b""]:
            decoder.receive_data(piece)
            while True:
                frame = decoder.next_frame()
                if frame is NEED_DATA or frame is CLOSED:
                    break
                frames.append(frame)
    except RemoteProtocolError as exc:
        return frames, type(exc)
    return frames, None


def test_one_input(data: bytes) -> None:
    # Whole with the default large-payload threshold, byte by byte with a tiny one: the two
    # buffering paths must agree (differential check).
    whole, whole_error = decode([data], 64 << 10)
    pieces = [data[i : i + 1] for i in range(min(len(data), BYTEWISE_PREFIX))]
    pieces += [data[i : i + PIECE] for i in range(BYTEWISE_PREFIX, len(data), PIECE)]
    bytewise, bytewise_error = decode(pieces, 16)
    assert whole == bytewise, "whole and byte-by-byte decoding disagree"
    assert whole_error is bytewise_error, (whole_error, bytewise_error)
    encoded = encode_frames(whole)
    assert data.startswith(encoded), "decoded frames do not re-encode to their bytes"
    if whole_error is None:
        assert encoded == data


if __name__ == "__main__":
    main(test_one_input, sys.argv)
