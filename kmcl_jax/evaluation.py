"""Scoring a state on the evaluation split: the model and its EMA, which of them is
better, and the record of the result that training and `--mode=eval` both write."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from kmcl_jax import metrics as metrics_lib
from kmcl_jax.mesh import to_global_batch
from kmcl_jax.state import VARIANTS, TrainState


def evaluate(
  eval_step, state: TrainState, eval_batches: Iterable[dict], mesh: Mesh, threshold: float
) -> dict[str, dict]:
  """{"model": metrics, "ema": metrics} over one pass of `eval_batches` (this host's
  batches of the evaluation split); "model" also holds the counts of images scored and
  of undecodable images skipped."""
  outputs = [
    jax.device_get(eval_step(state, to_global_batch(batch, mesh))) for batch in eval_batches
  ]
  return score(outputs, threshold)


def score(outputs: Sequence[dict], threshold: float) -> dict[str, dict]:
  """`evaluate`'s result from the outputs of every evaluation batch, each {"model", "ema"}
  class probabilities (b, K) with the batch's "labels", "ignore", "mask" and "index"
  (what the eval step returns)."""
  merged = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
  keep = merged["mask"]
  if keep.sum() == 0:
    raise ValueError("Evaluation saw no decodable image of the evaluation split.")
  results = {
    variant: metrics_lib.multilabel_metrics(
      merged[variant][keep],
      merged["labels"][keep],
      ignore=merged["ignore"][keep],
      threshold=threshold,
    )
    for variant in VARIANTS
  }
  results["model"]["images"] = int(keep.sum())
  results["model"]["corrupt_images"] = int((merged["index"] >= 0).sum() - keep.sum())
  return results


def better_variant(results: dict[str, dict]) -> str:
  """ "model" or "ema": the one with the higher mAP (the model on a tie), which is the
  variant the reference reports."""
  return "model" if results["model"]["map"] >= results["ema"]["map"] else "ema"


def result_record(results: dict[str, dict], class_names: Sequence[str]) -> dict:
  """The record of an evaluation: mAP of both variants, the better one's per-class AP
  (%, by class name) and thresholded metrics, and the number of images scored."""
  best = better_variant(results)
  return {
    "map": results[best]["map"],
    "map_model": results["model"]["map"],
    "map_ema": results["ema"]["map"],
    "best_of": best,
    "images": results["model"]["images"],
    "ap": dict(zip(class_names, (100 * results[best]["ap"]).round(4).tolist(), strict=True)),
    **{k: results[best][k] for k in metrics_lib.THRESHOLD_METRICS},
  }
