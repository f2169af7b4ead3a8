"""Fuzz target: the 20-byte header codec.

Invariant: ``Header.unpack`` returns a header or raises RemoteProtocolError; an accepted header
packs back to exactly the bytes it came from.
"""

from __future__ import annotations

import sys

from harness import instrumented, main

with instrumented():
    from librorum.errors import RemoteProtocolError
    from librorum.protocol.constants import HEADER_SIZE
    from librorum.protocol.header import Header


def test_one_input(data: bytes) -> None:
    # The first byte picks the expected version and limits, so every check is reachable.
    selector = data[0] if data else 0
    limits = (1 << (selector & 31)) if selector & 0x80 else 1 << 20
    try:
        header = Header.unpack(
            data[1:],
            expected_version=1 if selector & 0x40 else selector & 0x3F,
            max_payload=limits,
            max_control_payload=min(limits, 64 << 10),
        )
    except RemoteProtocolError:
        return
    assert header.pack() == data[1 : 1 + HEADER_SIZE]


if __name__ == "__main__":
    main(test_one_input, sys.argv)
