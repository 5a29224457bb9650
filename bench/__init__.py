"""Benchmark of the cluster against bare vLLM on one machine: `python -m bench.run --help`."""
