"""The daemon's live figures, and the report NODE_STATUS (or any front door) shows of them.

Front doors count (connections, requests, bytes) into one :class:`Stats`; the service reads
it, with the in-flight figures of whatever budget the front doors share, when asked for the
node's status. Counting is plain attribute arithmetic on the Trio thread: no lock, no await.
"""

from __future__ import annotations

import collections
from typing import Protocol

import attrs

from librorum.store import FsckProgress, StoreStatus


@attrs.define
class Stats:
    """Live figures of one daemon, kept by its front doors."""

    #: Open connections per transport kind ("uds", "websocket", ...).
    connections: collections.Counter[str] = attrs.field(factory=collections.Counter)
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def connection_opened(self, kind: str) -> None:
        self.connections[kind] += 1

    def connection_closed(self, kind: str) -> None:
        self.connections[kind] -= 1


class InflightGauge(Protocol):
    """What the service reads of the budget of upload bytes in flight (spec 9.2)."""

    @property
    def used(self) -> int:
        """Bytes held now."""

    @property
    def peak(self) -> int:
        """The most bytes ever held at once."""


@attrs.frozen
class NodeReport:
    """The node's health and figures, as :meth:`Service.node_status` reports them.

    Attributes:
        version: The daemon's version.
        node_id: Random, chosen at start: tells restarts apart.
        uptime_ms: Milliseconds since the service started.
        connections: Open connections per transport kind.
        requests: Requests received since the start.
        bytes_in: Bytes received since the start.
        bytes_out: Bytes sent since the start.
        store: The store's figures.
        inflight_bytes: Upload bytes held against the in-flight budget now.
        inflight_peak_bytes: The most ever held at once.
        checks: What fsck and the scrub found last.
    """

    version: str
    node_id: str
    uptime_ms: int
    connections: dict[str, int]
    requests: int
    bytes_in: int
    bytes_out: int
    store: StoreStatus
    inflight_bytes: int
    inflight_peak_bytes: int
    checks: CheckFigures = attrs.field(factory=lambda: CheckFigures())


@attrs.define
class CheckFigures:
    """What the checks of the store found last: fsck (run by an administrator) and the
    background scrub. Kept by the service (``checks.py``); NODE_STATUS shows them, and the
    metrics are read from them.

    Attributes:
        fsck_running: The progress of the check or repair running now, if any.
        last_fsck_ns: When the last check or repair finished (ns since the epoch; 0: none
            since the start).
        last_fsck_repair: Whether that was a repair.
        last_fsck_ok: Whether it left nothing to do (a clean store; after a repair: no file
            to upload again).
        last_fsck_problems: Defects it found (corrupt, missing, orphan, quarantined chunks,
            wrong counts, namespace errors).
        last_fsck_affected: Files it found using damaged data (after a repair: still).
        fsck_chunks_verified: Chunks rehashed by checks since the start.
        last_scrub_ns: When the scrub last finished a full pass (ns since the epoch; 0:
            none yet).
        scrub_chunks_verified: Chunks the scrub verified since the start.
        scrub_bytes_verified: Their bytes.
        scrub_corrupt_found: Chunks the scrub found corrupt or missing since the start.
        scrub_pass_chunks: Chunks verified in the pass under way.
        scrub_paused: The scrub is waiting for client traffic to stop.
    """

    fsck_running: FsckProgress | None = None
    last_fsck_ns: int = 0
    last_fsck_repair: bool = False
    last_fsck_ok: bool = True
    last_fsck_problems: int = 0
    last_fsck_affected: int = 0
    fsck_chunks_verified: int = 0
    last_scrub_ns: int = 0
    scrub_chunks_verified: int = 0
    scrub_bytes_verified: int = 0
    scrub_corrupt_found: int = 0
    scrub_pass_chunks: int = 0
    scrub_paused: bool = False
