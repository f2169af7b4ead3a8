"""Clients of the Librorum daemon: :func:`open_client` (async, trio) and :func:`connect`
(blocking). Both speak LBRU through the same sans-I/O session, over the local Unix socket
or a remote WebSocket."""

from __future__ import annotations

from librorum.client._common import (
    DEFAULT_CONNECT_TIMEOUT as DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_WINDOW as DEFAULT_READ_WINDOW,
    DEFAULT_TIMEOUT as DEFAULT_TIMEOUT,
    ProgressCallback as ProgressCallback,
)
from librorum.client._endpoints import (
    LocalEndpoint as LocalEndpoint,
    RemoteEndpoint as RemoteEndpoint,
    default_socket_path as default_socket_path,
)
from librorum.client.aio import (
    Client as Client,
    ListIterator as ListIterator,
    ReadStream as ReadStream,
    open_client as open_client,
)
from librorum.client.sync import (
    SyncClient as SyncClient,
    SyncReadStream as SyncReadStream,
    connect as connect,
)
from librorum.protocol.constants import WriteMode as WriteMode
from librorum.protocol.messages import (
    DirEntry as DirEntry,
    FileInfo as FileInfo,
    NodeStatusReply as NodeStatusReply,
    RequestEntry as RequestEntry,
    RequestsReply as RequestsReply,
    ShutdownReply as ShutdownReply,
    UploadStatusReply as UploadStatusReply,
)
