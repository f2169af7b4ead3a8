"""Tests of the async and the sync client against an in-process fake server."""
