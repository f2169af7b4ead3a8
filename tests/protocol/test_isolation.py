"""The protocol core is sans-I/O: importing it must not import trio or any socket machinery."""

from __future__ import annotations

import subprocess
import sys


def test_protocol_core_does_not_import_trio() -> None:
    code = (
        "import sys, librorum.protocol, librorum.protocol.converter;"
        "bad = sorted(m for m in ('trio', 'trio_websocket', 'socket', 'asyncio', 'sqlite3')"
        " if m in sys.modules);"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
