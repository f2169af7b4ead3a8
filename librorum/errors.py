"""The one exception tree of Librorum, and the wire error codes it maps to.

Every exception the package raises on purpose derives from :class:`LibrorumError`. A class that
corresponds to a wire error code carries it as :attr:`LibrorumError.code`, so the server turns
any of them into an ERROR frame with one lookup and the client turns an ERROR frame back into
the same class with :func:`error_for_code`. The meaning of each code is normative in
``protocol_spec/lbru-v1.md`` section 7.

This module imports nothing but the standard library, so that every layer can use it.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ErrorCode(enum.IntEnum):
    """Error codes carried in ERROR frames (spec section 7).

    The high byte is the class and tells the receiver what the error ends:
    ``0x01xx`` the connection (the sender closes it after the ERROR frame), ``0x02xx`` one
    request, because of the request, ``0x03xx`` one request, because of the server's state
    (retrying later may succeed).
    """

    # 0x01xx: connection errors.
    PROTOCOL_ERROR = 0x0100
    BAD_MAGIC = 0x0101
    UNSUPPORTED_VERSION = 0x0102
    UNKNOWN_COMMAND = 0x0103
    BAD_FLAGS = 0x0104
    FRAME_TOO_LARGE = 0x0105
    SESSION_IN_USE = 0x0106
    FLOW_CONTROL = 0x0107
    CONNECTION_TIMEOUT = 0x0108
    UNAUTHORIZED = 0x0109
    CONNECTION_LIMIT = 0x010A

    # 0x02xx: request errors (the request does not fit the namespace or the rules).
    BAD_REQUEST = 0x0200
    MALFORMED_PAYLOAD = 0x0201
    INVALID_PATH = 0x0202
    NOT_FOUND = 0x0203
    EXISTS = 0x0204
    NOT_A_DIRECTORY = 0x0205
    IS_A_DIRECTORY = 0x0206
    NOT_EMPTY = 0x0207
    TOO_LARGE = 0x0208
    CONFLICT = 0x0209
    CANCELLED = 0x020A
    FORBIDDEN = 0x020B

    # 0x03xx: server errors (the same request may succeed later).
    INTERNAL = 0x0300
    BUSY = 0x0301
    NO_SPACE = 0x0302
    READ_ONLY = 0x0303
    CORRUPT = 0x0304
    UNAVAILABLE = 0x0305
    TIMEOUT = 0x0306
    IO_ERROR = 0x0307


class ErrorClass(enum.IntEnum):
    """The class of an error code, its high byte (spec 7.1)."""

    CONNECTION = 0x01
    REQUEST = 0x02
    SERVER = 0x03


def error_class(code: int) -> ErrorClass | None:
    """Return the class of a possibly unknown error code, or ``None`` if its high byte names no
    class. A receiver treats an unknown code like the other codes of its class (spec 7.1)."""
    try:
        return ErrorClass(code >> 8)
    except ValueError:
        return None


class LibrorumError(Exception):
    """Base of every exception Librorum raises on purpose.

    Attributes:
        message: A one-line, human-readable description.
        code: The wire error code this exception travels as (class attribute; instances built
            by :func:`error_for_code` for a code unknown to this version carry it per instance).
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str = "", *, wire_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message or (type(self).__doc__ or type(self).__name__).split("\n")[0]
        self._wire_code = wire_code

    @property
    def wire_code(self) -> int:
        """The numeric code of the ERROR frame this exception came from or will travel as."""
        return int(self.code) if self._wire_code is None else self._wire_code

    def __str__(self) -> str:
        return self.message


# --- Protocol errors: the bytes on the wire are wrong. -----------------------------------------


class ProtocolError(LibrorumError):
    """A violation of the LBRU protocol. Abstract: raise one of the subclasses."""

    code = ErrorCode.PROTOCOL_ERROR


class LocalProtocolError(ProtocolError):
    """We were asked to build something the protocol forbids: a bug in the caller."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol. Unless the code is in the request class
    (``MalformedPayload``), the receiver sends an ERROR frame and closes the connection.

    Any other exception escaping the frame decoder is a bug in the decoder (the fuzz invariant).
    """


class BadMagicError(RemoteProtocolError):
    """The frame does not start with the magic bytes "LBRU"."""

    code = ErrorCode.BAD_MAGIC


class UnsupportedVersionError(RemoteProtocolError):
    """The frame's version byte is not the negotiated protocol version."""

    code = ErrorCode.UNSUPPORTED_VERSION


class UnknownCommandError(RemoteProtocolError):
    """The frame's command byte names no command of the negotiated version."""

    code = ErrorCode.UNKNOWN_COMMAND


class BadFlagsError(RemoteProtocolError):
    """The frame sets reserved flag bits, or flags its command does not allow."""

    code = ErrorCode.BAD_FLAGS


class FrameTooLargeError(RemoteProtocolError):
    """The frame's declared payload_size exceeds the limit for its command."""

    code = ErrorCode.FRAME_TOO_LARGE


class SessionInUseError(RemoteProtocolError):
    """A request reused a session_id that is still in flight."""

    code = ErrorCode.SESSION_IN_USE


class FlowControlError(RemoteProtocolError):
    """The peer sent more DATA than its window allowed, or granted an invalid window."""

    code = ErrorCode.FLOW_CONTROL


class MalformedPayloadError(RemoteProtocolError):
    """The payload does not decode to the command's message. Ends only the request."""

    code = ErrorCode.MALFORMED_PAYLOAD


# --- Transport errors: the connection itself failed. -------------------------------------------


class TransportError(LibrorumError):
    """The connection to the peer failed below the protocol."""

    code = ErrorCode.UNAVAILABLE


class ConnectionClosed(TransportError):  # noqa: N818 - trio's name for the same thing
    """The connection is closed; a request in flight on it has an unknown outcome unless its
    reply arrived. The underlying trio or OS exception is kept as ``__cause__``."""


class ConnectionTimeoutError(TransportError):
    """A handshake, frame or idle deadline passed."""

    code = ErrorCode.CONNECTION_TIMEOUT


class UnauthorizedError(TransportError):
    """The peer is not allowed to use this service (bad token, uid not on the allow-list)."""

    code = ErrorCode.UNAUTHORIZED


class ConnectionLimitError(TransportError):
    """The server refused the connection: too many connections."""

    code = ErrorCode.CONNECTION_LIMIT


# --- Request errors: what was asked does not fit the namespace or the rules. -------------------


class RequestError(LibrorumError):
    """The request is wrong for the current state of the namespace or breaks a rule."""

    code = ErrorCode.BAD_REQUEST


class BadRequestError(RequestError):
    """The request's arguments are invalid (a negative offset, a size mismatch, ...)."""


class StoreError(RequestError):
    """Base of the errors the store raises; the codes below are the namespace's answers."""


class InvalidPathError(StoreError):
    """The path breaks the path rules (spec 5.1)."""

    code = ErrorCode.INVALID_PATH


class NotFoundError(StoreError):
    """Nothing exists at the path (or no upload with that id)."""

    code = ErrorCode.NOT_FOUND


class AlreadyExistsError(StoreError):
    """Something already exists at the path."""

    code = ErrorCode.EXISTS


class NotADirectoryError_(StoreError):  # noqa: N801, N818 - the builtin name is taken
    """A path component that must be a directory is a file."""

    code = ErrorCode.NOT_A_DIRECTORY


class IsADirectoryError_(StoreError):  # noqa: N801, N818 - the builtin name is taken
    """The operation needs a file but the path is a directory."""

    code = ErrorCode.IS_A_DIRECTORY


class NotEmptyError(StoreError):
    """The directory is not empty and the operation was not recursive."""

    code = ErrorCode.NOT_EMPTY


class TooLargeError(StoreError):
    """The file exceeds the maximum file size."""

    code = ErrorCode.TOO_LARGE


class ConflictError(StoreError):
    """The request conflicts with another (a resume offset that does not match, an upload
    already in progress on another stream)."""

    code = ErrorCode.CONFLICT


class InvalidArgumentError(BadRequestError, StoreError):
    """An argument does not fit the data: an upload ended short of its declared size, or a
    passed descriptor is not a regular file of the declared size. Travels as BAD_REQUEST."""


class CancelledError(RequestError):
    """The request was cancelled before it took effect; it had no effect."""

    code = ErrorCode.CANCELLED


class ForbiddenError(RequestError):
    """The caller may not run this command: it is for the daemon's administrators (the
    daemon's own uid or a configured admin uid over a Unix socket, the token on WebSocket)."""

    code = ErrorCode.FORBIDDEN


# --- Server errors: the request might succeed later. -------------------------------------------


class ServerError(LibrorumError):
    """The server could not carry out a valid request."""

    code = ErrorCode.INTERNAL


class InternalError(ServerError):
    """An unexpected failure in the server (a bug); details are in the server's log."""


class BusyError(ServerError):
    """A limit was reached (streams, uploads, in-flight bytes, lock wait); retry later."""

    code = ErrorCode.BUSY


class NoSpaceError(ServerError, StoreError):
    """The store's disk is full."""

    code = ErrorCode.NO_SPACE


class ReadOnlyError(ServerError, StoreError):
    """The store refuses writes (it is read-only, or it became so after an fsync failure)."""

    code = ErrorCode.READ_ONLY


class CorruptDataError(ServerError, StoreError):
    """Stored data failed verification against its hash; it is never returned."""

    code = ErrorCode.CORRUPT


class UnavailableError(ServerError):
    """The server is shutting down or the service is not available."""

    code = ErrorCode.UNAVAILABLE


class TimeoutError_(ServerError):  # noqa: N801, N818 - the builtin name is taken
    """The operation did not complete within its deadline (a lock wait, an I/O deadline)."""

    code = ErrorCode.TIMEOUT


class StoreIOError(ServerError, StoreError):
    """The store's disk failed an operation (EIO and the like)."""

    code = ErrorCode.IO_ERROR


#: The canonical exception class of each wire error code: the class the client raises for it.
CLASS_BY_CODE: dict[int, type[LibrorumError]] = {
    int(cls.code): cls
    for cls in (
        RemoteProtocolError,
        BadMagicError,
        UnsupportedVersionError,
        UnknownCommandError,
        BadFlagsError,
        FrameTooLargeError,
        SessionInUseError,
        FlowControlError,
        ConnectionTimeoutError,
        UnauthorizedError,
        ConnectionLimitError,
        BadRequestError,
        MalformedPayloadError,
        InvalidPathError,
        NotFoundError,
        AlreadyExistsError,
        NotADirectoryError_,
        IsADirectoryError_,
        NotEmptyError,
        TooLargeError,
        ConflictError,
        CancelledError,
        ForbiddenError,
        InternalError,
        BusyError,
        NoSpaceError,
        ReadOnlyError,
        CorruptDataError,
        UnavailableError,
        TimeoutError_,
        StoreIOError,
    )
}
assert set(CLASS_BY_CODE) == {int(c) for c in ErrorCode}, "every code needs exactly one class"

_FALLBACK_BY_CLASS: dict[ErrorClass | None, type[LibrorumError]] = {
    ErrorClass.CONNECTION: RemoteProtocolError,
    ErrorClass.REQUEST: RequestError,
    ErrorClass.SERVER: ServerError,
    None: ServerError,
}


def error_for_code(code: int, message: str) -> LibrorumError:
    """Build the exception for an ERROR frame's code and message.

    A code this version does not know becomes an instance of its class's base
    (``RemoteProtocolError``, ``RequestError`` or ``ServerError``, spec 7.1) that still reports
    the received number as :attr:`LibrorumError.wire_code`.
    """
    cls = CLASS_BY_CODE.get(code)
    if cls is not None:
        return cls(message)
    return _FALLBACK_BY_CLASS[error_class(code)](message, wire_code=code)
