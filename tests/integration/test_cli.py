"""The command line, run as a real subprocess against a real daemon: outputs and exit codes
(0 success, 1 operation error with one line on stderr, 2 usage error; never a traceback)."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from librorum.testing import TestDaemon, open_test_daemon


def environment() -> dict[str, str]:
    """The tests' environment without the LIBRORUM_* variables of whoever runs them."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LIBRORUM_")}


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "librorum", *map(str, args)]


async def cli(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        command(*args),
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=environment(),
    )


def local(daemon: TestDaemon) -> list[str | Path]:
    return ["--socket", daemon.socket_path]


def assert_one_line_error(result: subprocess.CompletedProcess[bytes], *words: str) -> None:
    assert result.returncode == 1, result
    err = result.stderr.decode()
    assert err.count("\n") == 1, err
    assert err.startswith("librorum: ")
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


async def test_file_commands_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d") as daemon:
            base = local(daemon)
            assert (await cli(*base, "mkdir", "-p", "/a/b")).returncode == 0
            assert (await cli(*base, "put", source, "/a/b/s.bin")).returncode == 0
            assert (await cli(*base, "put", "-", "/a/note.txt", stdin=b"hello\n")).returncode == 0
            result = await cli(*base, "cat", "/a/note.txt")
            assert result.stdout == b"hello\n"
            copy = tmp_path / "copy.bin"
            assert (await cli(*base, "get", "/a/b/s.bin", copy)).returncode == 0
            assert copy.read_bytes() == source.read_bytes()
            listing = (await cli(*base, "ls", "-l", "/a")).stdout.decode().splitlines()
            assert [line.split()[-1] for line in listing] == ["b", "note.txt"]
            assert listing[1].split()[1:3] == ["6", "B"]
            stat = (await cli(*base, "stat", "/a/b/s.bin")).stdout.decode()
            assert "2.0 MiB" in stat
            assert "blake3" in stat
            assert (await cli(*base, "mv", "/a/note.txt", "/note.txt")).returncode == 0
            assert (await cli(*base, "ls", "/")).stdout.decode().split() == ["a/", "note.txt"]
            assert (await cli(*base, "rm", "-r", "/a")).returncode == 0
            status = (await cli(*base, "status")).stdout.decode()
            assert "files" in status
            assert "1 in 1 directories" in status
            assert (await cli(*base, "ping")).stdout.startswith(b"pong in ")


async def test_remote_commands_use_the_token(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            remote = ["--url", daemon.url, "--transport", "remote"]
            ok = await cli(*remote, "--token-file", daemon.token_file, "put", "-", "/r", stdin=b"x")
            assert ok.returncode == 0, ok.stderr
            assert (
                await cli(*remote, "--token-file", daemon.token_file, "cat", "/r")
            ).stdout == b"x"
            assert_one_line_error(await cli(*remote, "ls", "/"), "401")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["stat", "/missing"], ["no such file"]),
        (["mkdir", "/x/y"], ["no such"]),
        (["rm", "/"], []),
        (["put", "/definitely/not/here.bin", "/x"], ["No such file"]),
    ],
)
async def test_operation_errors_exit_1_with_one_line(
    args: list[str], words: list[str], tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            assert_one_line_error(await cli(*local(daemon), *args), *words)


async def test_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    empty_token = tmp_path / "token"
    empty_token.touch()
    cases: list[tuple[list[str | Path], str]] = [
        (["bogus"], "invalid choice: 'bogus'"),
        (["put", "only-one"], "librorum put: the following arguments are required: remote"),
        ([], "the following arguments are required: COMMAND"),
        (["ls", "-z"], "unrecognized arguments: -z"),
        (["ping", "-c", "0"], "must be at least 1"),
        (["serve", "--log-level", "loud"], "invalid choice: 'LOUD'"),
        (["serve", "--listen", "7878"], "--listen wants HOST:PORT, got '7878'"),
        # Where to connect: not a WebSocket URL, no URL at all, a token file with no token.
        (["--url", "http://example.org", "ping"], "not a WebSocket URL"),
        (["--transport", "remote", "ping"], "no URL for transport='remote'"),
        (["--url", "ws://127.0.0.1:9", "--token-file", empty_token, "ping"], "is empty"),
    ]
    for args, words in cases:
        result = await cli(*args)
        assert result.returncode == 2, (args, result)
        err = result.stderr.decode()
        assert err.count("\n") == 1, (args, err)
        assert err.startswith("librorum"), (args, err)
        assert words in err, (args, err)


async def test_no_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    result = await cli("--socket", tmp_path / "none.sock", "--transport", "local", "ping")
    assert_one_line_error(result, "librorum serve")


@pytest.mark.parametrize("clash", ["data-dir", "port"])
async def test_serve_startup_errors_are_one_line(clash: str, tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "first") as daemon:
            assert daemon.running.websocket is not None
            host, port = daemon.running.websocket
            second = tmp_path / "second"
            args: list[str | Path] = ["serve", "--socket", second / "run" / "s.sock"]
            if clash == "data-dir":
                # Held by the running daemon: refused before anything starts.
                args += ["--data-dir", daemon.config.data_dir, "--no-remote"]
            else:
                # The port is taken: fails inside the daemon's nurseries, where errors
                # come out wrapped in exception groups.
                args += ["--data-dir", second / "data", "--listen", f"{host}:{port}"]
            result = await cli(*args)
    # The daemon logs to stderr too; the error is its last line, and there is no traceback.
    assert result.returncode == 1, result
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("librorum: "), err
    assert ("data" if clash == "data-dir" else "cannot listen") in last


async def test_serve_takes_the_global_socket_option_too(tmp_path: Path) -> None:
    """`librorum --socket X serve` serves on X: here X is a live daemon's socket, which
    is never taken over, so the second daemon refuses to start, naming it."""
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "first") as daemon:
            args = ["--socket", daemon.socket_path, "serve", "--no-remote"]
            result = await cli(*args, "--data-dir", tmp_path / "second")
    assert result.returncode == 1, result
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    assert str(daemon.socket_path) in err.splitlines()[-1], err


async def test_ls_of_a_file_describes_the_file(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            base = local(daemon)
            assert (await cli(*base, "put", "-", "/dir/f.txt", stdin=b"abc")).returncode == 1
            assert (await cli(*base, "mkdir", "/dir")).returncode == 0
            assert (await cli(*base, "put", "-", "/dir/f.txt", stdin=b"abc")).returncode == 0
            assert (await cli(*base, "ls", "/dir/f.txt")).stdout == b"f.txt\n"
            line = (await cli(*base, "ls", "-l", "/dir/f.txt")).stdout.decode().split()
            assert line[0] == "-"
            assert line[-1] == "f.txt"
            assert_one_line_error(await cli(*base, "ls", "/nope"), "no such")


async def test_more_output_forms(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            base = local(daemon)
            put = await cli(*base, "-v", "put", "-", "/f", stdin=b"abc")
            assert re.fullmatch(r"/f: 3 bytes, version \d+\n", put.stdout.decode())
            assert (await cli(*base, "get", "/f", "-")).stdout == b"abc"
            assert (await cli(*base, "mkdir", "/empty")).returncode == 0
            empty = await cli(*base, "ls", "-l", "/empty")
            assert (empty.returncode, empty.stdout) == (0, b"")
            stat = (await cli(*base, "stat", "/empty")).stdout.decode()
            assert "directory" in stat
            assert "blake3" not in stat
            pings = (await cli(*base, "ping", "-c", "3")).stdout.decode().splitlines()
            assert len(pings) == 3
            assert all(line.startswith("pong in ") for line in pings)


def read_terminal(master: int) -> str:
    """Everything written to a pseudo-terminal whose other side is closed."""
    out = bytearray()
    while True:
        try:
            data = os.read(master, 65536)
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the other side is closed and all was read
                raise
            break
        if not data:
            break
        out += data
    return out.decode()


async def test_put_and_get_show_progress_on_a_terminal(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 << 20))
    copy = tmp_path / "copy.bin"
    outputs = []
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d") as daemon:
            base = [*local(daemon), "--transport", "local"]
            for args, stdin in (
                (["put", source, "/p"], b""),
                (["put", "-", "/s"], b"x" * (2 << 20)),
                (["get", "/p", copy], b""),
            ):
                master, terminal = os.openpty()
                try:
                    result = await trio.run_process(
                        command(*base, *args), stdin=stdin, stderr=terminal, env=environment()
                    )
                finally:
                    os.close(terminal)
                assert result.returncode == 0
                outputs.append(read_terminal(master))
                os.close(master)
    assert copy.read_bytes() == source.read_bytes()
    put_file, put_stdin, get = outputs
    # A known size gets a bar and a percentage; stdin's size is unknown: bytes and a rate.
    assert re.search(r"put /p \[#{30}\] 100% 3\.0 MiB/3\.0 MiB .*/s ETA 0s", put_file)
    assert re.search(r"put /s \d+\.\d MiB .*/s", put_stdin)
    assert "[" not in put_stdin
    assert re.search(r"get /p \[#{30}\] 100% 3\.0 MiB/3\.0 MiB", get)
    for output in outputs:
        assert output.endswith("\n"), output  # the bar's line is ended, once
        assert "Traceback" not in output


async def test_interrupt_says_so_in_one_line(tmp_path: Path) -> None:
    """Ctrl-C while waiting for the daemon: one line and status 130, no traceback. The
    "daemon" here accepts the connection and never answers, so the command is certainly
    waiting when the signal comes (its HELLO has arrived)."""
    path = tmp_path / "silent.sock"
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(1)
    with trio.fail_after(60), listener:
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                partial_process,
                command("--socket", path, "--transport", "local", "ping"),
            )
            connection, _ = await listener.accept()
            with connection:
                assert await connection.recv(65536)  # the HELLO
                process.send_signal(signal.SIGINT)
                await process.wait()
    assert (process.returncode, process.stderr_text) == (130, "librorum: interrupted\n")


async def partial_process(
    args: list[str], *, task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run ``args`` with stderr captured into ``process.stderr_text`` once it exits."""
    process = await trio.lowlevel.open_process(
        args, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment()
    )
    task_status.started(process)
    assert process.stderr is not None
    err = bytearray()
    async for data in process.stderr:
        err += data
    await process.wait()
    process.stderr_text = err.decode()  # type: ignore[attr-defined]


async def test_a_reader_that_leaves_early_is_no_error(tmp_path: Path) -> None:
    """`librorum cat big | head -c 10`: the pipe closes under the command, which stops
    quietly with status 0."""
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon:
            async with daemon.client() as client:
                await client.write("/big", os.urandom(8 << 20))
            process = await trio.lowlevel.open_process(
                command(*local(daemon), "cat", "/big"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=environment(),
            )
            assert process.stdout is not None
            assert process.stderr is not None
            try:
                assert await process.stdout.receive_some(10)
                await process.stdout.aclose()
                err = b"".join([data async for data in process.stderr])
            finally:
                await process.wait()
    assert process.returncode == 0
    assert err == b""


async def test_serve_with_its_own_options_then_sigterm(tmp_path: Path) -> None:
    """`librorum serve` with every path and the log level on the command line: it creates
    the token file (0600), serves local and remote clients, and stops on SIGTERM."""
    token_file = tmp_path / "secret" / "token"
    token_file.parent.mkdir()
    socket_path = tmp_path / "run" / "s.sock"
    args: list[str | Path] = [
        "serve", "--data-dir", tmp_path / "data", "--socket", socket_path,
        "--listen", "127.0.0.1:0", "--token-file", token_file, "--log-level", "debug",
    ]  # fmt: skip
    log = bytearray()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            process = await trio.lowlevel.open_process(
                command(*args), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env=environment(),
            )  # fmt: skip
            assert process.stderr is not None
            serving = trio.Event()
            url: list[str] = []

            async def pump() -> None:
                assert process.stderr is not None
                async for data in process.stderr:
                    log.extend(data)
                    found = re.search(rb"serving .* and (ws://\S+)", log)
                    if found and not serving.is_set():
                        url.append(found.group(1).decode())
                        serving.set()

            nursery.start_soon(pump)
            await serving.wait()
            assert token_file.stat().st_mode & 0o777 == 0o600
            remote: list[str | Path] = ["--url", url[0], "--transport", "remote"]
            remote += ["--token-file", token_file]
            assert (await cli(*remote, "put", "-", "/r", stdin=b"remote")).returncode == 0
            assert (await cli("--socket", socket_path, "cat", "/r")).stdout == b"remote"
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    text = log.decode()
    assert "DEBUG" in text
    assert "SIGTERM received" in text
    assert text.splitlines()[-1].endswith("stopped")
    assert "Traceback" not in text
