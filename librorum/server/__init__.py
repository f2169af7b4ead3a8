"""The daemon: connection handling and request dispatch over the store."""

from __future__ import annotations
