"""Integrity end to end: a daemon never acknowledges an upload whose chunks are not known to
be good, and uploading the content again heals a chunk that rotted on disk."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest
import trio

from librorum.errors import CorruptDataError
from librorum.store import DEFAULT_CHUNK_SIZE
from librorum.testing import Transport, open_test_daemon

CS = DEFAULT_CHUNK_SIZE
MIB = 1 << 20


def content(size: int) -> bytes:
    """Bytes that differ in every chunk (so that no chunk is stored twice)."""
    block = os.urandom(MIB)
    return b"".join(bytes([index]) + block[1:] for index in range(-(-size // MIB)))[:size]


def chunk_file(data_dir: Path, chunk: bytes) -> Path:
    digest = blake3.blake3(chunk).hexdigest()
    return data_dir / "store" / "chunks" / digest[:2] / digest


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    with path.open("r+b") as file:
        file.write(raw)


# "uds" streams the upload, "uds-fd" passes the file's descriptor (ingest_fd), "websocket"
# streams over the remote transport.
@pytest.mark.parametrize("how", ["uds", "uds-fd", "websocket"])
async def test_reuploading_rotten_content_heals_it(how: str, tmp_path: Path) -> None:
    data = content(2 * CS + 12345)
    transport: Transport = "websocket" if how == "websocket" else "uds"
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon, daemon.client(transport) as client:
            await client.write("/f", data)
            flip_byte(chunk_file(daemon.config.data_dir, data[CS : 2 * CS]), CS // 2)
            with pytest.raises(CorruptDataError):
                await client.read("/f")
            if how == "uds-fd":
                source = tmp_path / "source"
                source.write_bytes(data)
                info = await client.write("/g", source)
            else:
                info = await client.write("/g", data)
            assert info.content_hash == blake3.blake3(data).digest()
            # Acknowledged means readable, and the older file is whole again too.
            assert await client.read("/g") == data
            assert await client.read("/f") == data


async def test_node_status_and_the_cli_report_quarantined_chunks(tmp_path: Path) -> None:
    import subprocess
    import sys

    data = content(CS + 100)
    with trio.fail_after(60):
        async with open_test_daemon(tmp_path) as daemon, daemon.client() as client:
            await client.write("/f", data)
            assert (await client.status()).store.quarantined == 0
            flip_byte(chunk_file(daemon.config.data_dir, data[:CS]), 7)
            with pytest.raises(CorruptDataError):
                await client.read("/f")
            status = await client.status()
            assert status.store.quarantined == 1
            assert not status.store.read_only
            shown = await trio.run_process(
                [sys.executable, "-m", "librorum", "--socket", daemon.socket_path, "status"],
                capture_stdout=True,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            assert b"1 corrupt chunks (re-upload to heal)" in shown.stdout
            # Files cannot be read meanwhile: the node is degraded, and says why.
            assert shown.returncode == 2
            assert b"1 chunks quarantined" in shown.stdout
            await client.write("/g", data)  # heals it
            assert (await client.status()).store.quarantined == 0
