"""Memory: an upload's buffers are bounded by a small constant, whatever the chunk size, and
a burst of uploads leaves little memory held once it is over.

Measured in a fresh process (``memory_probe.py``), since resident memory is a property of the
process: 16 concurrent uploads of one 16 MiB chunk each, each written in 1 MiB pieces.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from librorum.store import open_store
from librorum.store.store import DEFAULT_MAX_IDLE_BUFFERS, DEFAULT_UPLOAD_BUFFER
from tests.store.test_api import data

MIB = 1 << 20
UPLOADS = 16
CHUNK = 16 * MIB
#: An upload's buffers by default (two of DEFAULT_UPLOAD_BUFFER), with room for the rest of
#: the process's allocations during the burst (threads' stacks, metadata, the event loop).
PER_UPLOAD_BOUND = 2 * DEFAULT_UPLOAD_BUFFER + MIB // 2
#: The repository root: where ``python -m tests.store.memory_probe`` runs.
ROOT = Path(__file__).resolve().parents[2]


async def test_concurrent_uploads_hold_a_few_buffers_each(tmp_path: Path) -> None:
    with trio.fail_after(120):
        result = await trio.run_process(
            [
                sys.executable,
                "-m",
                "tests.store.memory_probe",
                str(tmp_path / "store"),
                str(UPLOADS),
                str(CHUNK),
                str(CHUNK),
            ],
            capture_stdout=True,
            cwd=ROOT,
        )
    figures = json.loads(result.stdout)
    # Before the upload buffers, each upload held a whole chunk (and up to two more in its
    # chunk jobs): 16 x 16 MiB at the least.
    assert figures["peak_mib"] * MIB < UPLOADS * PER_UPLOAD_BOUND, figures
    # What stays resident is the pool's few idle buffers, not the burst's.
    held_bound = DEFAULT_MAX_IDLE_BUFFERS * DEFAULT_UPLOAD_BUFFER + 8 * MIB
    assert figures["held_mib"] * MIB < held_bound, figures


async def test_an_upload_uses_at_most_its_pipeline_of_buffers(tmp_path: Path) -> None:
    """The bound, exactly: buffers taken by one upload never exceed ``upload_pipeline``,
    and all of them are back in the pool (within its bound) when it ends."""
    content = data(5 * 8192 + 100, seed=3)
    with trio.fail_after(20):
        async with open_store(
            tmp_path / "s", chunk_size=8192, upload_buffer=4096, upload_pipeline=3
        ) as store:
            pool = store._engine.upload_buffers
            taken = 0
            most = 0
            get, put = pool.get, pool.put

            def counting_get():  # type: ignore[no-untyped-def]
                nonlocal taken, most
                taken += 1
                most = max(most, taken)
                return get()

            def counting_put(buf):  # type: ignore[no-untyped-def]
                nonlocal taken
                taken -= 1
                put(buf)

            pool.get, pool.put = counting_get, counting_put  # type: ignore[method-assign]
            async with await store.begin_upload("/f") as up:
                for start in range(0, len(content), 3000):
                    await up.write(content[start : start + 3000])
                await up.commit()
            assert most == 3
            assert taken == 0
            assert pool.idle <= DEFAULT_MAX_IDLE_BUFFERS
            assert await store.read_bytes("/f") == content
