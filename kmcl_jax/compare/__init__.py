"""Side by side with the authors' PyTorch code (the program: `python -m kmcl_jax.compare`).

theirs.py     their model, loss and train.py recipe; one initialisation for both sides
loss_step.py  the loss term by term and a training step, with their times
run.py        whole training runs of both, and when they agree
run_report.py the table, curves and JSON of whole runs
"""
