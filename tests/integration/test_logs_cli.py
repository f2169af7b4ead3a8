"""`librorum logs` and the daemon's log settings, against real daemons: the last records,
following them until Ctrl-C, JSON lines, and `serve --log-file` (rotated) with
`--log-format json`."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
from pathlib import Path

import trio

from librorum.testing import open_test_daemon

from .test_cli import cli, command, environment, local


async def test_logs_prints_the_last_records(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d", remote_enabled=False) as daemon:
            for _ in range(7):
                assert (await cli(*local(daemon), "ping")).returncode == 0
            result = await cli(*local(daemon), "logs", "-n", "5", "--grep", "closed after")
            as_json = await cli(*local(daemon), "logs", "-n", "3", "--json")
            everything = await cli(*local(daemon), "logs", "-n", "1000", "--level", "info")
            errors = await cli(*local(daemon), "logs", "--level", "error")
    assert result.returncode == 0, result
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 5
    for line in lines:
        # As the daemon writes its log: time, level, logger, message.
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO librorum.server: ", line)
        assert "closed after" in line
    assert as_json.returncode == 0
    records = [json.loads(line) for line in as_json.stdout.decode().splitlines()]
    assert len(records) == 3
    assert {"seq", "time", "level", "logger", "message"} <= records[0].keys()
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    assert "serving" in everything.stdout.decode()
    assert (errors.returncode, errors.stdout) == (0, b"")


async def test_logs_follow_until_ctrl_c(tmp_path: Path) -> None:
    """`logs -f`: lines come as the daemon logs them; SIGINT ends it with status 0."""
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d", remote_enabled=False) as daemon:
            process = await trio.lowlevel.open_process(
                command(*local(daemon), "logs", "-f", "-n", "0", "--grep", "closed after"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment(),
            )
            assert process.stdout is not None
            assert process.stderr is not None
            out = bytearray()
            try:
                # Pings until the line of one of them shows up: the follower is certainly
                # following by then (it may have started after the first pings).
                while b"closed after" not in out:
                    assert (await cli(*local(daemon), "ping")).returncode == 0
                    with trio.move_on_after(0.5):
                        out += await process.stdout.receive_some()
                process.send_signal(signal.SIGINT)
                async for data in process.stdout:
                    out += data
                err = b"".join([data async for data in process.stderr])
            finally:
                await process.wait()
    assert process.returncode == 0, err
    assert b"Traceback" not in err
    assert b"INFO librorum.server: connection from uds:" in out


async def test_logs_follow_ends_with_one_line_when_the_daemon_stops(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d", remote_enabled=False) as daemon:
            process = await trio.lowlevel.open_process(
                command(*local(daemon), "logs", "-f", "--json"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment(),
            )
            assert process.stdout is not None
            # The first record (the last one logged) arrives once the follower follows.
            assert await process.stdout.receive_some()
        # The daemon shut down: the follow ends.
        err = b""
        assert process.stderr is not None
        err = b"".join([data async for data in process.stderr])
        await process.wait()
    assert process.returncode == 1
    text = err.decode()
    assert text.count("\n") == 1, text
    assert text.startswith("librorum: ")


async def test_logs_are_for_administrators(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d", remote_enabled=False, admin_uids=[0]) as d:
            result = await cli(*local(d), "logs")
    if result.returncode == 0:  # running as root: uid 0 is the admin
        return
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.count("\n") == 1
    assert "administrators" in err


async def test_serve_writes_json_lines_to_a_rotated_log_file(tmp_path: Path) -> None:
    log_file = tmp_path / "log" / "librorum.log"
    config = tmp_path / "config.toml"
    config.write_text("log_file_max_bytes = 2000\nlog_file_backups = 2\n")
    socket_path = tmp_path / "run" / "s.sock"
    args: list[str | Path] = [
        "serve", "--config", config, "--data-dir", tmp_path / "data", "--socket", socket_path,
        "--no-remote", "--log-file", log_file, "--log-format", "json",
    ]  # fmt: skip
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            command(*args), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment()
        )
        try:
            # Serving once a ping answers: the log goes to the file, so stderr says nothing
            # to wait on, and another process offers no event; bounded by the fail_after.
            while (await cli("--socket", socket_path, "ping")).returncode != 0:  # noqa: ASYNC110
                await trio.sleep(0.05)
            for _ in range(30):
                assert (await cli("--socket", socket_path, "ping")).returncode == 0
            tail = await cli("--socket", socket_path, "logs", "-n", "2", "--grep", "closed")
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.stderr is not None
            err = b"".join([data async for data in process.stderr])
            await process.wait()
    assert process.returncode == 0, err
    assert err == b""  # everything went to the file
    files = sorted(p.name for p in log_file.parent.iterdir())
    assert files == ["librorum.log", "librorum.log.1", "librorum.log.2"]
    for path in log_file.parent.iterdir():
        assert path.stat().st_size <= 2000 + 400  # a file rotates before a line overflows it
        for line in path.read_text().splitlines():
            record = json.loads(line)
            assert {"time", "level", "logger", "message"} <= record.keys()
    last = [json.loads(line) for line in log_file.read_text().splitlines()][-1]
    assert last["message"] == "stopped"
    assert tail.returncode == 0
    assert len(tail.stdout.decode().splitlines()) == 2


async def test_the_async_client_reads_and_follows_the_log(tmp_path: Path) -> None:
    """Over the Unix socket and over WebSocket with the token: a page, the figures, and a
    follower whose leaving cancels the stream (the connection serves on)."""
    marker = logging.getLogger("librorum.logtest")
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d") as daemon:
            for transport in ("uds", "websocket"):
                async with daemon.client(transport) as client:
                    page = await client.log_get(newest_first=True, limit=5)
                    assert page.records
                    assert page.records[0].seq > page.records[-1].seq
                    stats = await client.log_stats()
                    assert stats.levels["INFO"] >= 1
                    assert stats.capacity == 10_000
                    async with client.follow_log(logger="librorum.logtest") as follower:
                        marker.warning("followed over %s", transport)
                        batch = await follower.__anext__()
                        assert [r.message for r in batch.records] == [f"followed over {transport}"]
                        assert follower.cursor == batch.cursor
                    # Leaving cancelled the stream; the connection serves on.
                    assert await client.ping() >= 0


async def test_a_follower_ended_by_the_daemon_resumes_past_what_its_filter_skipped(
    tmp_path: Path,
) -> None:
    """The daemon's final reply carries the cursor to resume from (spec 5.19): past the
    records logged since the last batch that the filter left out."""
    marker = logging.getLogger("librorum.logtest")
    with trio.fail_after(60):
        async with (
            open_test_daemon(tmp_path / "d") as daemon,
            daemon.client() as client,
            client.follow_log(logger="librorum.logtest") as follower,
        ):
            marker.warning("one for the follower")
            batch = await follower.__anext__()
            logging.getLogger("librorum.other").warning("not for the follower")
            daemon.shutdown()
            assert await follower.receive() is None
            assert follower.cursor > batch.cursor
