"""Librorum: a local-and-remote file service speaking LBRU over Unix sockets and WebSocket."""

from __future__ import annotations

from librorum.errors import (
    AlreadyExistsError as AlreadyExistsError,
    BusyError as BusyError,
    CancelledError as CancelledError,
    ConflictError as ConflictError,
    ConnectionClosed as ConnectionClosed,
    CorruptDataError as CorruptDataError,
    ErrorCode as ErrorCode,
    InvalidPathError as InvalidPathError,
    IsADirectoryError_ as IsADirectoryError_,
    LibrorumError as LibrorumError,
    NoSpaceError as NoSpaceError,
    NotADirectoryError_ as NotADirectoryError_,
    NotEmptyError as NotEmptyError,
    NotFoundError as NotFoundError,
    ProtocolError as ProtocolError,
    ReadOnlyError as ReadOnlyError,
    RemoteProtocolError as RemoteProtocolError,
    StoreError as StoreError,
    TooLargeError as TooLargeError,
    UnauthorizedError as UnauthorizedError,
)

__version__ = "0.1.0"
