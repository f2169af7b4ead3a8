"""fsck and repair of the embedded store, each defect made on disk as an accident or an
operator would make it: a chunk file deleted, an orphan chunk file added, a chunk's bytes
flipped, a reference count changed in the database."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import blake3

from librorum.store import open_store
from librorum.store.backend import DB_NAME
from tests.store.conftest import TEST_CHUNK_SIZE

CS = TEST_CHUNK_SIZE


def chunk_path(root: Path, digest: str) -> Path:
    return root / "chunks" / digest[:2] / digest


def chunks_of(root: Path, path_name: str) -> list[str]:
    with sqlite3.connect(root / DB_NAME) as db:
        (blob,) = db.execute("SELECT chunks FROM entries WHERE name = ?", (path_name,)).fetchone()
    return [bytes(blob[i : i + 32]).hex() for i in range(0, len(blob), 32)]


async def test_defects_on_disk_are_found_then_repaired(tmp_path: Path) -> None:
    root = tmp_path / "store"
    content = {name: os.urandom(2 * CS) for name in ("flipped", "deleted", "recount", "fine")}
    async with open_store(root, chunk_size=CS) as store:
        for name, data in content.items():
            await store.write_bytes(f"/{name}", data)
    flipped, deleted, recount = (chunks_of(root, n)[0] for n in ("flipped", "deleted", "recount"))
    # The defects, made with the store closed.
    path = chunk_path(root, flipped)
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01
    path.write_bytes(bytes(data))
    chunk_path(root, deleted).unlink()
    stray = os.urandom(CS)
    orphan = blake3.blake3(stray).hexdigest()
    chunk_path(root, orphan).parent.mkdir(exist_ok=True)
    chunk_path(root, orphan).write_bytes(stray)
    with sqlite3.connect(root / DB_NAME) as db:
        db.execute("UPDATE chunks SET refs = 3 WHERE digest = ?", (bytes.fromhex(recount),))

    async with open_store(root, chunk_size=CS) as store:
        report = await store.fsck()
        assert report.corrupt == [flipped]
        assert report.missing == [deleted]
        assert report.orphans == [orphan]
        assert report.refcount_errors == [f"{recount}: recorded 3, counted 1"]
        assert report.affected == ["/deleted", "/flipped"]
        assert (root / "quarantine" / flipped).exists()

        repaired = await store.repair()
        assert repaired.orphans_removed == 1
        assert repaired.refcounts_fixed == 1
        assert repaired.reupload == ["/deleted", "/flipped"]
        assert not chunk_path(root, orphan).exists()
        with sqlite3.connect(root / DB_NAME) as db:
            (refs,) = db.execute(
                "SELECT refs FROM chunks WHERE digest = ?", (bytes.fromhex(recount),)
            ).fetchone()
        assert refs == 1
        assert await store.read_bytes("/recount") == content["recount"]
        assert await store.read_bytes("/fine") == content["fine"]
