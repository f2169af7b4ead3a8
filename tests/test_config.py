"""Configuration values of each kind: what every source may spell them as, and what is
refused (with the key, the value and the kind expected in the message)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import attrs
import pytest

from librorum.config import Config, ConfigError, load_config


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("data_dir", Path("/srv/data"), Path("/srv/data")),
        ("token_file", "", None),
        ("listen_port", "8080", 8080),
        ("shutdown_grace", 3, 3.0),
        ("shutdown_grace", "inf", math.inf),  # wait for requests in flight as long as they take
        ("remote_enabled", "Off", False),
        ("remote_enabled", "1", True),
        ("allowed_uids", [1000], (1000,)),
        ("allowed_uids", "0 1000,1001", (0, 1000, 1001)),
        ("admin_uids", "0 1000", (0, 1000)),
        ("log_level", "warning", "WARNING"),
        ("url", "", None),
    ],
)
def test_values_each_source_may_give(
    tmp_path: Path, key: str, value: object, expected: object
) -> None:
    config = load_config(env={"HOME": str(tmp_path)}, overrides={key: value})
    assert getattr(config, key) == expected


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("data_dir", 5, "a path"),
        ("data_dir", "", "a path"),
        ("data_dir", "a\0b", "a path"),
        ("listen_port", 80.5, "an integer"),
        ("listen_port", True, "an integer"),
        ("listen_port", "eighty", "an integer"),
        ("shutdown_grace", True, "a number"),
        ("shutdown_grace", [1], "a number"),
        ("shutdown_grace", "soon", "a number"),
        ("remote_enabled", 2, "true or false"),
        ("remote_enabled", "maybe", "true or false"),
        ("allowed_uids", 1000, "a list of uids"),
        ("allowed_uids", "me", "a list of uids"),
        ("admin_uids", "me", "a list of uids"),
        ("listen_host", 127001, "a string"),
        ("url", 7878, "a string"),
        ("log_level", 10, "a log level"),
        ("log_level", "loud", "a log level"),
    ],
)
def test_values_of_the_wrong_kind_are_refused(
    tmp_path: Path, key: str, value: object, expected: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(env={"HOME": str(tmp_path)}, overrides={key: value})
    assert str(raised.value).startswith(f"overrides: {key} = {value!r}: expected {expected}")


@pytest.mark.parametrize("spelling", ["nan", "NaN", "-inf", "0", "-1"])
def test_a_timeout_must_be_a_positive_number(tmp_path: Path, spelling: str) -> None:
    with pytest.raises(ConfigError, match="handshake_timeout must be positive"):
        load_config(env={"HOME": str(tmp_path)}, overrides={"handshake_timeout": spelling})
    config_file = tmp_path / "config.toml"
    config_file.write_text(f"handshake_timeout = {spelling.lower()}\n")
    with pytest.raises(ConfigError, match="handshake_timeout must be positive"):
        load_config(config_file=config_file, env={"HOME": str(tmp_path)})


def test_a_config_built_directly_is_validated_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("log_level must be one of DEBUG, INFO")):
        Config(data_dir=tmp_path, socket_path=tmp_path / "s", log_level="LOUD")
    with pytest.raises(ConfigError, match="shutdown_grace must be positive"):
        Config(data_dir=tmp_path, socket_path=tmp_path / "s", shutdown_grace=math.nan)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('remote_enabled = "yes"\n', "true or false"),
        ('shutdown_grace = "inf"\n', "a number"),
        ('allowed_uids = "0 1000"\n', "a list of uids"),
        # Each uid too: only the command line and the environment spell numbers as text.
        ('allowed_uids = ["1000"]\n', "a list of uids"),
        ("allowed_uids = [true]\n", "a list of uids"),
        ("listen_host = 127\n", "a string"),
        ('log_level = ["INFO"]\n', "a log level"),
    ],
)
def test_a_file_must_give_each_value_its_toml_type(
    tmp_path: Path, text: str, expected: str
) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text(text)
    key = text.split(" = ")[0]
    with pytest.raises(ConfigError) as raised:
        load_config(config_file=config_file, env={"HOME": str(tmp_path)})
    assert str(raised.value).startswith(f"{config_file}: {key} = ")
    assert f": expected {expected}" in str(raised.value)


def _as_text(value: object) -> str:
    """How a person would write ``value`` on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


def test_every_setting_can_be_given_as_text(tmp_path: Path) -> None:
    # Every field's type has a reader for text: the command line can set each one.
    reference = Config(
        data_dir=tmp_path / "data",
        socket_path=tmp_path / "s.sock",
        tls_cert=tmp_path / "c.pem",
        tls_key=tmp_path / "k.pem",
        url="wss://example.com:7878",
        allowed_uids=(0, 1000),
        log_level="DEBUG",
        remote_enabled=False,
        listen_port=9,
        shutdown_grace=2.5,
    )
    overrides = {
        field.name: _as_text(getattr(reference, field.name)) for field in attrs.fields(Config)
    }
    assert load_config(env={"HOME": str(tmp_path)}, overrides=overrides) == reference


def test_the_metrics_listener_follows_the_websocket_rules(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert load_config(env=env).metrics_listen is None  # off by default
    assert load_config(env=env, overrides={"metrics_listen": "[::1]:9100"}).metrics_listen
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        load_config(env=env, overrides={"metrics_listen": "9100"})
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        load_config(env=env, overrides={"metrics_listen": "localhost:99999"})
    # Off loopback: TLS and a token, or no listener, whatever the WebSocket listener does.
    public = {"metrics_listen": "0.0.0.0:9100", "remote_enabled": False}
    with pytest.raises(ConfigError, match="refusing to serve metrics on non-loopback host"):
        load_config(env=env, overrides=public)
    with pytest.raises(ConfigError, match="without a metrics_token_file and TLS"):
        load_config(env=env, overrides={**public, "metrics_token_file": ""})
    tls = {"tls_cert": tmp_path / "c.pem", "tls_key": tmp_path / "k.pem"}
    assert load_config(env=env, overrides={**public, **tls}).metrics_listen == "0.0.0.0:9100"


def test_the_log_settings_from_the_environment_and_their_checks(tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path),
        "LIBRORUM_LOG_FORMAT": "json",
        "LIBRORUM_LOG_FILE": str(tmp_path / "d.log"),
    }
    config = load_config(env=env)
    assert (config.log_format, config.log_file) == ("json", tmp_path / "d.log")
    assert (config.log_file_max_bytes, config.log_file_backups, config.log_ring_size) == (
        10 * 1024 * 1024,
        5,
        10_000,
    )
    assert load_config(env={"HOME": str(tmp_path)}).log_file is None
    with pytest.raises(ConfigError, match="log_format must be one of text, json"):
        load_config(env={"HOME": str(tmp_path)}, overrides={"log_format": "xml"})
    with pytest.raises(ConfigError):
        load_config(env={"HOME": str(tmp_path)}, overrides={"log_ring_size": "0"})
