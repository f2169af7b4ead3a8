"""The one boundary where operating-system and SQLite errors become store errors.

Every call into the file system or the metadata database runs inside :func:`translating`, which
turns an :class:`OSError` or :class:`sqlite3.Error` into the matching :class:`StoreError`
subclass, keeping the original as ``__cause__``. Nothing else in the store catches ``OSError`` to
re-raise it, so the mapping below is the whole policy.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from librorum.errors import (
    CorruptDataError,
    NoSpaceError,
    ReadOnlyError,
    StoreError,
    StoreIOError,
)

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_READ_ONLY = frozenset({errno.EROFS})

# SQLite primary result codes (the low byte of the extended code).
_SQLITE_READONLY = 8
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26


def store_error_for(exc: BaseException, what: str) -> StoreError:
    """Return the store error that reports ``exc``, raised while doing ``what``."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        msg = f"{what}: {text}"
        if exc.errno in _NO_SPACE:
            return NoSpaceError(msg)
        if exc.errno in _READ_ONLY:
            return ReadOnlyError(msg)
        return StoreIOError(msg)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        msg = f"{what}: metadata database: {exc}"
        if code == _SQLITE_FULL:
            return NoSpaceError(msg)
        if code == _SQLITE_READONLY:
            return ReadOnlyError(msg)
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return CorruptDataError(msg)
        return StoreIOError(msg)
    msg = f"{what}: {exc!r}"
    return StoreIOError(msg)


@contextmanager
def translating(what: str) -> Iterator[None]:
    """Run the body, translating OS and SQLite errors into store errors.

    Args:
        what: A short description of the operation, prefixed to the message.

    Raises:
        NoSpaceError: ENOSPC, EDQUOT, EFBIG or SQLITE_FULL.
        ReadOnlyError: EROFS or SQLITE_READONLY.
        CorruptDataError: SQLite reports a corrupt database.
        StoreIOError: Any other OS or SQLite error.
    """
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        raise store_error_for(exc, what) from exc
