"""Fuzz target: control-message payload decoding (MessagePack through the cattrs converter).

Input: one byte choosing the message class, then the payload. Invariants: decoding gives an
instance of that class or raises MalformedPayloadError, nothing else; an accepted message
re-encodes to a payload that decodes to an equal message.
"""

from __future__ import annotations

import sys

from harness import instrumented, main

with instrumented():
    from librorum.errors import MalformedPayloadError
    from librorum.protocol.converter import decode_payload, encode_message
    from librorum.protocol.messages import REPLY_TYPES, REQUEST_TYPES

#: Stable order, so that corpus files keep meaning the same class.
TYPES = sorted({*REQUEST_TYPES.values(), *REPLY_TYPES.values()}, key=lambda c: c.__name__)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    cls = TYPES[data[0] % len(TYPES)]
    try:
        message = decode_payload(data[1:], cls)
    except MalformedPayloadError:
        return
    assert isinstance(message, cls)
    assert decode_payload(encode_message(message), cls) == message


if __name__ == "__main__":
    main(test_one_input, sys.argv)
