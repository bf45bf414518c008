"""The accelerator check, `python -m kmcl_jax.benchmarks.check` (see `__main__`): the
program and its time limits (`__main__`), the parts it runs (`parts`), the goals it judges
(`goals`) and its markdown report (`report`)."""
