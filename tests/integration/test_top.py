"""``librorum top`` against a real daemon over its Unix socket: the client's ``requests()``,
the command line's ``top --once`` (text and JSON) and its refreshing JSON lines ended by
Ctrl-C, and FORBIDDEN for a caller who is not an administrator."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from librorum.client import Client, RequestEntry, open_client
from librorum.errors import ForbiddenError
from librorum.testing import open_test_daemon

from .test_cli import assert_one_line_error, cli, command, environment

#: What the client's stalled upload sends before it stops.
SENT = 1 << 20
#: The read window of the client that does not read.
WINDOW = 64 << 10


async def wait_for(client: Client, test: Callable[[RequestEntry], bool]) -> RequestEntry:
    """Poll REQUESTS until an entry passes ``test`` (bounded by the caller's deadline)."""
    while True:
        for entry in (await client.requests()).requests:
            if test(entry):
                return entry
        await trio.sleep(0.02)


async def test_top_shows_a_stalled_upload_and_an_unread_download(tmp_path: Path) -> None:
    stop = trio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"s" * SENT
        await stop.wait()  # the client stops sending: the upload waits on its peer

    with trio.fail_after(60):
        async with (
            open_test_daemon(tmp_path / "d") as daemon,
            open_client(socket_path=daemon.socket_path) as client,
            open_client(socket_path=daemon.socket_path, read_window=WINDOW) as slow,
            trio.open_nursery() as nursery,
        ):
            await client.write("/big.bin", os.urandom(4 << 20))

            async def upload() -> None:
                await client.write("/stalled.bin", stalls())

            nursery.start_soon(upload)

            async with slow.open_read("/big.bin"):  # ...and never reads it
                writing = await wait_for(
                    client, lambda e: e.path == "/stalled.bin" and e.moved == SENT
                )
                assert writing.waiting == "peer"
                assert writing.command == "WRITE"
                reading = await wait_for(client, lambda e: e.waiting == "peer credit")
                assert reading.path == "/big.bin"
                assert reading.command == "READ"
                assert reading.moved == WINDOW
                assert reading.uid == os.getuid()
                assert reading.connection != writing.connection

                result = await cli("--socket", daemon.socket_path, "top", "--once", "--json")
                assert result.returncode == 0, result
                document = json.loads(result.stdout)
                assert document["total"] == 2
                by_path = {r["path"]: r for r in document["requests"]}
                assert by_path["/stalled.bin"]["waiting"] == "peer"
                assert by_path["/stalled.bin"]["moved"] == SENT
                assert by_path["/big.bin"]["waiting"] == "peer credit"
                assert by_path["/big.bin"]["pid"] == os.getpid()

                result = await cli("--socket", daemon.socket_path, "top", "--once")
                assert result.returncode == 0, result
                text = result.stdout.decode()
                assert "2 requests in flight" in text
                header = text.splitlines()[2].split()
                assert header == [
                    "CONN",
                    "PEER",
                    "SID",
                    "COMMAND",
                    "AGE",
                    "MOVED",
                    "WAITING",
                    "PATH",
                ]
                assert "peer credit" in text
                assert "1.0 MiB" in text
                assert "\x1b" not in text  # not a terminal: plain snapshots
            stop.set()
            nursery.cancel_scope.cancel()


async def test_top_refreshes_until_interrupted(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d") as daemon:
            process = await trio.lowlevel.open_process(
                command("--socket", daemon.socket_path, "top", "--json"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment(),
            )
            assert process.stdout is not None
            received = b""
            while received.count(b"\n") < 2:  # two refreshes
                data = await process.stdout.receive_some()
                assert data, "top ended early"
                received += data
            documents = [json.loads(line) for line in received.splitlines()[:2]]
            assert all(d["total"] == 0 for d in documents)
            assert documents[1]["time"] - documents[0]["time"] >= 0.5  # about a second apart
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
            assert process.stderr is not None
            assert b"Traceback" not in await process.stderr.receive_some()


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
async def test_top_is_forbidden_to_a_caller_not_on_the_admin_list(
    tmp_path: Path, json_output: bool
) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d", admin_uids=[os.getuid() + 1]) as daemon:
            async with open_client(socket_path=daemon.socket_path) as client:
                with pytest.raises(ForbiddenError, match="administrators"):
                    await client.requests()
                assert await client.ping() >= 0  # the connection stays
            options = ["--json"] if json_output else []
            result = await cli("--socket", daemon.socket_path, "top", "--once", *options)
            assert_one_line_error(result, "administrators")


async def test_top_refuses_a_bad_limit(tmp_path: Path) -> None:
    result = await cli("--socket", tmp_path / "none.sock", "top", "-n", "5000")
    assert result.returncode == 2
    assert b"at most 1000" in result.stderr


async def test_top_on_a_terminal_draws_full_screen_and_restores_it(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d") as daemon:
            process = await trio.lowlevel.open_process(
                command("--socket", daemon.socket_path, "top"),
                stdout=slave,
                stderr=subprocess.DEVNULL,
                env=environment(),
            )
            os.close(slave)
            screen = trio.lowlevel.FdStream(master)
            received = b""
            while b"requests in flight" not in received:
                data = await screen.receive_some()
                assert data, "top ended early"
                received += data
            assert received.startswith(b"\x1b[?1049h")  # the alternate screen
            assert b"\x1b[H\x1b[2J" in received  # drawn in place
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
            # EIO (BrokenResourceError) once the last writer of the terminal is gone.
            with contextlib.suppress(trio.BrokenResourceError):
                while data := await screen.receive_some():
                    received += data
            assert received.endswith(b"\x1b[?25h\x1b[?1049l")  # the shell's screen is back
            await screen.aclose()


async def test_top_over_websocket_lists_a_remote_upload_by_address(tmp_path: Path) -> None:
    """Over WebSocket the token holder is an administrator (spec 2.5); a remote upload is
    listed with the address it comes from."""
    stop = trio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"r" * SENT
        await stop.wait()

    with trio.fail_after(60):
        async with (
            open_test_daemon(tmp_path / "d") as daemon,
            daemon.client("websocket") as remote,
            trio.open_nursery() as nursery,
        ):

            async def upload() -> None:
                await remote.write("/remote.bin", stalls())

            nursery.start_soon(upload)
            entry = await wait_for(remote, lambda e: e.moved == SENT)
            assert entry.transport == "websocket"
            assert entry.address is not None
            assert entry.address.startswith("127.0.0.1:")
            assert entry.uid is None
            assert entry.waiting == "peer"
            url = ["--url", daemon.url, "--token-file", daemon.token_file]
            result = await cli(*url, "--transport", "remote", "top", "--once")
            assert result.returncode == 0, result
            assert entry.address in result.stdout.decode()
            stop.set()
            nursery.cancel_scope.cancel()
