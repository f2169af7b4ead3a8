"""The guard files: the token, the instance lock, the private directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from librorum.config import ConfigError
from librorum.transport import (
    AlreadyRunningError,
    ensure_private_dir,
    load_or_create_token,
    single_instance_lock,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_token_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "token"
    token = load_or_create_token(path)
    assert len(token) >= 43  # 32 random bytes, URL-safe base64
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert path.read_text() == token + "\n"
    assert load_or_create_token(path) == token
    assert load_or_create_token(tmp_path / "other") != token


def test_token_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_or_create_token(tmp_path / "token")
    finally:
        os.umask(old)
    assert mode(tmp_path / "token") == 0o600


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o660])
def test_token_readable_by_others_is_refused(tmp_path: Path, bits: int) -> None:
    path = tmp_path / "token"
    load_or_create_token(path)
    path.chmod(bits)
    with pytest.raises(ConfigError, match="leaked"):
        load_or_create_token(path)


def test_token_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    load_or_create_token(real)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ConfigError, match="symlink"):
        load_or_create_token(tmp_path / "link")


def test_empty_token_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.touch(mode=0o600)
    with pytest.raises(ConfigError, match="one token"):
        load_or_create_token(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_token_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    load_or_create_token(path)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to uid 65534"):
        load_or_create_token(path)


def test_single_instance_lock(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with single_instance_lock(data_dir):
        assert mode(data_dir) == 0o700
        with (
            pytest.raises(AlreadyRunningError, match=rf"another daemon is using {data_dir}"),
            single_instance_lock(data_dir),
        ):
            pass
        # The error names the holder.
        with (
            pytest.raises(AlreadyRunningError, match=rf"pid {os.getpid()}"),
            single_instance_lock(data_dir),
        ):
            pass
    with single_instance_lock(data_dir):  # released on exit
        pass


def test_private_dir_created_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    ensure_private_dir(path)
    assert mode(path) == 0o700
    ensure_private_dir(path)  # an existing private directory is fine


@pytest.mark.parametrize("bits", [0o750, 0o705, 0o777])
def test_shared_dir_is_refused(tmp_path: Path, bits: int) -> None:
    path = tmp_path / "run"
    path.mkdir()
    path.chmod(bits)
    with pytest.raises(ConfigError, match="accessible to group or others"):
        ensure_private_dir(path)


def test_symlinked_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match="not a directory"):
        ensure_private_dir(tmp_path / "run")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away needs root")
def test_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    # What an attacker who created /tmp/librorum-<uid> first would leave behind.
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to uid 65534"):
        ensure_private_dir(path)
