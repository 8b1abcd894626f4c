"""Benchmarks outside the library: `make bench` runs `python -m benchmarks.bench` from the checkout."""
