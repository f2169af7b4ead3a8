"""The protocol core is sans-I/O: importing it must not import trio or any socket machinery."""

from __future__ import annotations

import os
import subprocess
import sys


def test_protocol_core_does_not_import_trio() -> None:
    code = (
        "import sys, librorum.protocol, librorum.protocol.converter;"
        "bad = sorted(m for m in ('trio', 'trio_websocket', 'socket', 'asyncio', 'sqlite3')"
        " if m in sys.modules);"
        "print(','.join(bad))"
    )
    # A fresh interpreter that does not start coverage measurement: coverage itself imports
    # socket and sqlite3, which would hide what the import of the protocol pulls in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    assert result.stdout.strip() == ""
