"""The daemon's live figures, and the report NODE_STATUS (or any front door) shows of them.

Front doors count (connections, requests, bytes) into one :class:`Stats`; the service reads
it, with the in-flight figures of whatever budget the front doors share, when asked for the
node's status. Counting is plain attribute arithmetic on the Trio thread: no lock, no await.
"""

from __future__ import annotations

import bisect
import collections
from typing import Protocol

import attrs

from librorum.errors import ErrorClass, ErrorCode, error_class
from librorum.histogram import Histogram
from librorum.store import FsckProgress, StoreStatus


@attrs.define
class CommandFigures:
    """What one command's requests came to: outcomes and latency."""

    #: Requests that succeeded.
    ok: int = 0
    #: Requests that failed, by the name of the error code they ended with.
    errors: collections.Counter[str] = attrs.field(factory=collections.Counter)
    #: Seconds from the request's start to its answer.
    latency: Histogram = attrs.field(factory=Histogram)

    @property
    def outcomes(self) -> dict[str, int]:
        """Requests by outcome: "ok", or the name of the error code they ended with."""
        return {"ok": self.ok, **self.errors} if self.ok else dict(self.errors)


@attrs.define
class Stats:
    """Live figures of one daemon, kept by its front doors."""

    #: Open connections per transport kind ("uds", "websocket", ...).
    connections: collections.Counter[str] = attrs.field(factory=collections.Counter)
    #: Connections accepted since the start, per transport kind.
    connections_total: collections.Counter[str] = attrs.field(factory=collections.Counter)
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: Bytes received and sent per transport kind (their sums are ``bytes_in``, ``bytes_out``).
    transport_bytes_in: collections.Counter[str] = attrs.field(factory=collections.Counter)
    transport_bytes_out: collections.Counter[str] = attrs.field(factory=collections.Counter)
    #: Per command name ("STAT", "WRITE", ...), once a request of it has completed.
    commands: dict[str, CommandFigures] = attrs.field(factory=dict)
    #: Requests that ended with an error of the request's making (0x02xx: not found, bad
    #: path, ...) and of the server's (0x03xx: I/O, read-only, internal, ...), spec 7.1.
    client_errors: int = 0
    server_errors: int = 0

    def connection_opened(self, kind: str) -> None:
        self.connections[kind] += 1
        self.connections_total[kind] += 1

    def connection_closed(self, kind: str) -> None:
        self.connections[kind] -= 1

    def received(self, kind: str, count: int) -> None:
        self.bytes_in += count
        self.transport_bytes_in[kind] += count

    def sent(self, kind: str, count: int) -> None:
        self.bytes_out += count
        self.transport_bytes_out[kind] += count

    def request_done(self, command: str, seconds: float, error: ErrorCode | None = None) -> None:
        """Count one completed request of ``command``: its latency and its outcome (``error``
        ``None`` for a success). Plain arithmetic: no lock, no checkpoint."""
        figures = self.commands.get(command)
        if figures is None:
            figures = self.commands[command] = CommandFigures()
        # Histogram.observe, inlined: this runs for every request, a STAT's included.
        latency = figures.latency
        latency.counts[bisect.bisect_left(latency.bounds, seconds)] += 1
        latency.total += seconds
        if error is None:
            figures.ok += 1
            return
        figures.errors[error.name] += 1
        kind = error_class(error)
        if kind is ErrorClass.REQUEST:
            self.client_errors += 1
        elif kind is ErrorClass.SERVER:
            self.server_errors += 1


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
        node_id: The node's identity (kept in the data directory by the daemon).
        uptime_ms: Milliseconds since the service started.
        connections: Open connections per transport kind.
        requests: Requests received since the start.
        bytes_in: Bytes received since the start.
        bytes_out: Bytes sent since the start.
        store: The store's figures.
        inflight_bytes: Upload bytes held against the in-flight budget now.
        inflight_peak_bytes: The most ever held at once.
        read_only_reason: Why the store refuses writes, or ``None`` when it does not.
        read_only_since: When it began to (seconds since the epoch), or ``None``.
        client_errors: Requests ended by an error of the request's (0x02xx) since the start.
        server_errors: Requests ended by an error of the server's (0x03xx) since the start.
        python_version, sqlite_version: What the daemon runs on.
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
    read_only_reason: str | None = None
    read_only_since: float | None = None
    client_errors: int = 0
    server_errors: int = 0
    python_version: str = ""
    sqlite_version: str = ""

    @property
    def degraded(self) -> tuple[str, ...]:
        """Why the node cannot do all it should (empty when it can): its store refuses
        writes, or files cannot be read because chunks of theirs are quarantined."""
        reasons: list[str] = []
        if self.store.read_only:
            reasons.append(f"read-only: {self.read_only_reason or 'writes are refused'}")
        if self.store.quarantined:
            reasons.append(
                f"{self.store.quarantined} chunks quarantined: the files using them cannot be "
                "read until their content is uploaded again"
            )
        return tuple(reasons)

    checks: CheckFigures = attrs.field(factory=lambda: CheckFigures())


@attrs.define
class CheckFigures:
    """What the checks of the store found last: fsck (run by an administrator) and the
    background scrub. Kept by the service (``checks.py``); NODE_STATUS and the metrics show
    them.

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
