"""The daemon's live figures, and the report NODE_STATUS (or any front door) shows of them.

Front doors count (connections, requests, bytes) into one :class:`Stats`; the service reads
it, with the in-flight figures of whatever budget the front doors share, when asked for the
node's status. Counting is plain attribute arithmetic on the Trio thread: no lock, no await.
"""

from __future__ import annotations

import collections
from typing import Protocol

import attrs

from librorum.store import StoreStatus


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
