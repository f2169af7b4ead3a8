"""Librorum: a local-and-remote file service speaking LBRU over Unix sockets and WebSocket."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from librorum.errors import (
    AlreadyExistsError as AlreadyExistsError,
    BusyError as BusyError,
    CancelledError as CancelledError,
    ConflictError as ConflictError,
    ConnectionClosed as ConnectionClosed,
    CorruptDataError as CorruptDataError,
    ErrorCode as ErrorCode,
    ForbiddenError as ForbiddenError,
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
from librorum.version import __version__ as __version__

# The daemon and the clients import trio; `import librorum.protocol` must not (the protocol
# core is sans-I/O), and importing a package runs its __init__. So these names load on first
# use (PEP 562).
if TYPE_CHECKING:
    from librorum.client import (
        Client as Client,
        SyncClient as SyncClient,
        connect as connect,
        open_client as open_client,
    )
    from librorum.config import Config as Config, load_config as load_config
    from librorum.server.app import RunningServer as RunningServer, serve as serve

_LAZY: dict[str, str] = {
    "serve": "librorum.server.app",
    "RunningServer": "librorum.server.app",
    "Config": "librorum.config",
    "load_config": "librorum.config",
    "open_client": "librorum.client",
    "connect": "librorum.client",
    "Client": "librorum.client",
    "SyncClient": "librorum.client",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'librorum' has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(module), name)
