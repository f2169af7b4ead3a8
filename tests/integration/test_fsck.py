"""`librorum fsck` and the background scrub against a real daemon: a chunk corrupted on disk
is found and named by its file, a repair quarantines it and lists the file for upload, the
upload heals it; the scrub finds such a chunk by itself and `status` shows it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import trio

from librorum.protocol.messages import FsckReply
from librorum.service.checks import QUIET
from librorum.testing import open_test_daemon
from tests.integration.test_cli import assert_one_line_error, cli, local


def corrupt(data_dir: Path, content: bytes) -> str:
    """Flip a byte of the stored chunk of ``content`` (one chunk: its digest is the
    content's). Returns the digest."""
    digest = blake3.blake3(content).hexdigest()
    path = data_dir / "store" / "chunks" / digest[:2] / digest
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    return digest


async def test_fsck_finds_repair_lists_upload_heals(tmp_path: Path) -> None:
    good, bad = os.urandom(100_000), os.urandom(200_000)
    (tmp_path / "good.bin").write_bytes(good)
    (tmp_path / "bad.bin").write_bytes(bad)
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d") as daemon:
            base = local(daemon)
            assert (await cli(*base, "mkdir", "/docs")).returncode == 0
            assert (
                await cli(*base, "put", tmp_path / "good.bin", "/docs/good.bin")
            ).returncode == 0
            assert (await cli(*base, "put", tmp_path / "bad.bin", "/docs/bad.bin")).returncode == 0
            clean = await cli(*base, "fsck")
            assert clean.returncode == 0, clean
            assert b"store: clean" in clean.stdout

            digest = corrupt(daemon.config.data_dir, bad)
            found = await cli(*base, "fsck")
            assert found.returncode == 1, found
            out = found.stdout.decode()
            assert "corrupt chunks (now quarantined): 1" in out
            assert digest in out
            assert "files affected: 1\n  /docs/bad.bin" in out
            assert "/docs/good.bin" not in out
            assert found.stderr == b""
            (tmp_path / "fsck-transcript.txt").write_text(out)

            repaired = await cli(*base, "fsck", "--repair")
            assert repaired.returncode == 1, repaired
            out = repaired.stdout.decode()
            assert "files to upload again: 1\n  /docs/bad.bin" in out
            assert (daemon.config.data_dir / "store" / "quarantine" / digest).exists()
            as_json = await cli(*base, "fsck", "--json")
            assert as_json.returncode == 1
            document = json.loads(as_json.stdout)
            assert document["ok"] is False
            assert document["affected"] == ["/docs/bad.bin"]
            assert document["quarantined_count"] == 1

            # The content uploaded again heals the file: the store is clean.
            assert (await cli(*base, "put", tmp_path / "bad.bin", "/docs/bad.bin")).returncode == 0
            healed = await cli(*base, "fsck")
            assert healed.returncode == 0, healed
            assert (await cli(*base, "cat", "/docs/bad.bin")).stdout == bad
            status = (await cli(*base, "status")).stdout.decode()
            assert "last fsck" in status
            assert "clean" in status


async def test_fsck_is_for_administrators(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d", admin_uids=[os.getuid() + 1]) as daemon:
            refused = await cli(*local(daemon), "fsck")
            assert_one_line_error(refused, "administrators")


async def test_the_scrub_finds_a_corrupt_chunk_and_status_shows_it(tmp_path: Path) -> None:
    content = os.urandom(300_000)
    (tmp_path / "f.bin").write_bytes(content)
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path / "d") as daemon:
            base = local(daemon)
            assert (await cli(*base, "put", tmp_path / "f.bin", "/f.bin")).returncode == 0
            data_dir = daemon.config.data_dir
        digest = corrupt(data_dir, content)
        # Restarted with a fast scrub: its first pass starts at once.
        async with (
            open_test_daemon(tmp_path / "d", scrub_rate=1 << 30, scrub_interval=3600) as daemon,
            daemon.client() as client,
        ):
            # Polled slowly: the scrub runs only after QUIET seconds without a request.
            while (await client.status()).scrub_corrupt_found == 0:  # noqa: ASYNC110 - polled
                await trio.sleep(4 * QUIET)
            status = await client.status()
            assert status.store.quarantined == 1
            assert status.scrub_chunks_verified >= 1
            assert (data_dir / "store" / "quarantine" / digest).exists()
            shown = (await cli(*local(daemon), "status")).stdout.decode()
            assert "1 DAMAGED found" in shown
        # Where the scrub stood is kept for the next start.
        assert (data_dir / "scrub.json").exists()


async def test_fsck_over_websocket_with_the_token_and_progress(tmp_path: Path) -> None:
    # Over WebSocket the token makes the caller an administrator.
    with trio.fail_after(120):
        async with open_test_daemon(tmp_path / "d") as daemon, daemon.client("websocket") as client:
            for i in range(12):
                await client.write(f"/f{i}", os.urandom(4 << 20))
            seen: list[FsckReply] = []
            report = await client.fsck(repair=True, on_progress=seen.append)
            assert report.ok
            assert report.repaired
            assert report.chunks_done == 12
            # Progress replies (about one a second, so maybe none here) are never the report.
            assert all(p.phase != "done" for p in seen)
            status = await client.status()
            assert status.last_fsck_ms > 0
            assert status.last_fsck_ok
