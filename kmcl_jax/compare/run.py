r"""Whole training runs side by side with the authors' code, and when they agree.

Three runs train in lockstep, one step of each per batch:
  ours    our jitted train step (`steps.jit_steps`),
  theirs  their model and loss with their train.py's recipe (`theirs.their_training`),
  seed B  ours again with the next seed (config.seed + 1),
with the config's whole recipe: the loss and its term weights and ASL balance, Adam with
the reference's parameter groups and coupled weight decay, OneCycle, the EMA. Ours and
theirs start from one initialisation (timm's, after torch.manual_seed(config.seed),
converted to ours with `convert.convert_state_dict`) and see the same stream of augmented
batches: our grain pipeline's, kept on the host and handed to both. Seed B differs in
everything a seed chooses: its initialisation (timm's after torch.manual_seed(seed + 1))
and its data (the pipeline's order and augmentations). At every evaluation
(config.eval_every_epochs, and after the last step) the model and the EMA of each run
are scored on the same test split by `evaluation.score`, the project's metrics on
sigmoid(pi).

Agreement. With precision "float32" both sides compute in float32 (TF32 off on a GPU:
`float32_products`), so the first steps differ by rounding only, and:
  1. the total loss agrees step by step for the first `first_steps` (10) steps:
     max |ours - theirs| / |theirs| <= `loss_rtol` (1e-3). Rounding alone stays orders
     of magnitude below (measured on the CPU: 6e-7 over the demo's first 10 steps,
     2e-5 over 3 steps of TResNet-M at 224 px); a changed term, weight, schedule or
     update shows from the step it first acts, above 1e-3 unless it is tiny.
  2. Later the trajectories drift apart (training is chaotic: rounding grows until the
     runs are as different as two seeds), so the final mAP is judged against seed
     noise: with final mAP the better of model and EMA at the last evaluation (what the
     reference reports), |ours - theirs| <= max(2 |ours - seed B|, `map_floor`) with
     `map_floor` 0.5 mAP points. Two runs that differ by rounding only end up as two
     draws of the same distribution as ours and seed B, so their difference has the
     distribution of the seed spread; a single pair of seeds estimates that scale
     poorly (the ratio of two such differences is Cauchy-like: it exceeds 2 about 30%
     of the time), hence the floor, half a point, below the differences the paper's
     tables (0.1 points) draw conclusions from. This check catches a run that trains
     to a clearly different mAP (a broken term, schedule or evaluation); small
     differences are the first check's to catch.
`agree` is both; the program exits non-zero when it is false. In the training precision
("training": ours bfloat16, theirs float16 autocast with a GradScaler, as their train.py
runs) the first steps differ by more than rounding, so only the mAP check applies; that
mode measures time to the same mAP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kmcl_jax import config as config_lib
from kmcl_jax import losses, optim
from kmcl_jax.benchmarks.loss_programs import relative_difference
from kmcl_jax.compare.theirs import (
  converted_weights,
  float32_products,
  their_model,
  their_training,
  torch_images,
)
from kmcl_jax.data import create_datasets
from kmcl_jax.evaluation import evaluate, score
from kmcl_jax.mesh import create_mesh, replicated, to_global_batch
from kmcl_jax.state import compute_dtype, create_model, initial_state, with_weights
from kmcl_jax.steps import jit_steps

FIRST_STEPS = 10
LOSS_RTOL = 1e-3
MAP_FLOOR = 0.5  # mAP points
SPREAD_FACTOR = 2.0
# float32: both sides in float32 (the agreement check); training: each side's training
# precision (ours `config.dtype` "auto": bfloat16 on a GPU; theirs float16 autocast with
# a GradScaler on a GPU, float32 on the CPU).
RUN_PRECISIONS = ("float32", "training")
RUNS = ("ours", "theirs", "seed_b")  # the runs, in the order they step
LOSS_KEYS = ("loss", *losses.TERMS)


@dataclasses.dataclass
class OurRun:
  """One of our runs: its state and batches, and the seconds its steps and evaluations took."""

  state: object
  batches: object
  seconds: float = 0.0


def _check(config: ml_collections.ConfigDict, precision: str) -> None:
  if precision not in RUN_PRECISIONS:
    raise ValueError(f"--precision={precision!r}: expected one of {RUN_PRECISIONS}.")
  config_lib.validate(config)
  if config.data.augment_on == "device":
    raise ValueError(
      "config.data.augment_on='device' augments inside our train step, where their side "
      "cannot see the images; compare with config.data.augment_on='host'."
    )


def _host_losses(metrics) -> dict[str, float]:
  host = jax.device_get({k: metrics[k] for k in LOSS_KEYS})  # waits for the step
  return {k: float(host[k]) for k in LOSS_KEYS}


def _their_outputs(theirs, eval_batches, config, on_gpu: bool) -> list[dict]:
  """Their probabilities on every evaluation batch, with the batch's fields `score` reads."""
  outputs = []
  for batch in eval_batches:
    probabilities = theirs.probabilities(torch_images(batch["image"], config, on_gpu))
    outputs.append(
      {**probabilities, **{k: batch[k] for k in ("labels", "ignore", "mask", "index")}}
    )
  return outputs


def agreement(
  steps: list[dict],
  evals: list[dict],
  first_steps: int,
  loss_rtol: float,
  map_floor: float,
  check_losses: bool = True,
) -> dict:
  """The verdict of the module docstring's two checks on a run's records; without
  `check_losses` (runs in the training precision) the mAP check alone."""
  compared = steps[:first_steps]
  # np.max keeps a NaN (Python's max can drop it).
  first = float(
    np.max([relative_difference(s["ours"]["loss"], s["theirs"]["loss"]) for s in compared])
  )
  final = {run: max(evals[-1][run]["map"], evals[-1][run]["map_ema"]) for run in RUNS}
  final_diff = abs(final["ours"] - final["theirs"])
  spread = abs(final["ours"] - final["seed_b"])
  bound = max(SPREAD_FACTOR * spread, map_floor)
  # NaN compares False: a non-finite loss or mAP disagrees.
  first_agree = bool(first <= loss_rtol) if check_losses else None
  final_agree = bool(final_diff <= bound)
  return {
    "first_steps": len(compared),
    "first_steps_max_rel_diff": first,
    "loss_rtol": loss_rtol,
    "first_steps_agree": first_agree,
    "final_map": final,
    "final_map_diff": final_diff,
    "seed_spread": spread,
    "final_map_bound": bound,
    "map_floor": map_floor,
    "final_map_agree": final_agree,
    "agree": first_agree is not False and final_agree,
  }


def time_to_map(evals: list[dict]) -> dict:
  """The target, the lower of ours' and theirs' best mAP (model or EMA) over the run, and
  each side's training seconds until its first evaluation at or above it."""
  best = {run: max(max(e[run]["map"], e[run]["map_ema"]) for e in evals) for run in RUNS[:2]}
  target = min(best.values())
  return {
    "target_map": target,
    **{
      run: next(e["seconds"][run] for e in evals if max(e[run]["map"], e[run]["map_ema"]) >= target)
      for run in RUNS[:2]
    },
  }


def compare_runs(
  baseline_dir: str,
  config: ml_collections.ConfigDict,
  *,
  precision: str = "float32",
  first_steps: int = FIRST_STEPS,
  loss_rtol: float = LOSS_RTOL,
  map_floor: float = MAP_FLOOR,
  on_gpu: bool = False,
  log=print,
) -> dict:
  """Trains ours, theirs and ours with the next seed side by side (module docstring) and
  returns {"config", "precision", "steps": [{"step", "ours": {"loss", *terms}, "theirs",
  "seed_b"}], "evals": [{"step", "ours": {"map", "map_ema"}, "theirs", "seed_b",
  "seconds"}], "wall_seconds": {"ours", "theirs", "seed_b"}, "first_step_seconds" (the
  same, of the first step alone: ours compiles there), "agreement", "time_to_map"}.
  Losses are each step's (terms as they enter the total before their weights); seconds
  are each run's steps and evaluations (the shared input pipeline not included; ours
  include compilation). `log` receives a line per epoch and per evaluation."""
  import torch

  config = config.copy_and_resolve_references()
  _check(config, precision)
  if precision == "float32":
    config.dtype = "float32"
  their_precision = "float16" if precision == "training" and on_gpu else "float32"
  config_b = config.copy_and_resolve_references()
  config_b.seed = config.seed + 1
  datasets = create_datasets(config)
  batches_a = datasets.train_from(0)
  batches_b = create_datasets(config_b).train_from(0)
  total_steps = config.train_steps or config.num_epochs * datasets.steps_per_epoch
  steps_per_epoch = datasets.steps_per_epoch
  eval_every = config.eval_every_epochs * steps_per_epoch
  classes = len(datasets.class_names)
  mesh = create_mesh()
  steps, evals = [], []
  products = float32_products() if precision == "float32" else contextlib.nullcontext()
  try:
    with products:
      theirs = their_training(baseline_dir, config, classes, total_steps, on_gpu, their_precision)
      model = create_model(config, classes)
      optimizer = optim.create_optimizer(
        config.optim, total_steps, config.batch_size, config.recipe_batch
      )
      runs = {}
      for run, run_config, batches, their_weights in (
        ("ours", config, batches_a, theirs.model),
        (
          "seed_b",
          config_b,
          batches_b,
          their_model(baseline_dir, config, classes, on_gpu, config_b.seed),
        ),
      ):
        variables = converted_weights(their_weights, config)
        state = with_weights(
          initial_state(run_config, model, optimizer, replicated(mesh)),
          variables["params"],
          variables["batch_stats"],
          "Their model's converted weights",
        )
        runs[run] = OurRun(state, batches)
      # One program for both of our runs: the seed enters through the data alone.
      train_step, eval_step = jit_steps(config, model, optimizer, mesh, runs["ours"].state)
      their_seconds = 0.0
      device = "cuda" if on_gpu else "cpu"
      for step in range(1, total_steps + 1):
        record = {"step": step}
        host = {run: next(runs[run].batches) for run in ("ours", "seed_b")}
        for run in RUNS:
          start = time.perf_counter()
          if run == "theirs":
            losses_now, _ = theirs.step(
              torch_images(host["ours"]["image"], config, on_gpu),
              torch.from_numpy(host["ours"]["labels"]).to(device),
            )
            record[run] = dict(zip(LOSS_KEYS, losses_now, strict=True))
            their_seconds += time.perf_counter() - start
          else:
            ours = runs[run]
            ours.state, metrics = train_step(ours.state, to_global_batch(host[run], mesh))
            record[run] = _host_losses(metrics)
            ours.seconds += time.perf_counter() - start
        steps.append(record)
        if step == 1:  # ours: compilation
          first_step_seconds = {"theirs": their_seconds} | {r: runs[r].seconds for r in runs}
        if step % steps_per_epoch == 0 or step == total_steps:
          log(
            f"epoch {step / steps_per_epoch:.2f} step {step}/{total_steps}  loss ours "
            f"{record['ours']['loss']:.5f} theirs {record['theirs']['loss']:.5f} (rel diff "
            f"{relative_difference(record['ours']['loss'], record['theirs']['loss']):.1e}) "
            f"seed B {record['seed_b']['loss']:.5f}  seconds ours {runs['ours'].seconds:.0f} "
            f"theirs {their_seconds:.0f} seed B {runs['seed_b'].seconds:.0f}"
          )
        if step % eval_every == 0 or step == total_steps:
          results = {}
          for run in RUNS:
            start = time.perf_counter()
            if run == "theirs":
              results[run] = score(
                _their_outputs(theirs, datasets.eval, config, on_gpu), config.threshold
              )
              their_seconds += time.perf_counter() - start
            else:
              results[run] = evaluate(
                eval_step, runs[run].state, datasets.eval, mesh, config.threshold
              )
              runs[run].seconds += time.perf_counter() - start
          seconds = {run: runs[run].seconds for run in ("ours", "seed_b")}
          evals.append(
            {
              "step": step,
              **{
                run: {"map": r["model"]["map"], "map_ema": r["ema"]["map"]}
                for run, r in results.items()
              },
              "seconds": {**seconds, "theirs": their_seconds},
            }
          )
          log(
            f"eval step {step}: mAP model / EMA  "
            + "  ".join(
              f"{run} {evals[-1][run]['map']:.2f} / {evals[-1][run]['map_ema']:.2f}" for run in RUNS
            )
          )
  finally:
    batches_a.close()
    batches_b.close()
  return {
    "config": config.to_dict(),
    "precision": {"ours": jnp.dtype(compute_dtype(config)).name, "theirs": their_precision},
    "steps": steps,
    "evals": evals,
    "wall_seconds": evals[-1]["seconds"],
    "first_step_seconds": first_step_seconds,
    "agreement": agreement(
      steps, evals, first_steps, loss_rtol, map_floor, check_losses=precision == "float32"
    ),
    "time_to_map": time_to_map(evals),
    "class_names": list(datasets.class_names),
    "images": {"train": datasets.num_train, "eval": datasets.num_eval},
  }
