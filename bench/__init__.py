"""Benchmarks: `make bench-protocol` and (later) `make bench`."""
