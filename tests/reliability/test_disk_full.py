"""The disk-full campaign: a real daemon process whose data directory is a 64 MiB tmpfs.

Uploads of several sizes, over both transports (streamed and by descriptor over the Unix
socket, streamed over WebSocket), until the store refuses them: every refusal must be clean
(NO_SPACE for the client, no partial file, no temp file, reads still working; RELIABILITY.md
#9). Then 1-byte files and directories until they fail too, and the disk is filled to the
last byte (a file written beside the store, as another program would); deletes, renames and
reads must go on, also after a graceful restart and after a SIGKILL. Then deletes free space,
and writes must succeed again without a restart. The daemon's log must hold no traceback.

Twice: with no free-space floor (``min_free_space = 0``: the uploads run the disk out to its
last bytes, and the refusals are the file system's ENOSPC and SQLite's "database or disk is
full"), and with a 4 MiB floor (refused at the floor, at admission or at a chunk).

Figures: ``disk_full.no_floor`` and ``disk_full.floor`` in figures.json. Needs root (mounting a
tmpfs; CI runs as root); a few seconds each.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from librorum.client.aio import Client, open_client
from librorum.errors import NoSpaceError, NotFoundError
from tests.figures import FigureBook
from tests.reliability.harness import DaemonProcess
from tests.tmpfs import CAN_MOUNT, tmpfs

MIB = 1 << 20
#: The daemon's floor for new data in the second run: small, against a 64 MiB disk.
FLOOR = 4 * MIB
#: Upload sizes in turn, and how each goes: several chunks by descriptor (Unix socket), a
#: chunk and a bit streamed, less than a chunk, a few kilobytes.
UPLOADS = ((9 * MIB + 7, "fd"), (4 * MIB + 1, "stream"), (700_000, "stream"), (5_000, "stream"))
#: Refusals in a row (each size, each transport) before the disk counts as full.
REFUSALS = 8
DEADLINE = 120.0


def fill_to_the_last_byte(path: Path) -> None:
    """Take every byte left on ``path``'s file system (another program filling the disk)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (MIB, 4096, 1):
            block = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, block)
    finally:
        os.close(fd)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def content(size: int, seed: int) -> bytes:
    block = os.urandom(min(size, MIB))
    return (seed.to_bytes(8, "little") + block * (size // len(block) + 1))[:size]


class Campaign:
    def __init__(self, daemon: DaemonProcess, sources: Path) -> None:
        self.daemon = daemon
        self.sources = sources
        self.stored: dict[str, bytes] = {}
        self.figures: dict[str, int | float] = {}

    def count(self, name: str, ok: bool = True) -> None:
        self.figures[f"{name}_total"] = self.figures.get(f"{name}_total", 0) + 1
        self.figures[f"{name}_ok"] = self.figures.get(f"{name}_ok", 0) + int(ok)

    @contextlib.asynccontextmanager
    async def clients(self) -> AsyncIterator[tuple[Client, Client]]:
        daemon = self.daemon
        assert daemon.url is not None
        async with (
            open_client(transport="local", socket_path=daemon.socket_path) as local,
            open_client(transport="remote", url=daemon.url, token_file=daemon.token_file) as remote,
        ):
            yield local, remote

    def temp_files(self) -> list[str]:
        return os.listdir(self.daemon.data_dir / "store" / "tmp")

    async def upload(self, client: Client, path: str, size: int, how: str, seed: int) -> None:
        body = content(size, seed)
        if how == "fd":
            source = self.sources / f"source-{seed}"
            source.write_bytes(body)
            await client.write(path, source)
            source.unlink()
        else:
            await client.write(path, body)
        self.stored[path] = body

    async def fill_with_uploads(self, local: Client, remote: Client) -> None:
        """Upload until REFUSALS in a row were refused; check each refusal is clean."""
        in_a_row = 0
        for i in range(1000):
            size, how = UPLOADS[i % len(UPLOADS)]
            client = local if how == "fd" or i % 2 else remote
            path = f"/u{i}"
            try:
                await self.upload(client, path, size, how, seed=i)
                in_a_row = 0
                continue
            except NoSpaceError:
                in_a_row += 1
            # A clean refusal: no partial file, no temp file, reads working.
            self.figures["enospc_hit"] = self.figures.get("enospc_hit", 0) + 1
            try:
                await local.stat(path)
                visible = True
            except NotFoundError:
                visible = False
            some = next(iter(self.stored))
            readable = await remote.read(some) == self.stored[some]
            clean = not visible and not self.temp_files() and readable
            self.figures["enospc_clean"] = self.figures.get("enospc_clean", 0) + int(clean)
            if in_a_row == REFUSALS:
                break
        self.figures["uploads_stored"] = len(self.stored)

    async def until_refused(self, client: Client, kind: str) -> int:
        """1-byte files or directories until the store refuses one; how many went in."""
        for i in range(100_000):
            try:
                if kind == "mkdirs":
                    await client.mkdir(f"/dir{i}")
                else:
                    await client.write(f"/one{i}", b"x")
                    self.stored[f"/one{i}"] = b"x"
            except NoSpaceError:
                return i
        pytest.fail(f"{kind}: never refused")

    async def deletes_renames_reads(self, local: Client, remote: Client, tag: str) -> None:
        """On the full disk: one delete and one rename per transport, and every read."""
        for client in (local, remote):
            path = next(iter(self.stored))
            removed = await client.delete(path)
            self.count(f"deletes_{tag}", removed == 1)
            del self.stored[path]
            src = next(iter(self.stored))
            dst = f"/renamed-{tag}-{len(self.stored)}"
            info = await client.rename(src, dst)
            self.count(f"renames_{tag}", info.path == dst)
            self.stored[dst] = self.stored.pop(src)
        for path, body in self.stored.items():
            self.count(f"reads_{tag}", await local.read(path) == body)


@pytest.mark.skipif(not CAN_MOUNT, reason="mounting a tmpfs needs root (CI runs as root)")
@pytest.mark.parametrize("floor", [0, FLOOR], ids=["no_floor", "floor"])
async def test_a_daemon_on_a_full_disk(floor: int, tmp_path: Path, figures: FigureBook) -> None:
    started = time.monotonic()
    daemon = DaemonProcess(tmp_path / "daemon", settings={"min_free_space": floor})
    sources = tmp_path / "sources"
    sources.mkdir()
    campaign = Campaign(daemon, sources)
    with tmpfs(daemon.data_dir) as mount, trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await daemon.start(nursery)
            try:
                async with campaign.clients() as (local, remote):
                    await campaign.fill_with_uploads(local, remote)
                    campaign.figures["small_files_before_refusal"] = await campaign.until_refused(
                        local, "small_files"
                    )
                    campaign.figures["mkdirs_before_refusal"] = await campaign.until_refused(
                        remote, "mkdirs"
                    )
                    fill_to_the_last_byte(mount / "filler")
                    assert free_bytes(mount) == 0
                    await campaign.deletes_renames_reads(local, remote, "after_full")
                # A graceful restart, then a SIGKILL and a restart: still on a full disk.
                fill_to_the_last_byte(mount / "filler")
                assert await daemon.stop() == 0
                await daemon.start(nursery)
                async with campaign.clients() as (local, remote):
                    await campaign.deletes_renames_reads(local, remote, "after_restart")
                fill_to_the_last_byte(mount / "filler")
                await daemon.kill()
                await daemon.start(nursery)
                async with campaign.clients() as (local, remote):
                    await campaign.deletes_renames_reads(local, remote, "after_kill")
                    # Free space through the daemon until a write is admitted again.
                    fill_to_the_last_byte(mount / "filler")
                    freeing = time.monotonic()
                    deletes = 0
                    for attempt in range(len(campaign.stored)):
                        client = remote if attempt % 2 else local
                        try:
                            await client.write("/written-again", b"space came back")
                            break
                        except NoSpaceError:
                            path = max(campaign.stored, key=lambda p: len(campaign.stored[p]))
                            assert await client.delete(path) == 1
                            del campaign.stored[path]
                            deletes += 1
                    else:
                        pytest.fail("writes never succeeded again")
                    campaign.figures["seconds_until_writable"] = time.monotonic() - freeing
                    campaign.figures["deletes_until_writable"] = deletes
                    await remote.write("/written-again-remote", b"space came back")
                    await local.mkdir("/dir-again")
                    for path, body in campaign.stored.items():
                        assert await remote.read(path) == body
                assert await daemon.stop() == 0
            finally:
                await daemon.kill()
    tracebacks = daemon.tracebacks()
    campaign.figures["tracebacks"] = len(tracebacks)
    campaign.figures["restarts"] = daemon.starts - 1
    campaign.figures["seconds"] = time.monotonic() - started
    figures.record("disk_full." + ("floor" if floor else "no_floor"), campaign.figures)
    assert tracebacks == [], daemon.log_tail(80)
    for name, value in campaign.figures.items():
        if name.endswith("_ok"):
            assert value == campaign.figures[name[:-3] + "_total"], campaign.figures
    assert campaign.figures["enospc_clean"] == campaign.figures["enospc_hit"] >= REFUSALS
    assert campaign.figures["uploads_stored"] >= 4
