"""The trio primitives the async client is written with, under the names its blocking twin
(:mod:`librorum.client._sync_primitives`) gives their blocking counterparts.

``scripts/unasync.py`` generates the blocking client from the async one by renaming, not by
rewriting: whatever the two do differently below the request logic is either here (waiting,
time, files, shielding) or in the drivers (:mod:`librorum.client._async_driver`,
:mod:`librorum.client._sync_driver`).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from pathlib import Path
from typing import TypeVar

import trio

from librorum.client._common import Chunk

T = TypeVar("T")

#: Seconds on the clock the client's deadlines are measured with.
current_time = trio.current_time
#: Wait for a number of seconds. Cancellation: cancellable.
sleep = trio.sleep
#: A scheduler pass, so that a loop that never blocks still lets other tasks run.
checkpoint = trio.lowlevel.checkpoint
#: Mutual exclusion between the tasks sharing a client.
Lock = trio.Lock


def deadline_scope(deadline: float) -> trio.CancelScope:
    """A block that is cancelled (not failed) at ``deadline``: the caller checks what it got.
    The blocking twin cannot interrupt a call, so callers also check the deadline between
    steps."""
    return trio.move_on_at(deadline)


def shielded() -> trio.CancelScope:
    """A block that cancellation does not interrupt (for cleanup that must finish)."""
    return trio.CancelScope(shield=True)


async def run_sync(fn: Callable[..., T], *args: object) -> T:
    """Run a blocking call (file I/O) in a worker thread.

    Cancellation: not cancellable once started (the thread finishes the call).
    """
    return await trio.to_thread.run_sync(fn, *args)


async def write_file(path: Path, chunks: AsyncIterable[Chunk]) -> None:
    """Write ``chunks`` into ``path`` (created or truncated) as they come.

    Cancellation: cancellable between chunks; the file is closed.

    Raises:
        OSError: the file cannot be written.
    """
    async with await trio.open_file(path, "wb") as out:
        async for chunk in chunks:
            await out.write(chunk)


async def replace_file(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target`` atomically (same directory).

    Raises:
        OSError: the rename failed.
    """
    await trio.Path(source).replace(target)


async def remove_file(path: Path) -> None:
    """Remove ``path`` if it exists.

    Raises:
        OSError: it exists and cannot be removed.
    """
    await trio.Path(path).unlink(missing_ok=True)
