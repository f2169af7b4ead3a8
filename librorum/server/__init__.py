"""The daemon and its LBRU front door: listeners, the connection driver and the command
table over the service core."""

from __future__ import annotations
