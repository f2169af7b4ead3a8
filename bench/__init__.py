"""Benchmarks: `make bench` (side by side with gRPC and the limits; `bench/RESULTS.md`),
`make bench-quick`, `make bench-protocol`, and `python -m bench.profile` (the daemon under
py-spy)."""
