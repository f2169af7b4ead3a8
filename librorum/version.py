"""The package version, in a module of its own: any part of the daemon can name it without
importing the package root, which names the daemon and the clients (an import cycle)."""

from __future__ import annotations

from typing import Final

__version__: Final = "0.1.0"
