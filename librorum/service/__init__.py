"""The service core: the daemon's operations, typed, over the store, for every front door.

See :mod:`librorum.service.core`. The store's records and handles that the operations take and
return are re-exported here, so a front door needs no import of the store.
"""

from __future__ import annotations

from librorum.service.caller import (
    INTERNAL as INTERNAL,
    Admins as Admins,
    Caller as Caller,
)
from librorum.service.checks import (
    Checks as Checks,
    ScrubSettings as ScrubSettings,
)
from librorum.service.core import (
    INLINE_LIST_LIMIT as INLINE_LIST_LIMIT,
    UPLOAD_ID as UPLOAD_ID,
    Service as Service,
)
from librorum.service.descriptors import (
    DescriptorKind as DescriptorKind,
    descriptor_kind as descriptor_kind,
)
from librorum.service.figures import (
    CheckFigures as CheckFigures,
    InflightGauge as InflightGauge,
    NodeReport as NodeReport,
    Stats as Stats,
)
from librorum.service.live import (
    MAX_LISTED as MAX_LISTED,
    LiveConnection as LiveConnection,
    LiveRequest as LiveRequest,
    LiveRequests as LiveRequests,
    LiveSnapshot as LiveSnapshot,
    Peer as Peer,
)
from librorum.store import (
    EntryKind as EntryKind,
    FileInfo as FileInfo,
    FsckProgress as FsckProgress,
    FsckReport as FsckReport,
    ListPage as ListPage,
    Reader as Reader,
    RepairReport as RepairReport,
    StoreStatus as StoreStatus,
    Upload as Upload,
    UploadStatus as UploadStatus,
    WriteMode as WriteMode,
)
