"""Benchmarks, run as `python -m kmcl_jax.benchmarks.NAME`."""
