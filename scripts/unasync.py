"""Generate the blocking client from the async one.

The async client is the source: its request logic is written once, against a driver
(:mod:`librorum.client._async_driver`) and a few trio primitives
(:mod:`librorum.client._async_primitives`). The blocking client's modules are produced from
it by renaming, in the manner of httpcore's ``scripts/unasync.py``:

* ``async def`` / ``async with`` / ``async for`` lose their ``async``, ``await`` disappears;
* the async names become their blocking twins (``Client`` -> ``SyncClient``, ``aclose`` ->
  ``close``, ``__aenter__`` -> ``__enter__``, ``_async_driver`` -> ``_sync_driver``, ...);
* a line marked ``# unasync: remove`` exists only in the async module (the nursery the async
  client needs, for instance), and a comment ``# unasync: sync: CODE`` becomes ``CODE`` in the
  blocking one (what it does instead).

The result is sorted (ruff's isort rules), simplified where the renaming leaves a list
comprehension that copies an iterable, and formatted (ruff format) like the rest of the code,
so a generated module passes ``make lint`` as it is.

Usage::

    python scripts/unasync.py           # rewrite the generated modules
    python scripts/unasync.py --check   # exit 1 if one of them is stale (make lint runs this)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, NamedTuple

ROOT: Final = Path(__file__).resolve().parent.parent
CLIENT: Final = Path("librorum/client")

#: Marks a line of the source that the blocking module does not have.
REMOVE_MARK: Final = "# unasync: remove"
#: A comment line ``# unasync: sync: CODE`` of the source is ``CODE`` in the blocking module.
SYNC_LINE: Final = re.compile(r"^(?P<indent>[ \t]*)# unasync: sync: (?P<code>.*)$", re.MULTILINE)

#: Words rewritten before the names: the keywords, and the phrases docstrings use for them.
PHRASES: Final = (
    ("async def ", "def "),
    ("async with ", "with "),
    ("`async with`", "`with`"),
    ("async for ", "for "),
    ("await ", ""),
    ("an async iterable", "an iterable"),
    ("An async iterable", "An iterable"),
    ("an async iterator", "an iterator"),
    ("an async context manager", "a context manager"),
    ("async iterable", "iterable"),
)

#: Names (whole identifiers) and their blocking twins, in code and in text alike.
NAMES: Final[Mapping[str, str]] = {
    # Python's async protocols.
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "StopAsyncIteration": "StopIteration",
    "AsyncIterator": "Iterator",
    "AsyncIterable": "Iterable",
    "AsyncExitStack": "ExitStack",
    "AbstractAsyncContextManager": "AbstractContextManager",
    "asynccontextmanager": "contextmanager",
    "enter_async_context": "enter_context",
    "aclose": "close",
    "aiter": "iter",
    "anext": "next",
    # The modules of each side.
    "_async_primitives": "_sync_primitives",
    "_async_driver": "_sync_driver",
    "_async_streams": "_sync_streams",
    "_async_client": "_sync_client",
    "_sources": "_sync_sources",
    # The client's classes.
    "Client": "SyncClient",
    "ReadStream": "SyncReadStream",
    "ListIterator": "SyncListIterator",
    "LogFollower": "SyncLogFollower",
    "AsyncConnection": "SyncConnection",
    "AsyncConnections": "SyncConnections",
    "AsyncRequest": "SyncRequest",
    # The sources of a WRITE.
    "WriteData": "SyncWriteData",
    "Source": "SyncSource",
    "BufferSource": "SyncBufferSource",
    "FileSource": "SyncFileSource",
    "IterableSource": "SyncIterableSource",
    "open_source": "open_sync_source",
    "open_client": "connect",
}


class Rule(NamedTuple):
    """One generated module and the module it is generated from."""

    source: Path
    target: Path


RULES: Final = (
    Rule(CLIENT / "_sources.py", CLIENT / "_sync_sources.py"),
    Rule(CLIENT / "_async_streams.py", CLIENT / "_sync_streams.py"),
    Rule(CLIENT / "_async_client.py", CLIENT / "_sync_client.py"),
)


def header(source: Path) -> str:
    """The comment a generated module starts with."""
    return (
        f"# GENERATED FILE: do not edit. Generated from {source.as_posix()} by\n"
        f"# scripts/unasync.py; edit the source and run `python scripts/unasync.py`.\n"
    )


def unasync_text(text: str, names: Mapping[str, str] = NAMES) -> str:
    """The blocking twin of the async module ``text`` (before sorting and formatting)."""
    lines = [line for line in text.splitlines(keepends=True) if REMOVE_MARK not in line]
    out = SYNC_LINE.sub(r"\g<indent>\g<code>", "".join(lines))
    for old, new in PHRASES:
        out = out.replace(old, new)
    if names:
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
        out = pattern.sub(lambda match: names[match.group(1)], out)
    return out


def _ruff(args: Sequence[str], text: str, filename: Path) -> str:
    """``text`` through ruff (the project's configuration, found from ``filename``)."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(filename), "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        msg = f"ruff {' '.join(args)} failed on {filename}:\n{result.stderr}{result.stdout}"
        raise RuntimeError(msg)
    return result.stdout


def generate(rule: Rule, root: Path = ROOT) -> str:
    """The text of ``rule.target`` as generated from ``rule.source`` now.

    Raises:
        OSError: the source cannot be read.
        RuntimeError: ruff failed (it could not parse the output, say).
    """
    text = header(rule.source) + unasync_text((root / rule.source).read_text())
    target = root / rule.target
    # Sorted imports, and `[x async for x in it]` turned `[x for x in it]` written `list(it)`.
    fixes = ["check", "--fix-only", "--unsafe-fixes", "--select", "I,C416", "--quiet"]
    text = _ruff(fixes, text, target)
    return _ruff(["format", "--quiet"], text, target)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a generated module is stale"
    )
    args = parser.parse_args(argv)
    stale: list[Path] = []
    for rule in RULES:
        wanted = generate(rule)
        target = ROOT / rule.target
        current = target.read_text() if target.exists() else None
        if current == wanted:
            continue
        stale.append(rule.target)
        if not args.check:
            target.write_text(wanted)
    if args.check and stale:
        for path in stale:
            print(f"{path} is stale: run `python scripts/unasync.py`", file=sys.stderr)
        return 1
    for path in stale:
        print(f"generated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
