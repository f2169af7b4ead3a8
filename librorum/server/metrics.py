"""The daemon's Prometheus metrics, read from its figures at scrape time.

The hot path keeps plain counters and fixed-bucket histogram arrays
(:class:`~librorum.service.figures.Stats`, the store's fsync histogram): a prometheus-client
Counter or Histogram per request would take a lock each time. This module turns those figures
into metric families only when a scrape asks (:class:`DaemonCollector`), in a registry of the
daemon's own (never the global one, which an embedding program or a test may share), with
prometheus-client's process collector (RSS, CPU, descriptors) next to it.

A scrape first awaits the node's report (the store's figures need a query), then renders
synchronously, on the Trio thread, so every figure comes from the same instant.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from librorum.histogram import HistogramSnapshot
from librorum.protocol.constants import Command
from librorum.server.http import Page
from librorum.service import NodeReport
from librorum.version import __version__

if TYPE_CHECKING:
    from librorum.server.budget import InflightBudget
    from librorum.server.connection import Connection
    from librorum.service import Service, Stats

#: The prefix of every metric of the daemon's own.
PREFIX = "librorum"


class Daemon(Protocol):
    """What the metrics read of the daemon (``librorum.server.app.Server``)."""

    @property
    def stats(self) -> Stats: ...

    @property
    def budget(self) -> InflightBudget: ...

    @property
    def service(self) -> Service: ...

    @property
    def connections(self) -> Collection[Connection]: ...


class DaemonCollector(Collector):
    """The daemon's figures as metric families. :meth:`render` sets the report to read; a
    collect outside it yields nothing of the store's."""

    def __init__(self, server: Daemon) -> None:
        self._server = server
        self.report: NodeReport | None = None

    def collect(self) -> Iterator[Metric]:
        stats = self._server.stats
        yield from self._requests()
        yield _by_label(
            CounterMetricFamily,
            "transport_received_bytes",
            "Bytes received, frame headers included, per transport.",
            "transport",
            stats.transport_bytes_in,
        )
        yield _by_label(
            CounterMetricFamily,
            "transport_sent_bytes",
            "Bytes sent, frame headers included, per transport.",
            "transport",
            stats.transport_bytes_out,
        )
        yield _by_label(
            GaugeMetricFamily,
            "connections",
            "Connections open now, per transport.",
            "transport",
            stats.connections,
        )
        yield _by_label(
            CounterMetricFamily,
            "connections_accepted",
            "Connections accepted since the start, per transport.",
            "transport",
            stats.connections_total,
        )
        errors = CounterMetricFamily(
            f"{PREFIX}_request_errors",
            "Requests ended by an error: class client (0x02xx) or server (0x03xx).",
            labels=["class"],
        )
        errors.add_metric(["client"], stats.client_errors)
        errors.add_metric(["server"], stats.server_errors)
        yield errors
        uploads, reads = self._streams_in_flight()
        yield GaugeMetricFamily(f"{PREFIX}_uploads_in_flight", "WRITE requests running.", uploads)
        yield GaugeMetricFamily(f"{PREFIX}_reads_in_flight", "READ requests running.", reads)
        budget = self._server.budget
        yield GaugeMetricFamily(
            f"{PREFIX}_inflight_bytes", "Upload bytes held against the budget now.", budget.used
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_inflight_peak_bytes", "The most upload bytes held at once.", budget.peak
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_inflight_budget_bytes",
            "The budget of upload bytes in flight (max_inflight_bytes).",
            budget.limit,
        )
        yield _histogram(
            "fsync_duration_seconds",
            "How long the store's fsyncs of chunk files and directories take.",
            self._server.service.fsync_latency(),
        )
        yield _histogram(
            "metadata_commit_duration_seconds",
            "How long the store's metadata commits take (each fsyncs the metadata's log).",
            self._server.service.commit_latency(),
        )
        if self.report is not None:
            yield from _node(self.report)

    def _requests(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            f"{PREFIX}_requests",
            "Requests completed, by command and outcome (ok, or the error code's name).",
            labels=["command", "outcome"],
        )
        latency = HistogramMetricFamily(
            f"{PREFIX}_request_duration_seconds",
            "Seconds from a request's start to its answer, by command.",
            labels=["command"],
        )
        for command, figures in sorted(self._server.stats.commands.items()):
            for outcome, count in sorted(figures.outcomes.items()):
                requests.add_metric([command, outcome], count)
            snapshot = figures.latency.snapshot()
            latency.add_metric([command], _cumulative(snapshot), sum_value=snapshot.total)
        yield requests
        yield latency

    def _streams_in_flight(self) -> tuple[int, int]:
        counts: Counter[Command] = Counter()
        for connection in self._server.connections:
            counts.update(state.command for state in connection.requests.values())
        return counts[Command.WRITE], counts[Command.READ]


def _checks(report: NodeReport) -> Iterator[Metric]:
    """What fsck and the background scrub found (``NodeReport.checks``)."""
    checks = report.checks
    gauges = (
        ("fsck_running", "1 while a check or repair runs.", checks.fsck_running is not None),
        (
            "fsck_last_timestamp_seconds",
            "When the last check or repair finished (0: none since the start).",
            checks.last_fsck_ns / 1e9,
        ),
        (
            "fsck_last_ok",
            "1 when the last check or repair left nothing to do.",
            checks.last_fsck_ok,
        ),
        ("fsck_last_problems", "Defects the last check found.", checks.last_fsck_problems),
        (
            "fsck_last_affected_files",
            "Files the last check found using damaged data.",
            checks.last_fsck_affected,
        ),
        (
            "scrub_last_pass_timestamp_seconds",
            "When the scrub last finished a full pass (0: never).",
            checks.last_scrub_ns / 1e9,
        ),
        (
            "scrub_paused",
            "1 while the scrub waits for client traffic to stop.",
            checks.scrub_paused,
        ),
    )
    for name, documentation, value in gauges:
        yield GaugeMetricFamily(f"{PREFIX}_{name}", documentation, float(value))
    counters = (
        ("fsck_chunks_verified", "Chunks rehashed by fsck.", checks.fsck_chunks_verified),
        ("scrub_chunks_verified", "Chunks the scrub verified.", checks.scrub_chunks_verified),
        ("scrub_bytes_verified", "Bytes the scrub verified.", checks.scrub_bytes_verified),
        (
            "scrub_corrupt_found",
            "Chunks the scrub found corrupt or missing.",
            checks.scrub_corrupt_found,
        ),
    )
    for name, documentation, value in counters:
        yield CounterMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def _node(report: NodeReport) -> Iterator[Metric]:
    store = report.store
    figures = (
        ("store_files", "Files in the store.", store.files),
        ("store_directories", "Directories in the store, the root included.", store.directories),
        ("store_logical_bytes", "Sum of the files' sizes.", store.logical_bytes),
        ("store_stored_bytes", "Chunk data on disk, after deduplication.", store.stored_bytes),
        (
            "store_dedup_saved_bytes",
            "Bytes deduplication saves: logical less stored.",
            max(0, store.logical_bytes - store.stored_bytes),
        ),
        ("store_chunks", "Distinct chunks stored.", store.chunks),
        ("store_free_bytes", "Free space available to the store.", store.free_bytes),
        ("store_uploads", "Resumable uploads kept.", store.uploads),
        (
            "chunks_quarantined",
            "Chunks found corrupt and set aside, not healed.",
            store.quarantined,
        ),
        ("store_read_only", "1 when the store refuses writes (an fsync failed).", store.read_only),
        ("degraded", "1 when the node is degraded (see librorum status).", bool(report.degraded)),
        ("uptime_seconds", "Seconds since the daemon started.", report.uptime_ms / 1000),
    )
    for name, documentation, value in figures:
        yield GaugeMetricFamily(f"{PREFIX}_{name}", documentation, float(value))
    yield from _checks(report)
    info = InfoMetricFamily(f"{PREFIX}_build", "What the daemon is and runs on.")
    info.add_metric(
        [],
        {
            "version": __version__,
            "python": report.python_version,
            "sqlite": report.sqlite_version,
            "node_id": report.node_id,
        },
    )
    yield info


def _by_label(
    family: type[CounterMetricFamily | GaugeMetricFamily],
    name: str,
    documentation: str,
    label: str,
    values: Mapping[str, int],
) -> Metric:
    metric = family(f"{PREFIX}_{name}", documentation, labels=[label])
    for key, value in sorted(values.items()):
        metric.add_metric([key], value)
    return metric


def _cumulative(snapshot: HistogramSnapshot) -> list[tuple[str, float]]:
    """Prometheus buckets: cumulative counts by upper bound, ``+Inf`` last."""
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*snapshot.bounds, float("inf")), snapshot.counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return buckets


def _histogram(name: str, documentation: str, snapshot: HistogramSnapshot) -> Metric:
    metric = HistogramMetricFamily(f"{PREFIX}_{name}", documentation)
    metric.add_metric([], _cumulative(snapshot), sum_value=snapshot.total)
    return metric


class Metrics:
    """The daemon's registry and what renders it: the ``render`` of its HTTP endpoint."""

    def __init__(self, server: Daemon) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = DaemonCollector(server)
        self.registry.register(self.collector)
        # RSS, CPU seconds, open descriptors, start time: read from /proc at scrape time.
        ProcessCollector(registry=self.registry)
        self._server = server

    async def render(self) -> Page:
        """The exposition of every metric.

        Cancellation: safe (reads only).

        Raises:
            StoreIOError: The store's figures could not be read.
        """
        report = await self._server.service.node_status()
        # No checkpoint from here to the end: every figure is of the same instant.
        self.collector.report = report
        try:
            body = generate_latest(self.registry)
        finally:
            self.collector.report = None
        return Page(body, CONTENT_TYPE_LATEST)
