"""The files that guard the daemon: its private socket directory, the bearer token, and the
single-instance lock. Each check refuses rather than repairs: a directory or token file that
someone else could read or replace means the setup is compromised or wrong, and the operator
must look at it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from librorum.config import ConfigError
from librorum.transport.base import AlreadyRunningError

#: Bytes of randomness in a new token (encoded as 43 URL-safe characters).
TOKEN_BYTES: Final = 32
#: A token file larger than this is not one of ours.
_MAX_TOKEN_FILE: Final = 4096
_PRIVATE_DIR_MODE: Final = 0o700
_PRIVATE_FILE_MODE: Final = 0o600


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700, or check the existing directory.

    The final directory must be a real directory (not a symlink), owned by our effective uid,
    with no group or other permission bits: in a shared place like /tmp anyone could have
    created it first, and then owned whatever we put in it.

    Raises:
        ConfigError: the path is not a directory, belongs to another user, or is accessible to
            group or others; or it cannot be created.
    """
    try:
        path.mkdir(mode=_PRIVATE_DIR_MODE, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        msg = f"cannot create directory {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    try:
        info = path.lstat()
    except OSError as exc:
        msg = f"cannot inspect directory {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    if not stat.S_ISDIR(info.st_mode):
        msg = f"{path} is not a directory (a symlink or a file is there); refusing to use it"
        raise ConfigError(msg)
    if info.st_uid != os.geteuid():
        msg = (
            f"directory {path} belongs to uid {info.st_uid}, not to us (uid {os.geteuid()}); "
            "refusing to use it: remove it or choose another path"
        )
        raise ConfigError(msg)
    if info.st_mode & 0o077:
        msg = (
            f"directory {path} is accessible to group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); fix it with `chmod 700 {path}`"
        )
        raise ConfigError(msg)


def load_or_create_token(path: Path) -> str:
    """Read the bearer token from ``path``, creating the file first if it does not exist.

    A new file is created atomically (O_CREAT|O_EXCL, mode 0600, never following a symlink)
    and holds ``secrets.token_urlsafe(32)``; its directory is created 0700 if missing. An
    existing file must be a regular file owned by us and unreadable by group and others.

    Raises:
        ConfigError: the file is unsafe (permissions, owner, not a regular file), empty,
            unreadable, or cannot be created.
    """
    try:
        path.parent.mkdir(mode=_PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(
            path,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            _PRIVATE_FILE_MODE,
        )
    except FileExistsError:
        return _read_token(path)
    except OSError as exc:
        msg = f"cannot create token file {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(token + "\n")
            file.flush()
            # A daemon restarted after a crash must find the same token its clients hold.
            os.fsync(file.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        msg = f"cannot write token file {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    return token


def _read_token(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            msg = f"token file {path} is a symlink; refusing to follow it"
        else:
            msg = f"cannot read token file {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    with os.fdopen(fd, "rb") as file:
        # fstat, not stat: the checks apply to the very file we read.
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            msg = f"token file {path} is not a regular file"
            raise ConfigError(msg)
        if info.st_uid != os.geteuid():
            msg = f"token file {path} belongs to uid {info.st_uid}, not to us; refusing it"
            raise ConfigError(msg)
        if info.st_mode & 0o077:
            msg = (
                f"token file {path} is accessible to group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); the token must be treated as "
                f"leaked: delete the file to get a new one, or `chmod 600 {path}`"
            )
            raise ConfigError(msg)
        data = file.read(_MAX_TOKEN_FILE + 1)
    if len(data) > _MAX_TOKEN_FILE:
        msg = f"token file {path} is larger than {_MAX_TOKEN_FILE} bytes; not a token"
        raise ConfigError(msg)
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        msg = f"token file {path} is not ASCII text"
        raise ConfigError(msg) from exc
    if not token or any(c.isspace() for c in token):
        msg = f"token file {path} must hold one token on one line (found {len(data)} bytes)"
        raise ConfigError(msg)
    return token


def single_instance_lock(data_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Hold an exclusive lock on ``data_dir/.lock`` for the duration of the ``with`` block, so
    that two daemons never share one store. The lock is flock(2)-based: the kernel releases it
    when the process dies, so a crash never leaves a stale lock behind. The data directory is
    created 0700 if missing.

    Raises:
        AlreadyRunningError: another process (or another holder in this one) has the lock.
        ConfigError: the data directory or the lock file cannot be created or opened.
    """
    return exclusive_lock(data_dir / ".lock", f"another daemon is using {data_dir}")


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, busy_message: str) -> Iterator[None]:
    """Hold flock(LOCK_EX|LOCK_NB) on ``lock_path`` (created 0600, its directory 0700) for the
    ``with`` block. The file records the holder's pid, which the error message quotes.

    Raises:
        AlreadyRunningError: ``busy_message``: the lock is held (by another process, or by
            another open of the file in this one: flock locks belong to open files).
        ConfigError: the lock file cannot be created or opened.
    """
    try:
        lock_path.parent.mkdir(mode=_PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(
            lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, _PRIVATE_FILE_MODE
        )
    except OSError as exc:
        msg = f"cannot open lock file {lock_path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            msg = f"{busy_message}{_read_pid(fd)}"
            raise AlreadyRunningError(msg) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            # Empty the file before unlocking, so a reader never quotes a dead holder's pid.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""
