"""The metrics endpoint of a real daemon, scraped over loopback: the HTTP rules (token, one
path, GET only, bounded requests) and figures that move after real operations."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from librorum.errors import NotFoundError
from librorum.server.http import MAX_REQUEST_BYTES
from librorum.testing import TestDaemon, open_test_daemon


async def http(
    address: tuple[str, int], request: bytes, *, limit: int = 1 << 22
) -> tuple[int, dict[str, str], bytes]:
    """Send a raw HTTP request; the status, headers and body of the answer (the endpoint
    closes the connection after it)."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(request)
        data = bytearray()
        while len(data) < limit:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def scrape_token(daemon: TestDaemon) -> str:
    """The token a scrape presents: the metrics' own, not the WebSocket token."""
    assert daemon.config.metrics_token_file is not None
    return daemon.config.metrics_token_file.read_text().strip()


def get(path: str, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(daemon: TestDaemon) -> Samples:
    assert daemon.running.metrics is not None
    token = scrape_token(daemon)
    status, headers, body = await http(daemon.running.metrics, get("/metrics", token))
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_scraping_a_real_daemon_shows_figures_that_move(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path, metrics_listen="127.0.0.1:0") as daemon:
            before = await scrape(daemon)
            assert value(before, "librorum_store_files") == 0
            assert (
                value(before, "librorum_inflight_budget_bytes") == daemon.config.max_inflight_bytes
            )
            assert value(before, "process_resident_memory_bytes") > 0
            assert value(before, "process_cpu_seconds_total") > 0
            assert value(before, "librorum_store_read_only") == 0
            content = b"metrics " * 100_000  # 800 kB: streamed, not passed as a descriptor
            async with daemon.client(pass_fds=False) as client:
                await client.write("/a.bin", content)
                await client.write("/b.bin", content)  # deduplicated
                with pytest.raises(NotFoundError):
                    await client.stat("/missing")
                await client.stat("/a.bin")
                assert await client.read("/b.bin") == content
                report = await client.fsck()
                assert report.ok
            after = await scrape(daemon)
    in_before = value(before, "librorum_transport_received_bytes_total", transport="uds")
    in_after = value(after, "librorum_transport_received_bytes_total", transport="uds")
    assert in_after - in_before >= 2 * len(content)
    assert value(after, "librorum_requests_total", command="WRITE", outcome="ok") == 2
    assert value(after, "librorum_requests_total", command="STAT", outcome="NOT_FOUND") == 1
    assert value(after, "librorum_requests_total", command="STAT", outcome="ok") == 1
    # A READ ends with its last DATA frame: that is a success, not a cancellation.
    assert value(after, "librorum_requests_total", command="READ", outcome="ok") == 1
    assert value(after, "librorum_requests_total", command="READ", outcome="CANCELLED") == 0
    sent = value(after, "librorum_transport_sent_bytes_total", transport="uds")
    assert sent - value(before, "librorum_transport_sent_bytes_total", transport="uds") > len(
        content
    )
    assert value(after, "librorum_request_errors_total", **{"class": "client"}) == 1
    assert value(after, "librorum_request_errors_total", **{"class": "server"}) == 0
    assert value(after, "librorum_request_duration_seconds_count", command="WRITE") == 2
    assert value(after, "librorum_request_duration_seconds_bucket", command="WRITE", le="+Inf") == 2
    assert value(after, "librorum_request_duration_seconds_sum", command="WRITE") > 0
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in after.items()
        if name == "librorum_request_duration_seconds_bucket" and ("command", "WRITE") in labels
    )
    assert len(buckets) > 10
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)  # cumulative
    assert value(after, "librorum_connections_accepted_total", transport="uds") >= 1
    assert value(after, "librorum_store_files") == 2
    assert value(after, "librorum_store_logical_bytes") == 2 * len(content)
    assert value(after, "librorum_store_dedup_saved_bytes") == len(content)
    assert value(after, "librorum_store_free_bytes") > 0
    # Each chunk file and its shard directory was fsynced.
    assert value(after, "librorum_fsync_duration_seconds_count") > value(
        before, "librorum_fsync_duration_seconds_count"
    )
    # Each file's commit, and the metadata's, were timed.
    assert (
        value(after, "librorum_metadata_commit_duration_seconds_count")
        >= value(before, "librorum_metadata_commit_duration_seconds_count") + 2
    )
    assert value(after, "librorum_uploads_in_flight") == 0
    # The check's figures (spec 5.20): none before, the fsck's after.
    assert value(before, "librorum_fsck_last_timestamp_seconds") == 0
    assert value(after, "librorum_fsck_last_timestamp_seconds") > 0
    assert value(after, "librorum_fsck_last_ok") == 1
    assert value(after, "librorum_fsck_chunks_verified_total") == report.chunks_done > 0
    assert value(after, "librorum_fsck_running") == 0
    assert value(after, "librorum_scrub_corrupt_found_total") == 0


async def test_the_endpoint_answers_only_what_it_serves(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path, metrics_listen="127.0.0.1:0") as daemon:
            address = daemon.running.metrics
            assert address is not None
            token = scrape_token(daemon)
            status, headers, _ = await http(address, get("/metrics", None))
            assert status == 401
            assert headers["www-authenticate"].startswith("Bearer")
            assert (await http(address, get("/metrics", "wrong")))[0] == 401
            # The WebSocket token (an administrator's, spec 2.5) does not open the metrics,
            # and the metrics token is a token of its own.
            admin_token = daemon.token_file.read_text().strip()
            assert admin_token != token
            assert (await http(address, get("/metrics", admin_token)))[0] == 401
            assert (await http(address, get("/", token)))[0] == 404
            assert (await http(address, get("/metrics/x", token)))[0] == 404
            post = f"POST /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            post += "Content-Length: 3\r\n\r\nabc"
            status, headers, _ = await http(address, post.encode())
            assert status == 405
            assert headers["allow"] == "GET"
            # A request head beyond the bound: refused, not buffered.
            huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (2 * MAX_REQUEST_BYTES) + b"\r\n\r\n"
            assert (await http(address, huge))[0] == 431
            assert (await http(address, b"nonsense\r\n\r\n"))[0] == 400
            # A query string is no other page.
            assert (await http(address, get("/metrics?x=1", token)))[0] == 200
            # The scheme in any case, as for the WebSocket token; two tokens are none.
            lower = f"GET /metrics HTTP/1.1\r\nHost: x\r\nauthorization: bearer {token}\r\n\r\n"
            assert (await http(address, lower.encode()))[0] == 200
            twice = get("/metrics", token).replace(
                b"\r\n\r\n", f"\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
            )
            assert (await http(address, twice))[0] == 401


async def test_without_a_token_the_endpoint_is_open_and_off_by_default(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "a") as daemon:
            assert daemon.running.metrics is None
        async with open_test_daemon(
            tmp_path / "b",
            metrics_listen="127.0.0.1:0",
            metrics_token_file="",
            remote_enabled=False,
        ) as daemon:
            assert daemon.running.metrics is not None
            assert (await http(daemon.running.metrics, get("/metrics", None)))[0] == 200
