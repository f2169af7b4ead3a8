"""The campaign's real-daemon harness itself: it starts, reports where it listens, serves a
client, dies on SIGKILL and stops on SIGTERM."""

from __future__ import annotations

from pathlib import Path

import trio

from librorum.client.aio import open_client
from tests.reliability.harness import DaemonProcess


async def test_daemon_process_serves_and_stops(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            daemon = DaemonProcess(tmp_path)
            await daemon.start(nursery)
            assert daemon.url is not None
            assert daemon.url.startswith("ws://127.0.0.1:")
            assert daemon.rss() > 0
            assert daemon.peak_rss() >= daemon.rss()
            async with open_client(transport="local", socket_path=daemon.socket_path) as client:
                await client.write("/x", b"data")
            await daemon.kill()
            assert daemon.process is not None
            assert daemon.process.returncode == -9
            await daemon.start(nursery)
            async with open_client(
                transport="remote", url=daemon.url, token_file=daemon.token_file
            ) as client:
                assert await client.read("/x") == b"data"
            assert await daemon.stop() == 0
            assert daemon.starts == 2
            assert "stopped" in daemon.log
            assert daemon.tracebacks() == []
