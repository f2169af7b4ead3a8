"""The commented configuration file ``librorum init`` writes: every setting of
:class:`~librorum.config.Config` with its default and its documentation, generated from the
class itself (its fields, and the ``#:`` comments above them), so it cannot go stale.

Settings whose default depends on the environment or on another setting (the data directory,
the socket, the token file, the uid lists) are written commented out, showing the value they
would have now; the others are written as they are. Loading the file gives the defaults.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Final

import attrs

from librorum.config import Config

#: Settings computed from the environment (or another setting) when not given: commented out,
#: so the file keeps following them.
_COMPUTED: Final = frozenset(
    {"data_dir", "socket_path", "token_file", "metrics_token_file", "allowed_uids", "admin_uids"}
)
_FIELD: Final = re.compile(r"^    (\w+): ")
_DOC: Final = re.compile(r"^    #:(?: (.*))?$")


def field_comments() -> dict[str, list[str]]:
    """Each field's ``#:`` comment lines, from :class:`Config`'s source."""
    comments: dict[str, list[str]] = {}
    pending: list[str] = []
    for line in inspect.getsource(Config).splitlines():
        doc = _DOC.match(line)
        if doc:
            pending.append(doc.group(1) or "")
            continue
        field = _FIELD.match(line)
        if field:
            comments[field.group(1)] = pending
        pending = []
    return comments


def toml_value(value: object) -> str:
    """``value`` as TOML (``None`` as ``""``, which the configuration reads as none)."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # A JSON string of ASCII is a TOML basic string.
        return json.dumps(str(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    msg = f"no TOML form for {value!r}"
    raise TypeError(msg)


def render(config: Config | None = None) -> str:
    """The configuration file's text, with the defaults of ``config`` (default: built from
    the environment, as the daemon would)."""
    defaults = config if config is not None else Config()
    comments = field_comments()
    out = [
        "# Librorum configuration (TOML). Every setting is shown with its default.",
        "# Precedence: defaults < this file < environment (LIBRORUM_*) < command-line flags.",
        "# Settings commented out are computed when not set (from the environment or another",
        "# setting); the value shown is what they are now. An empty string means none.",
    ]
    for field in attrs.fields(Config):
        name = field.name
        out.append("")
        out.extend(f"# {text}".rstrip() for text in comments.get(name, []))
        line = f"{name} = {toml_value(getattr(defaults, name))}"
        out.append(f"# {line}" if name in _COMPUTED else line)
    return "\n".join(out) + "\n"
