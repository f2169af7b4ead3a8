"""The ``librorum`` command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = sys.argv[1:] if argv is None else argv
    del args
    # XX TODO(#4): the daemon and the client commands.
    print("librorum: the daemon is not built yet (see issue 4)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
