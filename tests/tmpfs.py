"""A small tmpfs for the tests that fill a disk to its last byte (root only: mounting needs
it, and CI runs as root; the fault-injecting file-system shim covers the same cases for
everyone else)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

#: Whether this process may mount a tmpfs.
CAN_MOUNT = os.geteuid() == 0


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "64m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (created) for the block, always unmounted
    after (lazily: a file still open on it does not keep it mounted)."""
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)
