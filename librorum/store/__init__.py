"""The storage engine: a namespace of files and directories over content-addressed,
deduplicated, verified chunks, over a metadata store and an object store chosen at open
(SQLite and chunk files by default). See ``store.py`` for the design."""

from __future__ import annotations

# The store's API takes and returns these protocol enums: re-exported so that its callers need
# not import the protocol for them.
from librorum.domain import EntryKind as EntryKind, WriteMode as WriteMode
from librorum.store.backend import (
    BackendContext as BackendContext,
    MetadataFactory as MetadataFactory,
    ObjectFactory as ObjectFactory,
)
from librorum.store.fs import FS as FS, OsFS as OsFS
from librorum.store.memory import memory_backend as memory_backend
from librorum.store.meta import MetadataStore as MetadataStore, MetaTxn as MetaTxn
from librorum.store.objects import LocalObjects as LocalObjects, ObjectStore as ObjectStore
from librorum.store.paths import normalize as normalize
from librorum.store.reader import Reader as Reader
from librorum.store.store import (
    DEFAULT_CHUNK_SIZE as DEFAULT_CHUNK_SIZE,
    Store as Store,
    open_store as open_store,
)
from librorum.store.types import (
    FileInfo as FileInfo,
    FsckProgress as FsckProgress,
    FsckReport as FsckReport,
    ListPage as ListPage,
    RecoveryReport as RecoveryReport,
    RepairReport as RepairReport,
    ScrubStep as ScrubStep,
    Segment as Segment,
    StoreStatus as StoreStatus,
    UploadStatus as UploadStatus,
)
from librorum.store.upload import Upload as Upload
