"""Benchmarks (make bench, make bench-accuracy); not part of the workbench package."""
