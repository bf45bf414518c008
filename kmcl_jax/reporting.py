"""What a person sees of a run: a progress line, JSON lines, the final summary.

Only the primary process (JAX process 0) writes files; every process logs its line.
`WORKDIR/metrics.jsonl` gets one JSON object per report: {"step", "epoch", "split":
"train"|"eval", ...metrics}. `WORKDIR/summary.json` is written once, at the end.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from collections.abc import Mapping

from absl import logging
import numpy as np


def _plain(value):
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  return value


class Reporter:
  """Progress lines and `metrics.jsonl` for one run of `total_steps` steps."""

  def __init__(self, workdir: str, total_steps: int, steps_per_epoch: int, batch_size: int,
               is_primary: bool):
    self.workdir, self.total_steps = workdir, total_steps
    self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size
    self.is_primary = is_primary
    self._mark = None  # (time, step) of the previous train report

  def epoch(self, step: int) -> float:
    return step / self.steps_per_epoch

  def write(self, record: Mapping) -> None:
    if self.is_primary:
      with open(os.path.join(self.workdir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")

  def start(self, step: int) -> None:
    self._mark = (time.perf_counter(), step)

  def train(self, step: int, metrics: Mapping[str, float]) -> None:
    """Logs `epoch e/E step s/T loss (terms) lr beta1 images/s ETA` and writes the record."""
    now = time.perf_counter()
    then, first = self._mark
    seconds_per_step = (now - then) / max(step - first, 1)
    self._mark = (now, step)
    images_per_s = self.batch_size / seconds_per_step
    eta = datetime.timedelta(seconds=round(seconds_per_step * (self.total_steps - step)))
    logging.info(
        "epoch %.2f/%d step %d/%d  loss %.4f [asl %.4f rec %.4f con %.4f]  lr %.2e beta1 %.4f"
        "  skipped %d  %.1f img/s  ETA %s",
        self.epoch(step), math.ceil(self.total_steps / self.steps_per_epoch), step,
        self.total_steps, metrics["loss"], metrics["asl"], metrics["reconstruction"],
        metrics["contrastive"], metrics["learning_rate"], metrics["beta1"],
        metrics["skipped_steps"], images_per_s, eta)
    self.write({"step": step, "epoch": self.epoch(step), "split": "train",
                "images_per_second": images_per_s, **metrics})

  def evaluation(self, step: int, results: Mapping[str, Mapping]) -> None:
    """Logs mAP and F1 of the model and its EMA and writes one record per variant."""
    for variant, metrics in results.items():
      logging.info("eval step %d %-5s mAP %.2f  OF1 %.4f CF1 %.4f  OF1_3 %.4f CF1_3 %.4f",
                   step, variant, metrics["map"], metrics["OF1"], metrics["CF1"],
                   metrics["OF1_3"], metrics["CF1_3"])
      self.write({"step": step, "epoch": self.epoch(step), "split": "eval", "variant": variant,
                  **metrics})

  def summary(self, summary: Mapping) -> None:
    logging.info("summary: %s", json.dumps({k: _plain(v) for k, v in summary.items()}))
    if self.is_primary:
      with open(os.path.join(self.workdir, "summary.json"), "w") as f:
        json.dump({k: _plain(v) for k, v in summary.items()}, f, indent=2)
