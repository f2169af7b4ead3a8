"""The 20-byte LBRU frame header (spec section 3).

Layout, network byte order (big-endian), no padding::

    offset  size  field
         0     4  magic         the ASCII bytes "LBRU"
         4     1  version       u8
         5     1  command       u8, a :class:`~librorum.protocol.constants.Command`
         6     2  flags         u16, :class:`~librorum.protocol.constants.Flags`
         8     4  payload_size  u32, bytes of payload after the header
        12     8  session_id    u64, the request this frame belongs to (0: the connection)

The checks run in the spec's order (magic, version, command, reserved flags, payload size) so
that a receiver rejects a bad frame as soon as its 20 header bytes are in, before it buffers any
payload. :func:`check_header` is the one place that does this; the decoder calls it directly to
avoid building a :class:`Header` object per frame.
"""

from __future__ import annotations

import struct
from typing import Final

import attrs

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
    COMMAND_TABLE,
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    KNOWN_FLAGS,
    MAGIC,
    MAX_CONTROL_PAYLOAD,
    MAX_PAYLOAD_SIZE_FIELD,
    MAX_SESSION_ID,
    VERSION,
    Command,
)

#: The one precompiled header codec: magic, version, command, flags, payload_size, session_id.
HEADER: Final = struct.Struct("!4sBBHIQ")
assert HEADER.size == HEADER_SIZE

#: Whether each command carries raw bytes (DATA) rather than a control message. Indexed by the
#: command byte so that the size check at header time is one tuple lookup.
_IS_DATA: Final = tuple(b == Command.DATA for b in range(256))


def check_header(
    magic: bytes,
    version: int,
    command_byte: int,
    flags: int,
    payload_size: int,
    *,
    expected_version: int,
    max_payload: int,
    max_control_payload: int,
) -> Command:
    """Validate unpacked header fields in the spec's order and return the command.

    Args:
        magic, version, command_byte, flags, payload_size: the header fields.
        expected_version: the version every frame must carry (the handshake version before
            HELLO completes, the negotiated one after).
        max_payload: the largest payload a DATA frame may declare.
        max_control_payload: the largest payload any other frame may declare.

    Raises:
        BadMagicError, UnsupportedVersionError, UnknownCommandError, BadFlagsError,
        FrameTooLargeError: the first check that fails, with the spec's error code.
    """
    if magic != MAGIC:
        msg = f"bad magic {magic!r}: not an LBRU frame"
        raise BadMagicError(msg)
    if version != expected_version:
        msg = f"frame version {version}, expected {expected_version}"
        raise UnsupportedVersionError(msg)
    command = COMMAND_TABLE[command_byte]
    if command is None:
        msg = f"unknown command 0x{command_byte:02x}"
        raise UnknownCommandError(msg)
    if flags & ~KNOWN_FLAGS:
        msg = f"reserved flag bits set: 0x{flags:04x}"
        raise BadFlagsError(msg)
    limit = max_payload if _IS_DATA[command_byte] else max_control_payload
    if payload_size > limit:
        msg = f"{command.name} frame declares {payload_size} payload bytes, limit is {limit}"
        raise FrameTooLargeError(msg)
    return command


@attrs.frozen
class Header:
    """A decoded frame header. The magic is implied: a Header always stands for "LBRU"."""

    command: Command
    flags: int
    payload_size: int
    session_id: int
    version: int = VERSION

    @classmethod
    def unpack(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        expected_version: int = VERSION,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_control_payload: int = MAX_CONTROL_PAYLOAD,
    ) -> Header:
        """Decode and validate the first 20 bytes of ``data``.

        Raises:
            RemoteProtocolError: ``data`` is shorter than a header, or a field is invalid
                (the subclass names which; see :func:`check_header`).
        """
        if len(data) < HEADER_SIZE:
            msg = f"truncated header: {len(data)} of {HEADER_SIZE} bytes"
            raise RemoteProtocolError(msg)
        magic, version, command_byte, flags, size, session_id = HEADER.unpack_from(data)
        command = check_header(
            magic,
            version,
            command_byte,
            flags,
            size,
            expected_version=expected_version,
            max_payload=max_payload,
            max_control_payload=max_control_payload,
        )
        return cls(command, flags, size, session_id, version)

    def pack(self) -> bytes:
        """Encode to 20 bytes.

        Raises:
            LocalProtocolError: a field does not fit its width or sets reserved flag bits.
        """
        return pack_header(
            self.command, self.flags, self.payload_size, self.session_id, self.version
        )


def pack_header(
    command: int, flags: int, payload_size: int, session_id: int, version: int = VERSION
) -> bytes:
    """Encode header fields to 20 bytes; the encoder's only entry to :data:`HEADER`.

    Raises:
        LocalProtocolError: a field does not fit its width, or reserved flag bits are set.
    """
    if flags & ~KNOWN_FLAGS:
        msg = f"reserved flag bits set: 0x{flags:04x}"
        raise LocalProtocolError(msg)
    try:
        return HEADER.pack(MAGIC, version, command, flags, payload_size, session_id)
    except struct.error as exc:
        msg = (
            f"header field out of range (version={version}, command={command}, "
            f"payload_size={payload_size} <= {MAX_PAYLOAD_SIZE_FIELD}, "
            f"session_id={session_id} <= {MAX_SESSION_ID})"
        )
        raise LocalProtocolError(msg) from exc
