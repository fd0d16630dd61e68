"""Benchmarks of the kit's cost; run them as modules, e.g. ``python -m benchmarks.step_cost``."""
