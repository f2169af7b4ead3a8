"""The benchmark's target evaluation (``bench/targets.py``): MET, NOT MET and n/a from given
medians, comparisons within the same rounds, and the figures it reads from a run's items."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pytest

from bench import labels as lb
from bench.common import Stats
from bench.targets import (
    MET,
    NA,
    NEEDS_GRPC_LISTENER,
    NOT_MEASURED,
    NOT_MET,
    Figures,
    Key,
    TargetResult,
    evaluate,
    figures,
    text_table,
)


def gbs(median: float, cpu: float = 0.1) -> Figures:
    return Figures(median, "GB/s", {"server_cpu": cpu})


def ops(median: float, cpu: float = 1.0) -> Figures:
    return Figures(median, "ops/s", {"server_cpu": cpu})


def p99(by_round: dict[int, float], errors: float = 0.0) -> Figures:
    values = sorted(by_round.values())
    return Figures(values[len(values) // 2], "ms p99", by_round=by_round, errors=errors)


def a_run_meeting_every_target() -> dict[Key, Figures]:
    """Figures of a run where every measurable target is met, each with some margin."""
    return {
        (lb.STAT, lb.PING_UDS): ops(10_000),
        (lb.STAT, lb.LIB_UDS_SYNC): ops(6_000, cpu=40),
        (lb.STAT, lb.LIB_UDS_TRIO): ops(4_000),
        (lb.STAT, lb.GRPC_UDS): ops(900),
        (lb.PIPELINED, lb.LIB_RAW_PIPELINED): ops(150_000, cpu=6),
        (lb.PIPELINED, lb.LIB_TRIO_PIPELINED): ops(60_000),
        (lb.PIPELINED, lb.GRPC_PIPELINED): ops(2_000),
        (lb.UPLOAD, lb.FILE_COPY_FSYNC): gbs(1.0),
        (lb.UPLOAD, lb.LIB_UDS_TRIO): gbs(0.9, cpu=0.7),
        (lb.UPLOAD, lb.LIB_UDS_SYNC): gbs(0.85, cpu=0.7),
        (lb.UPLOAD, lb.LIB_FD): gbs(0.95, cpu=0.4),
        (lb.UPLOAD, lb.LIB_WS_TRIO): gbs(0.8),
        (lb.UPLOAD, lb.LIB_CLI_PUT): gbs(0.9),
        (lb.UPLOAD, lb.GRPC_UDS): gbs(0.5),
        (lb.UPLOAD, lb.RCLONE_CURL_PUT): gbs(0.2),
        (lb.UPLOAD, lb.RCLONE_PY_PUT): gbs(0.25),
        (lb.PARALLEL, lb.LIB_FD): gbs(0.85),
        (lb.DOWNLOAD, lb.LIMIT_UDS): gbs(2.0),
        (lb.DOWNLOAD, lb.LIB_UDS_TRIO): gbs(1.6, cpu=0.3),
        (lb.DOWNLOAD, lb.LIB_UDS_SYNC): gbs(1.7, cpu=0.3),
        (lb.DOWNLOAD, lb.LIB_WS_TRIO): gbs(1.4),
        (lb.DOWNLOAD, lb.LIB_CLI_GET): gbs(1.5),
        (lb.DOWNLOAD, lb.RCLONE_CURL_GET): gbs(0.45),
        (lb.DOWNLOAD, lb.RCLONE_PY_GET): gbs(0.4),
        (lb.CROWD, lb.crowd_echo(lb.PACED)): p99({0: 10.0, 1: 4.0, 2: 20.0}),
        (lb.CROWD, lb.crowd_uds(lb.PACED)): p99({0: 12.0, 1: 5.0, 2: 25.0}),
        (lb.RSS, lb.RSS_MOVING): Figures(50.0, "MiB", {"moved_gib": 20.0}),
        (lb.RSS, lb.RSS_CONCURRENT): Figures(250.0, "MiB", {"uploads": 64, "upload_mib": 64}),
    }


def row(results: Sequence[TargetResult], workload: str, target: str) -> TargetResult:
    """The one row whose workload and target start with the given words."""
    found = [r for r in results if r.workload.startswith(workload) and r.target.startswith(target)]
    assert len(found) == 1, (workload, target, [r.text for r in results])
    return found[0]


def test_every_measurable_target_met_and_the_grpc_ones_say_what_they_need() -> None:
    results = evaluate(a_run_meeting_every_target())
    grpc = [r for r in results if r.workload.startswith("against gRPC")]
    assert len(grpc) == 4
    assert {r.status for r in grpc} == {NA}
    assert all(r.measured.startswith(NEEDS_GRPC_LISTENER) for r in grpc)
    # The gRPC peer's ratio stays as context.
    assert (
        "context, vs the gRPC peer process: 1.90x"
        in row(results, "against gRPC", "LBRU UDS >= 2x gRPC upload").measured
    )
    assert [r.text for r in results if r.status != MET] == [r.text for r in grpc]
    assert len(results) == 27


def test_a_ratio_below_its_goal_is_not_met_and_says_what_was_measured() -> None:
    run = a_run_meeting_every_target()
    run[(lb.STAT, lb.LIB_UDS_SYNC)] = ops(4_000, cpu=75)
    results = evaluate(run)
    ratio = row(results, "sequential STAT, sync client", ">= 0.5x")
    assert ratio.status == NOT_MET
    assert ratio.measured == "0.40x (4.0k vs 10.0k ops/s)"
    cpu = row(results, "sequential STAT, sync client", "server CPU")
    assert (cpu.status, cpu.measured) == (NOT_MET, "75 us/op")


@pytest.mark.parametrize(
    ("median", "status"), [(100_000.0, MET), (99_999.0, NOT_MET)], ids=["at", "below"]
)
def test_a_goal_met_exactly_counts_as_met(median: float, status: str) -> None:
    run = a_run_meeting_every_target()
    run[(lb.PIPELINED, lb.LIB_RAW_PIPELINED)] = ops(median, cpu=6)
    assert row(evaluate(run), "pipelined STAT", ">= 100k ops/s").status == status


def test_what_was_not_measured_is_na_not_a_failure() -> None:
    run = a_run_meeting_every_target()
    del run[(lb.UPLOAD, lb.FILE_COPY_FSYNC)]
    run[(lb.DOWNLOAD, lb.LIB_UDS_TRIO)] = Figures(1.6, "GB/s")  # no server CPU figure
    run[(lb.UPLOAD, lb.LIB_FD)] = Figures(float("nan"), "GB/s")  # every sample failed
    results = evaluate(run)
    for workload, target in [
        ("upload, streamed", ">= 0.8x"),
        ("upload by descriptor passing", ">= 0.9x"),
        ("upload by descriptor passing", "server CPU"),
        ("16 parallel uploads", ">= 0.8x"),
        ("download over UDS", "server CPU"),
    ]:
        result = row(results, workload, target)
        assert (result.status, result.measured) == (NA, NOT_MEASURED), result
    assert row(results, "download over UDS", ">= 0.7x").status == MET


def test_parallel_uploads_prefer_the_file_copy_of_their_own_rounds() -> None:
    run = a_run_meeting_every_target()
    fallback = row(evaluate(run), "16 parallel uploads", ">= 0.8x")
    assert fallback.status == MET
    assert fallback.measured.endswith("the file copy of the upload workload's rounds")
    run[(lb.PARALLEL, lb.FILE_COPY_FSYNC)] = gbs(1.2)
    own = row(evaluate(run), "16 parallel uploads", ">= 0.8x")
    assert (own.status, own.measured) == (NOT_MET, "0.71x (0.85 vs 1.20 GB/s)")


def test_nothing_measured_gives_every_row_na() -> None:
    results = evaluate({})
    assert {r.status for r in results} == {NA}
    assert len(results) == 27


def test_paced_crowd_compares_within_rounds_not_medians() -> None:
    run = a_run_meeting_every_target()
    # One round where the machine stalled Librorum's clients but not the echo's: the ratio
    # of the medians is 2.8x, the median of the per-round ratios 1.4x.
    run[(lb.CROWD, lb.crowd_echo(lb.PACED))] = p99({0: 1.0, 1: 10.0, 2: 20.0})
    run[(lb.CROWD, lb.crowd_uds(lb.PACED))] = p99({0: 1.4, 1: 50.0, 2: 28.0})
    results = evaluate(run)
    paced = row(results, "100 clients, paced", "p99")
    assert paced.status == MET
    assert paced.measured.startswith("1.40x, median of 3 rounds (1.40x, 5.00x, 1.40x)")
    # Rounds only one of them has are left out.
    run[(lb.CROWD, lb.crowd_uds(lb.PACED))] = p99({1: 50.0, 2: 28.0, 3: 1.0})
    assert row(evaluate(run), "100 clients, paced", "p99").measured.startswith(
        "3.20x, median of 2 rounds (5.00x, 1.40x)"
    )


def test_paced_crowd_errors_fail_the_no_errors_row() -> None:
    run = a_run_meeting_every_target()
    run[(lb.CROWD, lb.crowd_uds(lb.PACED))] = p99({0: 12.0, 1: 5.0, 2: 25.0}, errors=3)
    results = evaluate(run)
    assert row(results, "100 clients, paced", "p99").status == MET
    errors = row(results, "100 clients, paced", "no errors")
    assert (errors.status, errors.measured) == (NOT_MET, "3 errors over all rounds")


def test_rclone_is_compared_with_its_faster_client_each_way() -> None:
    run = a_run_meeting_every_target()
    # Upload: http.client (0.25) is the faster; the CLI at 0.7 GB/s is 2.8x of it.
    run[(lb.UPLOAD, lb.LIB_CLI_PUT)] = gbs(0.7)
    results = evaluate(run)
    cli = row(results, "against rclone", "upload >= 3x rclone, from the CLI")
    assert cli.status == NOT_MET
    assert cli.measured == (
        "2.80x (0.70 vs 0.25 GB/s); rclone with http.client, the faster "
        "(it never fsyncs what it stores)"
    )
    clients = row(results, "against rclone", "upload >= 3x rclone, from the clients")
    assert (clients.status, clients.measured.split(" (")[0]) == (MET, "3.80x")
    # Download: curl (0.45) is the faster. The CLI rows say what a command costs by itself.
    run[(lb.DOWNLOAD, lb.LIB_CLI_GET)] = Figures(1.5, "GB/s", {"startup_s": 0.3})
    get = row(evaluate(run), "against rclone", "download >= 3x rclone, from the CLI")
    assert get.measured == (
        "3.33x (1.50 vs 0.45 GB/s); rclone with curl, the faster; "
        "librorum ping alone (start-up, connect, exit): 0.30 s"
    )
    # Without rclone, n/a.
    for label in (lb.RCLONE_CURL_GET, lb.RCLONE_PY_GET):
        del run[(lb.DOWNLOAD, label)]
    missing = row(evaluate(run), "against rclone", "download >= 3x rclone, from the CLI")
    assert missing.status == NA


def test_rss_targets_and_the_quick_runs_smaller_load() -> None:
    run = a_run_meeting_every_target()
    moving = row(evaluate(run), "daemon peak RSS", "<= 100 MiB moving 20 GiB")
    assert (moving.status, moving.measured) == (MET, "50.0 MiB after moving 20.0 GiB")
    run[(lb.RSS, lb.RSS_MOVING)] = Figures(101.0, "MiB", {"moved_gib": 1.0})
    run[(lb.RSS, lb.RSS_CONCURRENT)] = Figures(250.0, "MiB", {"uploads": 16, "upload_mib": 64})
    results = evaluate(run, quick=True)
    moving = row(results, "daemon peak RSS", "<= 100 MiB moving 20 GiB")
    assert moving.status == NOT_MET
    assert moving.measured.endswith("(quick run: less than 20 GiB)")
    # Fewer uploads than the target names cannot meet it.
    assert row(results, "daemon peak RSS", "<= 300 MiB with 64").status == NOT_MET


def test_text_table_lists_each_row_and_counts() -> None:
    results = evaluate(a_run_meeting_every_target())
    text = text_table(results)
    lines = text.splitlines()
    assert lines[1] == "== Targets (medians of this run) =="
    # The header, then one line per row, then the counts.
    assert len(lines) == 2 + 1 + len(results) + 1
    assert lines[-1].strip() == "23 met, 0 not met, 4 n/a"
    # A workload's name is printed once, on its first row.
    assert sum("sequential STAT, sync client, UDS" in line for line in lines) == 1


@attrs.define
class _Item:
    label: str
    unit: str
    stats: Stats


@attrs.define
class _Workload:
    key: str
    items: list[_Item]


def test_figures_of_a_run_pair_each_sample_with_its_round() -> None:
    paced = Stats()
    # Round 1's sample failed: it has no value and no round; the others keep theirs.
    paced.add(3.0, round=0.0, errors=0.0, server_cpu=100.0)
    paced.extra.setdefault("failed", []).append(1.0)
    paced.add(5.0, round=2.0, errors=2.0, server_cpu=300.0)
    unmeasured = _Item("not run", "GB/s", Stats())
    run = [_Workload(lb.CROWD, [_Item("paced", "ms p99", paced), unmeasured])]
    found = figures(run)
    assert list(found) == [(lb.CROWD, "paced")]
    got = found[(lb.CROWD, "paced")]
    assert got.by_round == {0: 3.0, 2: 5.0}
    assert (got.median, got.unit, got.errors, got.failed) == (4.0, "ms p99", 2.0, 1.0)
    assert got.extra["server_cpu"] == 200.0
