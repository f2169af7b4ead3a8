"""Configuration of the daemon and of its clients: one frozen :class:`Config`, built by
:func:`load_config` from four layers, each overriding the one before:

1. the defaults documented on :class:`Config`;
2. a TOML file: ``config_file`` if given, else ``$LIBRORUM_CONFIG``, else
   ``$XDG_CONFIG_HOME/librorum/config.toml`` (``~/.config/librorum/config.toml``) when it
   exists. Keys are the :class:`Config` field names at the **top level** of the file (no
   ``[librorum]`` table: the file belongs to Librorum alone); an unknown key is an error, so a
   typo never silently falls back to a default. Relative paths in the file are relative to the
   file's directory;
3. the environment (empty values count as unset):

   ``LIBRORUM_DATA_DIR``
       ``data_dir``.
   ``LIBRORUM_SOCKET``
       ``socket_path``: where the daemon listens and where local clients connect.
   ``LIBRORUM_TOKEN_FILE``
       ``token_file``: the daemon reads (or creates) it, remote clients send its content.
   ``LIBRORUM_URL``
       ``url``, **clients only**: ``ws://host:port`` or ``wss://host:port`` of a remote
       daemon; unset means "use the local socket". The daemon never reads it: where it
       listens is ``listen_host``/``listen_port``, so a client setting leaking into the
       daemon's environment cannot move or expose its listener.
   ``LIBRORUM_CONFIG``
       the TOML file of layer 2 (when ``config_file`` is not given).

4. ``overrides``, from the command line: field names to values; ``None`` means "not given".

Nothing here touches the filesystem but reading the TOML file: the socket directory is created
and checked by :func:`librorum.transport.serve_uds`, the token file by
:func:`librorum.transport.load_or_create_token`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final

import attrs
import cattrs

from librorum.errors import LibrorumError
from librorum.limits import (
    AUTH_BACKOFF_MAX,
    AUTH_FAILURES_ALLOWED,
    FRAME_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT_UDS,
    IDLE_TIMEOUT_WS,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_IP,
    MAX_CONNECTIONS_PER_UID,
    MAX_INFLIGHT_BYTES,
    MAX_UNAUTHENTICATED,
    MIN_FREE_SPACE,
    RECLAIM_AFTER,
    SHUTDOWN_GRACE,
    STREAM_TIMEOUT,
)

#: The WebSocket port when none is configured.
DEFAULT_PORT: Final = 7878
#: The name of the socket file inside its private directory.
SOCKET_NAME: Final = "librorum.sock"


class ConfigError(LibrorumError):
    """The configuration is invalid or unsafe: a bad key or value, or a file or directory
    with permissions that would expose the daemon."""


# --- Defaults that depend on the environment ---------------------------------------------------


def default_data_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_DATA_HOME/librorum``, else ``~/.local/share/librorum``. A relative
    ``XDG_DATA_HOME`` is ignored, as the XDG specification requires."""
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "librorum"
    return _home(env) / ".local" / "share" / "librorum"


def default_socket_path(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_RUNTIME_DIR/librorum/librorum.sock`` when ``XDG_RUNTIME_DIR`` is set (a per-user
    tmpfs the system cleans at logout), else ``/tmp/librorum-<uid>/librorum.sock``. Either
    directory is created 0700 by the daemon, which refuses to use one that another user owns
    or that group or others can access: in /tmp, anyone could have created it first."""
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime):
        return Path(runtime) / "librorum" / SOCKET_NAME
    return Path("/tmp") / f"librorum-{os.getuid()}" / SOCKET_NAME


def default_config_file(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/librorum/config.toml``, else ``~/.config/librorum/config.toml``."""
    xdg = env.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else _home(env) / ".config"
    return base / "librorum" / "config.toml"


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME", "")
    return Path(home) if home else Path.home()


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine: ``localhost`` (and ``*.localhost``, RFC 6761),
    127.0.0.0/8, ``::1`` (brackets allowed) or an IPv4-mapped loopback. Wildcards (``0.0.0.0``,
    ``::``) and every other name are not loopback."""
    name = host.strip().rstrip(".").lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


# --- The configuration -------------------------------------------------------------------------

#: A logging level name (any case in a file, the environment or on the command line; stored in
#: upper case). Annotated so that the configuration's converter knows to read it as one.
LogLevel = Annotated[str, "log level"]
#: Uids: an array in a file; on the command line, a list separated by commas or spaces.
Uids = Annotated[tuple[int, ...], "uids"]


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    # Written so that NaN (which TOML and float() both accept) fails too: it compares false.
    if isinstance(value, bool) or not value > 0:
        msg = f"{attribute.name} must be positive, got {value!r}"
        raise ConfigError(msg)


def _not_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or value < 0:
        msg = f"{attribute.name} must be 0 or more, got {value!r}"
        raise ConfigError(msg)


def _not_negative_seconds(
    instance: object, attribute: attrs.Attribute[float], value: float
) -> None:
    if not value >= 0:  # also refuses nan
        msg = f"{attribute.name} must be 0 or more seconds, got {value!r}"
        raise ConfigError(msg)


#: The background scrub's defaults: 50 MB/s, one full pass a week.
SCRUB_RATE: Final = 50_000_000
SCRUB_INTERVAL: Final = 7 * 24 * 3600.0


def _port(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not 0 <= value <= 65535:
        msg = f"{attribute.name} must be 0-65535 (0: any free port), got {value!r}"
        raise ConfigError(msg)


def _uids(instance: object, attribute: attrs.Attribute[tuple[int, ...]], value: object) -> None:
    if (
        not isinstance(value, tuple)
        or not value
        or not all(isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in value)
    ):
        msg = f"{attribute.name} must be a non-empty list of uids (integers >= 0), got {value!r}"
        raise ConfigError(msg)


def _log_level(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in LOG_LEVELS:
        msg = f"log_level must be one of {', '.join(LOG_LEVELS)}, got {value!r}"
        raise ConfigError(msg)


#: The log levels by name (``log_level``, ``librorum logs --level``).
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def split_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as the host (without brackets) and the port.

    Raises:
        ConfigError: ``value`` is not of that form, or the port is not 0-65535.
    """
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        msg = f"expected HOST:PORT (port 0-65535; [ADDRESS]:PORT for IPv6), got {value!r}"
        raise ConfigError(msg)
    return host, int(port)


def _host_port(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None:
        try:
            split_host_port(value)
        except ConfigError as exc:
            msg = f"{attribute.name}: {exc}"
            raise ConfigError(msg) from None


#: The log formats the daemon writes (``log_format``).
LOG_FORMATS: Final = ("text", "json")


def _log_format(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in LOG_FORMATS:
        msg = f"log_format must be one of {', '.join(LOG_FORMATS)}, got {value!r}"
        raise ConfigError(msg)


def _optional_path(value: object) -> Path | None:
    return None if value is None else Path(value)  # type: ignore[arg-type]


@attrs.frozen(kw_only=True)
class Config:
    """Everything the daemon and its clients are configured with. Build it with
    :func:`load_config`; constructing it directly takes the defaults from ``os.environ``.

    Construction validates every field and the combination rule below.

    Raises:
        ConfigError: a value is out of range, or the combination is unsafe: the WebSocket
            listener on a non-loopback host (anything but 127.0.0.0/8, ::1, localhost)
            without both a token file and TLS (a certificate and a key) is refused, since
            anyone on the network could then read or use the store; and ``url`` must not
            send the token unencrypted (``ws://``) to a non-loopback host.
    """

    #: Where the store keeps its data; also home of the token file and the instance lock.
    data_dir: Path = attrs.field(factory=default_data_dir, converter=Path)
    #: The Unix socket (see :func:`default_socket_path`).
    socket_path: Path = attrs.field(factory=default_socket_path, converter=Path)
    #: The WebSocket listener's address. Loopback by default: remote use is opt-in.
    listen_host: str = "127.0.0.1"
    #: The WebSocket listener's port (0: any free port, for tests).
    listen_port: int = attrs.field(default=DEFAULT_PORT, validator=_port)
    #: Whether the daemon listens for WebSocket clients at all.
    remote_enabled: bool = True
    #: The bearer token WebSocket clients must present (created 0600 on first start).
    #: ``None`` (an empty string in the file) disables token authentication: any local user
    #: could then use the loopback listener, so this is for tests and single-user machines,
    #: and it is refused on a non-loopback host.
    token_file: Path | None = attrs.field(
        default=attrs.Factory(lambda self: self.data_dir / "token", takes_self=True)
    )
    #: The bearer token a metrics scrape must present (created 0600 on first start with
    #: ``metrics_listen``). A token of its own, not ``token_file``'s: what a scraper holds
    #: must not open the store or the administrators' commands to it. ``None`` (an empty
    #: string in the file): scrapes need no token, refused on a non-loopback host.
    metrics_token_file: Path | None = attrs.field(
        default=attrs.Factory(lambda self: self.data_dir / "metrics-token", takes_self=True)
    )
    #: TLS certificate chain and private key (PEM) for ``wss://``; both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Uids allowed to use the Unix socket (checked with SO_PEERCRED). Default: our own.
    allowed_uids: Uids = attrs.field(
        factory=lambda: (os.getuid(),), converter=tuple, validator=_uids
    )
    #: Uids whose clients may run administrators' commands over the Unix socket (logs, fsck,
    #: the live view of requests, stop; spec 2.5). Default: our own. Over WebSocket, the
    #: token is what makes a client an administrator.
    admin_uids: Uids = attrs.field(factory=lambda: (os.getuid(),), converter=tuple, validator=_uids)
    #: Logging threshold: DEBUG, INFO, WARNING, ERROR or CRITICAL.
    log_level: LogLevel = attrs.field(default="INFO", validator=_log_level)
    #: Clients only: the remote daemon (``ws://`` or ``wss://``); ``None``: the local socket.
    url: str | None = None
    #: Connection policies; see :mod:`librorum.limits` for what each one bounds.
    max_connections: int = attrs.field(default=MAX_CONNECTIONS, validator=_positive)
    max_unauthenticated: int = attrs.field(default=MAX_UNAUTHENTICATED, validator=_positive)
    max_connections_per_uid: int = attrs.field(default=MAX_CONNECTIONS_PER_UID, validator=_positive)
    max_connections_per_ip: int = attrs.field(default=MAX_CONNECTIONS_PER_IP, validator=_positive)
    handshake_timeout: float = attrs.field(default=HANDSHAKE_TIMEOUT, validator=_positive)
    #: Seconds a frame (on WebSocket, a message) may take from its first byte to its last.
    frame_timeout: float = attrs.field(default=FRAME_TIMEOUT, validator=_positive)
    idle_timeout_uds: float = attrs.field(default=IDLE_TIMEOUT_UDS, validator=_positive)
    idle_timeout_ws: float = attrs.field(default=IDLE_TIMEOUT_WS, validator=_positive)
    #: Seconds a request stream may go without progress from its client (spec 9.2).
    stream_timeout: float = attrs.field(default=STREAM_TIMEOUT, validator=_positive)
    #: At a full connection cap, seconds a connection must have waited on its client to be
    #: closed for a newcomer (spec 9.2).
    reclaim_after: float = attrs.field(default=RECLAIM_AFTER, validator=_positive)
    #: Upload bytes held at once over all connections (spec 9.2); see limits.MAX_INFLIGHT_BYTES.
    max_inflight_bytes: int = attrs.field(default=MAX_INFLIGHT_BYTES, validator=_positive)
    #: WebSocket: failed authentications in a row from one address before it must back off,
    #: and the longest back-off (seconds) it can earn.
    auth_failures_allowed: int = attrs.field(default=AUTH_FAILURES_ALLOWED, validator=_positive)
    auth_backoff_max: float = attrs.field(default=AUTH_BACKOFF_MAX, validator=_positive)
    #: Seconds requests in flight get to finish when the daemon stops.
    shutdown_grace: float = attrs.field(default=SHUTDOWN_GRACE, validator=_positive)
    #: Bytes of free space below which the store refuses new data (uploads, new files and
    #: directories) with NO_SPACE, while deletes, renames and reads go on: 256 MiB by default,
    #: room for the metadata to grow and for uploads already under way (see
    #: :data:`librorum.limits.MIN_FREE_SPACE`). 0 refuses new data only when the disk is full.
    min_free_space: int = attrs.field(default=MIN_FREE_SPACE, validator=_not_negative)
    #: Where to serve Prometheus metrics over HTTP at ``/metrics``, as ``HOST:PORT`` (port 0:
    #: any free port); ``None`` (an empty string in the file): no metrics listener. A
    #: non-loopback host needs TLS and a token, as for the WebSocket listener; with a token
    #: configured, a scrape must send ``Authorization: Bearer <token>``.
    metrics_listen: str | None = attrs.field(default=None, validator=_host_port)
    #: The background scrub (see ``librorum/service/checks.py``): bytes it re-verifies per
    #: second at most (50 MB/s), using only idle time; and seconds between the starts of two
    #: full passes (one a week). 0 for either turns the scrub off.
    scrub_rate: int = attrs.field(default=SCRUB_RATE, validator=_not_negative)
    scrub_interval: float = attrs.field(default=SCRUB_INTERVAL, validator=_not_negative_seconds)
    #: How the daemon writes its log: "text" (one line per record) or "json" (one JSON
    #: object per line: time, level, logger, message, and exc when there is a traceback).
    log_format: str = attrs.field(default="text", validator=_log_format)
    #: Where the daemon writes its log; ``None``: standard error. Rotated by size.
    log_file: Path | None = attrs.field(default=None, converter=_optional_path)
    #: The size at which the log file is rotated, and how many old files are kept
    #: (``log_file.1`` ... ``log_file.N``).
    log_file_max_bytes: int = attrs.field(default=10 * 1024 * 1024, validator=_positive)
    log_file_backups: int = attrs.field(default=5, validator=_not_negative)
    #: Records the daemon keeps in memory for the log commands (spec 5.19).
    log_ring_size: int = attrs.field(default=10_000, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            msg = "tls_cert and tls_key go together: set both (wss://) or neither"
            raise ConfigError(msg)
        if self.remote_enabled:
            self._check_exposure(self.listen_host, "listen", "use the store", "token_file")
        if self.metrics_listen is not None:
            host, _ = split_host_port(self.metrics_listen)
            self._check_exposure(
                host, "serve metrics", "read the daemon's figures", "metrics_token_file"
            )

    def _check_exposure(self, host: str, doing: str, could: str, token: str) -> None:
        """Refuse a listener on a non-loopback ``host`` without both its token (the setting
        named ``token``) and TLS."""
        if not is_loopback(host):
            missing = [
                what
                for what, value in ((f"a {token}", getattr(self, token)), ("TLS", self.tls_cert))
                if value is None
            ]
            if missing:
                msg = (
                    f"refusing to {doing} on non-loopback host {host!r} without "
                    f"{' and '.join(missing)}: anyone on the network could {could}. "
                    f"Set tls_cert, tls_key and {token}, or listen on 127.0.0.1."
                )
                raise ConfigError(msg)
        if self.url is not None:
            _check_url(self.url)

    @property
    def tls_enabled(self) -> bool:
        """Whether the WebSocket listener speaks TLS (``wss://``)."""
        return self.tls_cert is not None


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        msg = f"url must look like ws://HOST:PORT or wss://HOST:PORT, got {url!r}"
        raise ConfigError(msg)
    if parts.scheme == "ws" and not is_loopback(parts.hostname):
        msg = (
            f"url {url!r} would send the token unencrypted to a non-loopback host; "
            "use wss:// (the daemon refuses plain ws:// off loopback anyway)"
        )
        raise ConfigError(msg)


# --- Loading -----------------------------------------------------------------------------------

_NO_OVERRIDES: Final[Mapping[str, object]] = types.MappingProxyType({})

#: The environment variables and the field each sets (LIBRORUM_CONFIG is handled apart).
ENV_VARS: Final = types.MappingProxyType(
    {
        "LIBRORUM_DATA_DIR": "data_dir",
        "LIBRORUM_SOCKET": "socket_path",
        "LIBRORUM_TOKEN_FILE": "token_file",
        "LIBRORUM_URL": "url",
        "LIBRORUM_LOG_FORMAT": "log_format",
        "LIBRORUM_LOG_FILE": "log_file",
    }
)


def load_config(
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] = os.environ,
    overrides: Mapping[str, object] = _NO_OVERRIDES,
) -> Config:
    """Build the configuration: defaults < TOML file < environment < ``overrides``.

    Args:
        config_file: the TOML file; when ``None``, ``$LIBRORUM_CONFIG``, else the XDG default
            if it exists. A file named explicitly (argument or variable) must exist.
        env: the environment to read (``os.environ``; tests pass a dict).
        overrides: field names to values, typically from the command line; ``None`` values
            are skipped, so an option left unset does not override anything.

    Returns:
        The validated, frozen configuration. The defaults that depend on the environment
        (``data_dir``, ``socket_path``) are computed from ``env``; ``token_file`` defaults to
        ``data_dir/token`` with the final ``data_dir``.

    Raises:
        ConfigError: the file is missing, unreadable or not TOML; a key is unknown; a value has
            the wrong type or is out of range; the result is unsafe (see :class:`Config`).
    """
    values: dict[str, object] = {}
    path = config_file
    if path is None and env.get("LIBRORUM_CONFIG"):
        path = Path(env["LIBRORUM_CONFIG"])
    if path is not None:
        values.update(_read_file(path))
    else:
        default = default_config_file(env)
        if default.is_file():
            values.update(_read_file(default))
    for var, field in ENV_VARS.items():
        raw = env.get(var, "")
        if raw:
            values[field] = _convert(field, raw, source=var, converter=_TEXT)
    for key, value in overrides.items():
        if value is not None:
            _check_known(key, source="overrides")
            values[key] = _convert(key, value, source="overrides", converter=_TEXT)
    values.setdefault("data_dir", default_data_dir(env))
    values.setdefault("socket_path", default_socket_path(env))
    try:
        return _TEXT.structure(values, Config)
    except (TypeError, ValueError) as exc:
        msg = f"invalid configuration: {exc}"
        raise ConfigError(msg) from exc


def _read_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        msg = f"cannot read config file {path}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    except tomllib.TOMLDecodeError as exc:
        msg = f"config file {path} is not valid TOML: {exc}"
        raise ConfigError(msg) from exc
    source = str(path)
    values: dict[str, object] = {}
    for key, value in data.items():
        _check_known(key, source=source)
        converted = _convert(key, value, source=source, converter=_TOML)
        if isinstance(converted, Path) and not converted.is_absolute():
            converted = path.parent / converted  # relative to the file's directory
        values[key] = converted
    return values


# cattrs resolves the string annotations (PEP 563) once, here, to the types it dispatches on.
#: Each field's type: what the converters read a value of that field as.
_FIELD_TYPES: Final[Mapping[str, Any]] = types.MappingProxyType(
    {field.name: field.type for field in attrs.fields(attrs.resolve_types(Config))}
)


def _check_known(key: str, *, source: str) -> None:
    if key not in _FIELD_TYPES:
        msg = (
            f"{source}: unknown configuration key {key!r}; "
            f"known keys: {', '.join(sorted(_FIELD_TYPES))}"
        )
        raise ConfigError(msg)


def _convert(key: str, value: object, *, source: str, converter: cattrs.Converter) -> object:
    """Check and convert one value to its field's type with ``converter`` (:data:`_TOML` or
    :data:`_TEXT`).

    Raises:
        ConfigError: the value is not of the field's type; the message names the source, the
            key, the value and what was expected.
    """
    field_type = _FIELD_TYPES[key]
    try:
        return converter.structure(value, field_type)
    except (TypeError, ValueError) as exc:
        msg = f"{source}: {key} = {value!r}: expected {_EXPECTED[field_type]}"
        raise ConfigError(msg) from exc


# --- The converters ----------------------------------------------------------------------------
#
# One cattrs converter per kind of source. A TOML file has integers, floats, booleans and arrays,
# so its converter takes each as it is and refuses a string where another type belongs
# (`listen_port = "80"` is an error there). The environment and the command line give text, which
# the other converter parses ("8080", "off", "0 1000,1001"). Every hook raises TypeError or
# ValueError for a value it cannot take; _convert turns that into the ConfigError users see.
# (The wire protocol's converter, librorum.protocol.converter, is strict in other ways and speaks
# MessagePack; configuration is a different format.)

#: What an error message says a setting of each type expects.
_EXPECTED: Final[Mapping[Any, str]] = types.MappingProxyType(
    {
        Path: "a path",
        Path | None: 'a path, or "" for none',
        int: "an integer",
        float: "a number",
        bool: "true or false",
        Uids: "a list of uids",
        str: "a string",
        str | None: "a string",
        LogLevel: "a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)",
    }
)
assert set(_FIELD_TYPES.values()) <= set(_EXPECTED), "every field's type needs an error text"

_BOOL_WORDS: Final = types.MappingProxyType(
    {
        "1": True,
        "true": True,
        "yes": True,
        "on": True,
        "0": False,
        "false": False,
        "no": False,
        "off": False,
    }
)


def _make_converter(*, parse_text: bool) -> cattrs.Converter:
    """A converter for the settings of one kind of source: with ``parse_text``, strings are
    parsed into numbers, booleans and uid lists (the environment, the command line); without,
    those must come typed (a TOML file)."""
    converter = cattrs.Converter(detailed_validation=False)

    def structure_path(value: object, _: type) -> Path:
        if isinstance(value, Path):
            return value
        if isinstance(value, str) and value and "\0" not in value:
            return Path(value).expanduser()
        raise TypeError(value)

    def structure_int(value: object, _: type) -> int:
        # bool is an int subclass; `listen_port = true` is a mistake, not 1.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if parse_text and isinstance(value, str):
            return int(value, 10)
        raise TypeError(value)

    def structure_float(value: object, _: type) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if parse_text and isinstance(value, str):
            return float(value)  # "inf" waits forever; "nan" is refused by the validator
        raise TypeError(value)

    def structure_bool(value: object, _: type) -> bool:
        if isinstance(value, bool):
            return value
        if parse_text and isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
        raise TypeError(value)

    def structure_str(value: object, _: type) -> str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value

    def structure_uids(value: object, _: object) -> tuple[int, ...]:
        if parse_text and isinstance(value, str):
            value = value.replace(",", " ").split()
        if not isinstance(value, list | tuple | set | frozenset):
            raise TypeError(value)
        return tuple(structure_int(item, int) for item in value)

    def structure_log_level(value: object, _: object) -> str:
        name = structure_str(value, str).upper()
        if logging.getLevelName(name) == f"Level {name}":
            raise ValueError(value)
        return name

    def optional(tp: Any) -> Callable[[object, object], object]:
        # An empty string is the one way TOML and the command line can spell "none".
        (inner,) = (arg for arg in typing.get_args(tp) if arg is not types.NoneType)
        structure_inner = converter.get_structure_hook(inner)

        def structure(value: object, _: object) -> object:
            if value is None or value == "":
                return None
            return structure_inner(value, inner)

        return structure

    converter.register_structure_hook(Path, structure_path)
    converter.register_structure_hook(int, structure_int)
    converter.register_structure_hook(float, structure_float)
    converter.register_structure_hook(bool, structure_bool)
    converter.register_structure_hook(str, structure_str)
    # Annotated types dispatch by equality, not by class.
    converter.register_structure_hook_func(lambda tp: tp == Uids, structure_uids)
    converter.register_structure_hook_func(lambda tp: tp == LogLevel, structure_log_level)
    converter.register_structure_hook_factory(_is_optional, optional)
    return converter


def _is_optional(tp: object) -> bool:
    return isinstance(tp, types.UnionType) and types.NoneType in typing.get_args(tp)


#: The converter for the values of a TOML file: typed as TOML types them.
_TOML: Final = _make_converter(parse_text=False)
#: The converter for text (the environment, the command line) and for building Config.
_TEXT: Final = _make_converter(parse_text=True)
