"""The node's identity: a random id created once in the data directory and kept for good, so
that NODE_STATUS, logs and metrics name the same node across restarts (spec 5.5)."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Final

from librorum.config import ConfigError

#: The file in the data directory.
NODE_ID_FILE: Final = "node_id"
#: What an id looks like: 32 lowercase hex digits (128 random bits).
_NODE_ID: Final = re.compile(r"[0-9a-f]{32}")


def load_or_create_node_id(data_dir: Path) -> str:
    """The node id kept in ``data_dir``, created on first use.

    Creation is atomic: the id is written to a temporary file (mode 0600) and fsynced, then
    linked to its name, which fails if another process linked one first (that one is kept).
    No reader ever sees a partial file, and a crash leaves the old state or the whole id.

    Cancellation: not applicable (blocking, a few small file operations; call it at start).

    Raises:
        ConfigError: the file cannot be read or created, or does not hold an id.
    """
    path = data_dir / NODE_ID_FILE
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    node_id = secrets.token_hex(16)
    temp = data_dir / f".{NODE_ID_FILE}.{secrets.token_hex(4)}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, f"{node_id}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another process won the race: its id is the node's
        else:
            # The new name must survive a crash too.
            dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as exc:
        msg = f"cannot create the node id file {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    finally:
        temp.unlink(missing_ok=True)
    try:
        return _read(path)
    except FileNotFoundError as exc:
        msg = f"the node id file {path} vanished while it was created"
        raise ConfigError(msg) from exc


def _read(path: Path) -> str:
    try:
        with path.open("rb") as file:
            # A few bytes are an id; more is not one of ours, and is not read whole.
            text = file.read(256).decode("ascii", errors="replace").strip()
    except FileNotFoundError:
        raise
    except OSError as exc:
        msg = f"cannot read the node id file {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    if not _NODE_ID.fullmatch(text):
        msg = f"{path} does not hold a node id (32 hex digits); remove it to get a new one"
        raise ConfigError(msg)
    return text
