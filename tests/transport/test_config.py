"""Configuration: layering, validation, and the safety rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from librorum.config import (
    Config,
    ConfigError,
    default_data_dir,
    default_socket_path,
    is_loopback,
    load_config,
)
from librorum.limits import MAX_CONNECTIONS


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_follow_xdg(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": "/xdg/data", "XDG_RUNTIME_DIR": "/run/user/7"}
    config = load_config(env=env)
    assert config.data_dir == Path("/xdg/data/librorum")
    assert config.socket_path == Path("/run/user/7/librorum/librorum.sock")
    assert config.token_file == Path("/xdg/data/librorum/token")
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 7878)
    assert config.remote_enabled
    assert config.allowed_uids == (os.getuid(),)
    assert config.max_connections == MAX_CONNECTIONS
    assert config.tls_cert is None
    assert config.log_level == "INFO"
    assert config.url is None


def test_defaults_without_xdg(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": "relative/ignored"}
    assert default_data_dir(env) == tmp_path / ".local/share/librorum"
    assert default_socket_path(env) == Path(f"/tmp/librorum-{os.getuid()}/librorum.sock")


def test_precedence_defaults_file_env_overrides(tmp_path: Path) -> None:
    config_file = write(
        tmp_path / "config.toml",
        'data_dir = "/from/file"\nsocket_path = "/from/file.sock"\nlisten_port = 9000\n'
        'log_level = "debug"\nmax_connections = 10\n',
    )
    env = {"HOME": str(tmp_path), "LIBRORUM_SOCKET": "/from/env.sock"}
    overrides = {"listen_port": 9100, "max_connections": None}
    config = load_config(config_file=config_file, env=env, overrides=overrides)
    assert config.data_dir == Path("/from/file")  # file beats default
    assert config.socket_path == Path("/from/env.sock")  # env beats file
    assert config.listen_port == 9100  # override beats file
    assert config.max_connections == 10  # None overrides nothing
    assert config.log_level == "DEBUG"
    assert config.token_file == Path("/from/file/token"), "token_file follows the final data_dir"
    env["LIBRORUM_DATA_DIR"] = "/from/env"
    config = load_config(config_file=config_file, env=env, overrides={"data_dir": "/from/cli"})
    assert config.data_dir == Path("/from/cli")


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    config_file = write(tmp_path / "other.toml", "listen_port = 1234\n")
    config = load_config(env={"HOME": str(tmp_path), "LIBRORUM_CONFIG": str(config_file)})
    assert config.listen_port == 1234


def test_default_config_file_is_optional(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert load_config(env=env).listen_port == 7878
    (tmp_path / ".config/librorum").mkdir(parents=True)
    write(tmp_path / ".config/librorum/config.toml", "listen_port = 4321\n")
    assert load_config(env=env).listen_port == 4321


def test_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(config_file=tmp_path / "missing.toml", env={"HOME": str(tmp_path)})


def test_relative_paths_in_the_file_are_relative_to_it(tmp_path: Path) -> None:
    config_file = write(tmp_path / "config.toml", 'data_dir = "store"\ntoken_file = "secret"\n')
    config = load_config(config_file=config_file, env={"HOME": str(tmp_path)})
    assert config.data_dir == tmp_path / "store"
    assert config.token_file == tmp_path / "secret"


@pytest.mark.parametrize(
    "text",
    ["lissen_port = 1\n", "[librorum]\nlisten_port = 1\n", "tokens = 'x'\n"],
    ids=["typo", "table", "unknown"],
)
def test_unknown_key_is_an_error(tmp_path: Path, text: str) -> None:
    config_file = write(tmp_path / "config.toml", text)
    with pytest.raises(ConfigError, match="unknown configuration key"):
        load_config(config_file=config_file, env={"HOME": str(tmp_path)})


def test_unknown_override_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown configuration key 'colour'"):
        load_config(env={"HOME": str(tmp_path)}, overrides={"colour": "blue"})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('listen_port = "80"\n', "listen_port"),
        ("listen_port = 70000\n", "0-65535"),
        ("remote_enabled = 1\n", "true or false"),
        ("max_connections = 0\n", "positive"),
        ("allowed_uids = []\n", "non-empty"),
        ('log_level = "loud"\n', "log level"),
        ("not toml at all\n", "not valid TOML"),
        ('tls_cert = "/c.pem"\n', "both"),
    ],
)
def test_bad_values_are_errors(tmp_path: Path, text: str, match: str) -> None:
    config_file = write(tmp_path / "config.toml", text)
    with pytest.raises(ConfigError, match=match):
        load_config(config_file=config_file, env={"HOME": str(tmp_path)})


def test_environment_strings_are_parsed(tmp_path: Path) -> None:
    config = load_config(
        env={"HOME": str(tmp_path), "LIBRORUM_URL": "ws://localhost:7878"},
        overrides={"allowed_uids": "0, 1000", "remote_enabled": "no", "handshake_timeout": "2.5"},
    )
    assert config.url == "ws://localhost:7878"
    assert config.allowed_uids == (0, 1000)
    assert not config.remote_enabled
    assert config.handshake_timeout == 2.5


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost.", True),
        ("db.localhost", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_non_loopback_needs_tls_and_token(tmp_path: Path) -> None:
    base = {"data_dir": tmp_path, "socket_path": tmp_path / "s.sock"}
    with pytest.raises(ConfigError, match="without TLS"):
        Config(**base, listen_host="0.0.0.0")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="without a token_file and TLS"):
        Config(**base, listen_host="192.0.2.1", token_file=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="without a token_file"):
        Config(
            **base,  # type: ignore[arg-type]
            listen_host="192.0.2.1",
            token_file=None,
            tls_cert=tmp_path / "c.pem",
            tls_key=tmp_path / "k.pem",
        )
    secure = Config(
        **base,  # type: ignore[arg-type]
        listen_host="192.0.2.1",
        tls_cert=tmp_path / "c.pem",
        tls_key=tmp_path / "k.pem",
    )
    assert secure.tls_enabled
    # Loopback, or no listener at all, needs neither.
    Config(**base, listen_host="localhost", token_file=None)  # type: ignore[arg-type]
    Config(**base, listen_host="0.0.0.0", remote_enabled=False)  # type: ignore[arg-type]


def test_non_loopback_rule_applies_through_load_config(tmp_path: Path) -> None:
    config_file = write(tmp_path / "config.toml", 'listen_host = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match="non-loopback"):
        load_config(config_file=config_file, env={"HOME": str(tmp_path)})


def test_empty_token_file_means_none(tmp_path: Path) -> None:
    config_file = write(tmp_path / "config.toml", 'token_file = ""\n')
    assert load_config(config_file=config_file, env={"HOME": str(tmp_path)}).token_file is None


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://localhost:7878", "ws://HOST"),
        ("ws://", "ws://HOST"),
        ("ws://192.0.2.1:7878", "unencrypted"),
    ],
)
def test_client_url_is_checked(tmp_path: Path, url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(env={"HOME": str(tmp_path), "LIBRORUM_URL": url})


def test_secure_remote_url_is_fine(tmp_path: Path) -> None:
    config = load_config(env={"HOME": str(tmp_path), "LIBRORUM_URL": "wss://192.0.2.1:7878"})
    assert config.url == "wss://192.0.2.1:7878"


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(env={"HOME": str(tmp_path)})
    with pytest.raises(AttributeError):
        config.listen_port = 1  # type: ignore[misc]
