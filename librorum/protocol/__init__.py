"""The sans-I/O core of LBRU v1: header codec, frame decoder and encoders, typed messages and
their converter. No I/O, no clock, no trio: bytes in, frames and messages out.

The normative description is ``protocol_spec/lbru-v1.md``.
"""

from __future__ import annotations

from librorum.protocol.constants import (
    HEADER_SIZE as HEADER_SIZE,
    MAGIC as MAGIC,
    VERSION as VERSION,
    Command as Command,
    ErrorCode as ErrorCode,
    Feature as Feature,
    Flags as Flags,
)
from librorum.protocol.converter import (
    decode_message as decode_message,
    decode_payload as decode_payload,
    encode_message as encode_message,
)
from librorum.protocol.framing import (
    CLOSED as CLOSED,
    NEED_DATA as NEED_DATA,
    Frame as Frame,
    FrameDecoder as FrameDecoder,
    encode_frame as encode_frame,
    encode_frame_parts as encode_frame_parts,
    encode_frames as encode_frames,
)
from librorum.protocol.header import HEADER as HEADER, Header as Header
