"""What a trained KMCL run learned: label correlations and uncertainty, measured on a
split (`python -m kmcl_jax.analyze --workdir=WORKDIR`; `report.analyse`)."""
