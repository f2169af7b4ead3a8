"""Run concurrent uploads in a fresh process and report its memory, as JSON on stdout.

    python -m tests.store.memory_probe DIR UPLOADS SIZE CHUNK_SIZE

The peak resident memory is reset (``/proc/self/clear_refs``) once the store is open, so the
peak reported is the burst's alone; "held" is the resident memory once every upload has
committed, the store still open, over the same baseline.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import trio

from librorum.store import open_store

MIB = 1 << 20


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    msg = f"no {field} in /proc/self/status"
    raise LookupError(msg)


def _reset_peak() -> None:
    """Make the peak resident memory (VmHWM) what is resident now."""
    Path("/proc/self/clear_refs").write_text("5")


async def main(root: Path, uploads: int, size: int, chunk_size: int) -> dict[str, float]:
    async with open_store(root, chunk_size=chunk_size) as store:
        # One source, each upload a different window of it: distinct content, no copies.
        source = memoryview(os.urandom(size + uploads * 4096))
        _reset_peak()
        base = _status("VmRSS")

        async def upload(i: int) -> None:
            async with await store.begin_upload(f"/u{i}", size=size) as up:
                for start in range(i * 4096, i * 4096 + size, MIB):
                    await up.write(source[start : start + MIB])
                await up.commit()

        async with trio.open_nursery() as nursery:
            for i in range(uploads):
                nursery.start_soon(upload, i)
        peak = _status("VmHWM")
        held = _status("VmRSS")
    return {"peak_mib": (peak - base) / MIB, "held_mib": (held - base) / MIB}


if __name__ == "__main__":
    directory, count, total, chunk = sys.argv[1:5]
    result = trio.run(main, Path(directory), int(count), int(total), int(chunk))
    print(json.dumps(result))
