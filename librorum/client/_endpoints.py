"""Where a client connects: the caller's arguments, the environment, then the defaults.

``auto`` tries the local Unix socket first and the WebSocket URL second; ``local`` and
``remote`` pick one. The token of a remote endpoint comes from ``token``, else ``token_file``,
else the file named by ``LIBRORUM_TOKEN_FILE``.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Final, Literal, TypeAlias
from urllib.parse import urlsplit

import attrs

from librorum import config
from librorum.client._common import ENV_SOCKET, ENV_TOKEN_FILE, ENV_URL
from librorum.config import ConfigError
from librorum.transport.ws_client import parse_ws_url

TransportChoice: TypeAlias = Literal["auto", "local", "remote"]

#: Largest token file read: a token is a line of text, not a document.
MAX_TOKEN_FILE_BYTES: Final = 4096


def default_socket_path() -> Path:
    """The daemon's default socket (the daemon's own default, so the two cannot disagree):
    ``$XDG_RUNTIME_DIR/librorum/librorum.sock``, or ``/tmp/librorum-<uid>/librorum.sock``
    when there is no runtime directory."""
    return config.default_socket_path()


@attrs.frozen
class LocalEndpoint:
    """The daemon's Unix socket."""

    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"


@attrs.frozen
class RemoteEndpoint:
    """A daemon's WebSocket URL (``ws://`` or ``wss://``) and the bearer token for it."""

    url: str
    token: str | None = attrs.field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = attrs.field(default=None, repr=False, eq=False)

    def __str__(self) -> str:
        return self.url


Endpoint: TypeAlias = LocalEndpoint | RemoteEndpoint


def _is_url(target: str) -> bool:
    return urlsplit(target).scheme in ("ws", "wss")


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in ``path``: its first line, without surrounding whitespace.

    Raises:
        ValueError: the file is empty or too large to be a token file.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        msg = f"token file {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes"
        raise ValueError(msg)
    lines = data.decode("utf-8").strip().splitlines()
    if not lines or not lines[0].strip():
        msg = f"token file {path} is empty"
        raise ValueError(msg)
    return lines[0].strip()


def resolve_endpoints(
    target: str | os.PathLike[str] | None = None,
    *,
    transport: TransportChoice = "auto",
    socket_path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> list[Endpoint]:
    """The endpoints to try, in order.

    ``target`` is a socket path or a ``ws://`` / ``wss://`` URL; an explicit target of one
    kind leaves out the environment's endpoint of the other kind in ``auto`` mode (the caller
    said where to go), but an explicit ``socket_path`` or ``url`` keyword is always tried.

    Raises:
        ValueError: contradictory arguments, a remote transport without a URL, a URL that is
            not ``ws://HOST[:PORT]`` or ``wss://...``, or a bad token file.
        OSError: the token file cannot be read.
    """
    if transport not in ("auto", "local", "remote"):
        msg = f"transport must be 'auto', 'local' or 'remote', not {transport!r}"
        raise ValueError(msg)
    target_path: Path | None = None
    target_url: str | None = None
    if target is not None:
        text = os.fspath(target)
        if isinstance(target, str) and _is_url(text):
            target_url = text
        else:
            target_path = Path(text.removeprefix("unix:"))
    if target_url is not None and url is not None and target_url != url:
        msg = "both target and url name a URL"
        raise ValueError(msg)
    if target_path is not None and socket_path is not None:
        msg = "both target and socket_path name a socket"
        raise ValueError(msg)
    if target_url is not None and transport == "local":
        msg = f"transport='local' but the target is a URL: {target_url}"
        raise ValueError(msg)
    if target_path is not None and transport == "remote":
        msg = f"transport='remote' but the target is a socket path: {target_path}"
        raise ValueError(msg)

    local: Path | None
    if socket_path is not None:
        local = Path(socket_path)
    elif target_path is not None:
        local = target_path
    elif target_url is None:
        env_socket = os.environ.get(ENV_SOCKET)
        local = Path(env_socket) if env_socket else default_socket_path()
    else:
        local = None

    remote = url or target_url
    if remote is None and target_path is None:
        remote = os.environ.get(ENV_URL) or None
    if remote is not None:
        # The connectors' own parsing, so that both clients refuse the same URLs, up front.
        try:
            parse_ws_url(remote)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    endpoints: list[Endpoint] = []
    if transport in ("auto", "local") and local is not None:
        endpoints.append(LocalEndpoint(local))
    if transport in ("auto", "remote") and remote is not None:
        if token is None:
            file = token_file if token_file is not None else os.environ.get(ENV_TOKEN_FILE)
            if file:
                token = read_token_file(file)
        endpoints.append(RemoteEndpoint(remote, token, ssl_context))
    if not endpoints:
        msg = f"no URL for transport={transport!r}: pass url= or set {ENV_URL}"
        raise ValueError(msg)
    return endpoints
