"""What a person sees of a run: progress lines, JSON lines, TensorBoard, plots, summary.

Only the primary process (JAX process 0) writes files; every process logs its line.
WORKDIR may be a local folder or a bucket (gs://...: needs the `gcs` extra); files are
written whole (object stores have no append).
  WORKDIR/metrics.jsonl   one JSON object per report: {"step", "epoch", "split":
                          "train"|"eval", ...metrics}
  WORKDIR/tensorboard/    the same numbers as TensorBoard scalars (train/..., eval/...)
  WORKDIR/plots/          PNGs at the end: loss terms, mAP over evaluations, per-class AP
  WORKDIR/summary.json    written once, at the end
"""

from __future__ import annotations

import datetime
import json
import math
import time
from collections.abc import Mapping

import numpy as np
from absl import logging
from etils import epath

PROGRESS_BAR_WIDTH = 20


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
    self.workdir, self.total_steps = epath.Path(workdir), total_steps
    self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size
    self.is_primary = is_primary
    self._mark = None  # (time, step) of the previous train report
    self._tensorboard = None
    if is_primary:
      from tensorboardX import SummaryWriter
      self._tensorboard = SummaryWriter(str(self.workdir / "tensorboard"))
    metrics_file = self.workdir / "metrics.jsonl"
    # A resumed run continues the file: it is rewritten whole at every report.
    resumed = is_primary and metrics_file.exists()
    self._lines = metrics_file.read_text().splitlines() if resumed else []

  def epoch(self, step: int) -> float:
    return step / self.steps_per_epoch

  def write(self, record: Mapping, tensorboard_prefix: str) -> None:
    """Appends `record` to metrics.jsonl and its scalars to TensorBoard."""
    if not self.is_primary:
      return
    self._lines.append(json.dumps({k: _plain(v) for k, v in record.items()}))
    (self.workdir / "metrics.jsonl").write_text("\n".join(self._lines) + "\n")
    for name, value in record.items():
      if name not in ("step", "split", "variant") and np.ndim(value) == 0:
        self._tensorboard.add_scalar(f"{tensorboard_prefix}/{name}", float(value),
                                     record["step"])

  def start(self, step: int) -> None:
    self._mark = (time.perf_counter(), step)

  def train(self, step: int, metrics: Mapping[str, float]) -> None:
    """Logs `epoch e/E step s/T loss (terms) lr beta1 images/s ETA` and writes the record."""
    now = time.perf_counter()
    then, first = self._mark
    self._mark = (now, step)
    if step > first:
      seconds_per_step = (now - then) / (step - first)
      images_per_s = self.batch_size / seconds_per_step
      eta = datetime.timedelta(seconds=round(seconds_per_step * (self.total_steps - step)))
    else:  # no timed step yet (the first step of a run includes compilation)
      images_per_s, eta = math.nan, "?"
    done = round(PROGRESS_BAR_WIDTH * step / self.total_steps)
    logging.info(
        "[%s%s] %3d%% epoch %.2f/%d step %d/%d  loss %.4f [asl %.4f rec %.4f con %.4f]"
        "  lr %.2e beta1 %.4f  skipped %d  %.1f img/s  ETA %s",
        "#" * done, "." * (PROGRESS_BAR_WIDTH - done), 100 * step // self.total_steps,
        self.epoch(step), math.ceil(self.total_steps / self.steps_per_epoch), step,
        self.total_steps, metrics["loss"], metrics["asl"], metrics["reconstruction"],
        metrics["contrastive"], metrics["learning_rate"], metrics["beta1"],
        metrics["skipped_steps"], images_per_s, eta)
    self.write({"step": step, "epoch": self.epoch(step), "split": "train",
                "images_per_second": images_per_s, **metrics}, "train")

  def evaluation(self, step: int, results: Mapping[str, Mapping]) -> None:
    """Logs mAP and F1 of the model and its EMA and writes one record per variant."""
    for variant, metrics in results.items():
      logging.info("eval step %d %-5s mAP %.2f  OF1 %.4f CF1 %.4f  OF1_3 %.4f CF1_3 %.4f",
                   step, variant, metrics["map"], metrics["OF1"], metrics["CF1"],
                   metrics["OF1_3"], metrics["CF1_3"])
      self.write({"step": step, "epoch": self.epoch(step), "split": "eval", "variant": variant,
                  **metrics}, f"eval/{variant}")
    if self._tensorboard is not None:
      self._tensorboard.flush()

  def summary(self, summary: Mapping) -> None:
    """Writes summary.json and the plots, and closes the TensorBoard writer."""
    logging.info("summary: %s", json.dumps({k: _plain(v) for k, v in summary.items()}))
    if self.is_primary:
      (self.workdir / "summary.json").write_text(
          json.dumps({k: _plain(v) for k, v in summary.items()}, indent=2))
      write_plots(self.workdir, summary)
    self.close()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None


def read_metrics(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, in order."""
  text = (epath.Path(workdir) / "metrics.jsonl").read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_plots(workdir: str, summary: Mapping) -> list[str]:
  """PNGs in WORKDIR/plots/ from metrics.jsonl and the summary's per-class AP; returns
  their paths."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  records = read_metrics(workdir)
  train = [r for r in records if r["split"] == "train"]
  folder = epath.Path(workdir) / "plots"
  folder.mkdir(parents=True, exist_ok=True)
  paths = []

  def save(figure, name):
    figure.tight_layout()
    paths.append(str(folder / name))
    with (folder / name).open("wb") as f:
      figure.savefig(f, format="png", dpi=110)
    plt.close(figure)

  figure, axes = plt.subplots(1, 2, figsize=(11, 4))
  steps = [r["step"] for r in train]
  for name, label in (("loss", "total"), ("asl", "ASL"), ("reconstruction", "reconstruction"),
                      ("contrastive", "contrastive")):
    axes[0].plot(steps, [r[name] for r in train], label=label)
  axes[0].set(title="Training loss (mean per logging interval)", xlabel="step", ylabel="loss",
              yscale="log")
  axes[0].legend()
  axes[1].plot(steps, [r["learning_rate"] for r in train], color="tab:purple")
  axes[1].set(title="Learning rate (OneCycle)", xlabel="step", ylabel="learning rate")
  save(figure, "loss.png")

  figure, axis = plt.subplots(figsize=(6, 4))
  for variant in ("model", "ema"):
    evaluations = [r for r in records if r["split"] == "eval" and r.get("variant") == variant]
    axis.plot([r["step"] for r in evaluations], [r["map"] for r in evaluations], marker="o",
              label=variant)
  axis.set(title="Test mAP", xlabel="step", ylabel="mAP (%)")
  axis.grid(alpha=0.3)
  axis.legend()
  save(figure, "map.png")

  names, values = list(summary["ap"]), list(summary["ap"].values())
  figure, axis = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4.5))
  bars = axis.bar(range(len(names)), values, color="tab:blue")
  axis.bar_label(bars, fmt="%.1f", fontsize=7, rotation=90 if len(names) > 12 else 0,
                 padding=2)
  axis.set_xticks(range(len(names)), names, rotation=90 if len(names) > 12 else 0)
  axis.set(title=f"Per-class AP ({summary['best_of']}, mAP {summary['map']:.2f})",
           xlabel="class", ylabel="AP (%)", ylim=(0, 108))
  save(figure, "per_class_ap.png")
  return paths
