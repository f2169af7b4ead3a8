"""The path rules of the store, enforced in exactly one place: :func:`normalize`.

A path names an entry of the store's namespace. The rules (spec 5.1):

* a path is a ``str`` whose UTF-8 encoding exists (no lone surrogates) and contains no NUL;
* components are separated by ``/``; a leading ``/`` is optional and normalised away (``a/b``
  and ``/a/b`` are both ``/a/b``);
* ``/`` alone is the root, and so is the empty string (a leading ``/`` being optional);
* no component is empty (``a//b``, or a trailing ``/`` as in ``/a/b/``), ``.`` or ``..``;
* each component is at most :data:`MAX_NAME_BYTES` (255) bytes of UTF-8 and the normalised path
  at most :data:`MAX_PATH_BYTES` (4096) bytes;
* names are compared as code point sequences (which is UTF-8 byte order); there is no Unicode
  normalisation and no case folding: ``é`` (one code point) and ``é`` (two) are two names.

Nothing a client sends can ever resolve outside the data directory, and that is structural, not
a check: the namespace lives in the metadata database (rows keyed by parent id and name), and the
only names the store ever gives to the file system are hex digests of chunk contents and random
temp names it generates itself.
"""

from __future__ import annotations

import functools
from typing import Final

from librorum.domain import MAX_NAME_BYTES, MAX_PATH_BYTES
from librorum.errors import InvalidPathError

#: The normalised root path.
ROOT: Final = "/"


@functools.lru_cache(maxsize=1024)
def normalize(path: str) -> str:
    """Check ``path`` against the path rules and return its normal form. The last paths
    normalised are remembered (a client tends to name the same few again and again; a path
    that breaks a rule is not remembered).

    Args:
        path: A client-supplied path.

    Returns:
        ``"/"`` for the root, else ``"/"`` followed by the components joined with ``"/"``.

    Raises:
        InvalidPathError: The path breaks one of the rules in the module docstring.
    """
    if "\x00" in path:
        msg = "a path must not contain NUL"
        raise InvalidPathError(msg)
    if path in ("", ROOT):
        return ROOT
    body = path[1:] if path.startswith("/") else path
    if body.endswith("/"):
        msg = f"a path must not end with '/' (only the root is '/'): {path!r}"
        raise InvalidPathError(msg)
    parts = body.split("/")
    for part in parts:
        if not part:
            msg = f"empty path component in {path!r}"
            raise InvalidPathError(msg)
        if part in (".", ".."):
            msg = f"'.' and '..' are not allowed as path components: {path!r}"
            raise InvalidPathError(msg)
        try:
            size = len(part.encode("utf-8"))
        except UnicodeEncodeError as exc:
            msg = f"a path must be valid Unicode (no lone surrogates): {path!r}"
            raise InvalidPathError(msg) from exc
        if size > MAX_NAME_BYTES:
            msg = f"path component of {size} bytes exceeds {MAX_NAME_BYTES}"
            raise InvalidPathError(msg)
    normal = "/" + "/".join(parts)
    total = len(normal.encode("utf-8"))
    if total > MAX_PATH_BYTES:
        msg = f"path of {total} bytes exceeds {MAX_PATH_BYTES}"
        raise InvalidPathError(msg)
    return normal


def components(normal: str) -> list[str]:
    """Split a normalised path into its components (``[]`` for the root)."""
    return [] if normal == ROOT else normal[1:].split("/")


def split(normal: str) -> tuple[str, str]:
    """Split a normalised, non-root path into (parent path, name)."""
    head, _, name = normal.rpartition("/")
    return (head or ROOT, name)


def join(parent: str, name: str) -> str:
    """Join a normalised directory path and a component."""
    return f"/{name}" if parent == ROOT else f"{parent}/{name}"


def is_within(path: str, ancestor: str) -> bool:
    """Whether normalised ``path`` equals ``ancestor`` or lies below it."""
    return ancestor == ROOT or path == ancestor or path.startswith(ancestor + "/")
