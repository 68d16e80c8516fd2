"""Benchmarks of flower_demo, run from the repository root: python -m benchmarks.bench --help."""
