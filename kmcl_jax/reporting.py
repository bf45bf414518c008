"""What a person sees of a run: progress lines, JSON lines, TensorBoard, plots, summary.

Only the primary process (JAX process 0) writes files; every process logs its line.
WORKDIR may be a local folder or a bucket (gs://...: needs the `gcs` extra).
  WORKDIR/metrics.jsonl   one JSON object per report: {"step", "epoch", "split":
                          "train"|"eval", ...metrics}; strict JSON (a non-finite
                          number is null)
  WORKDIR/metrics.parts/  an object store's records not yet merged into metrics.jsonl
                          (one object each; merged at the end and at the next start)
  WORKDIR/tensorboard/    the same numbers as TensorBoard scalars (train/..., eval/...)
  WORKDIR/plots/          PNGs at the end: loss terms, mAP over evaluations, per-class AP
  WORKDIR/summary.json    written once, at the end

A resumed run continues the logs from the step it restored: records of later steps (the
interrupted run's, since its last checkpoint) are dropped from metrics.jsonl and purged
from TensorBoard, so that every step is logged once.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from absl import logging
from etils import epath

from kmcl_jax.errors import RunStopped
from kmcl_jax.files import replace_file

PROGRESS_BAR_WIDTH = 20
METRICS_FILE = "metrics.jsonl"
METRICS_PARTS = "metrics.parts"
SUMMARY_FILE = "summary.json"
PLOT_FILES = ("loss.png", "map.png", "per_class_ap.png")  # in WORKDIR/plots/


def bar(done: int, total: int) -> str:
  """`[####....]  40%`: a fixed-width bar of done out of total (total > 0)."""
  filled = round(PROGRESS_BAR_WIDTH * done / total)
  return f"[{'#' * filled}{'.' * (PROGRESS_BAR_WIDTH - filled)}] {100 * done // total:3d}%"


def progress(
  items: Iterable, total: int, what: str, unit: str = "images", lines: int = 10
) -> Iterator:
  """Yields `items`, logging `what [bar] done/total unit  rate unit/s  ETA` about `lines` times.

  For long passes outside training (evaluation of a split, a dataset check, an export);
  `total` is the number of items expected (the bar saturates if more come). Logs through
  absl, so lines go where the run's other lines go, once per process.
  """
  every = max(1, math.ceil(total / lines)) if total > 0 else 1
  start = time.perf_counter()
  done = 0
  for item in items:
    yield item
    done += 1
    if done % every == 0 or done == total:
      seconds = time.perf_counter() - start
      rate = done / seconds if seconds > 0 else math.nan
      left = max(total - done, 0) / rate if rate > 0 else math.nan
      eta = datetime.timedelta(seconds=round(left)) if math.isfinite(left) else "?"
      logging.info(
        "%s %s %d/%d %s  %.1f %s/s  ETA %s",
        what,
        bar(min(done, total), max(total, 1)),
        done,
        total,
        unit,
        rate,
        unit,
        eta,
      )


def _plain(value):
  """NumPy values as Python ones, and non-finite floats as None (JSON has no NaN)."""
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
  if isinstance(value, (np.floating, np.integer, np.bool_)):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def to_json(record: Mapping, **kwargs) -> str:
  """Strict JSON of a record of NumPy or Python values (NaN and infinities as null)."""
  return json.dumps(_plain(record), allow_nan=False, **kwargs)


def parse_metrics(text: str, name: str) -> list[dict]:
  """The records of a metrics.jsonl text. A cut-off last line (a write interrupted by a
  full disk or a kill) is dropped with a warning; a bad line elsewhere is an error
  naming `name` and the line."""
  lines = text.split("\n")
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      if all(not rest.strip() for rest in lines[number:]):
        logging.warning("%s, line %d: dropping a cut-off last record.", name, number)
        break
      raise ValueError(f"{name}, line {number}: not a JSON record ({error}).") from error
  return records


def read_metrics(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, then those of WORKDIR/metrics.parts/ not
  merged into it yet, in order ([] if there is none)."""
  path = epath.Path(workdir) / METRICS_FILE
  records = parse_metrics(path.read_text(), os.fspath(path)) if path.exists() else []
  folder = epath.Path(workdir) / METRICS_PARTS
  # A part is named for its record's index in the log: those below len(records) were
  # merged by a start or close that stopped before deleting them.
  parts = [p for p in sorted(folder.glob("*.jsonl")) if int(p.stem) >= len(records)]
  with ThreadPoolExecutor(16) as pool:  # an object store takes tens of ms a read
    for part, text in zip(parts, pool.map(epath.Path.read_text, parts), strict=True):
      records.extend(parse_metrics(text, os.fspath(part)))
  return records


class MetricsLog:
  """WORKDIR/metrics.jsonl, opened to continue after `step`.

  Records of later steps are dropped first (the log is rewritten whole, locally through
  a temporary file, so a failure leaves the old one). Then each record is written as it
  comes. Locally it is appended as one line, so a failed write can cut off at most that
  line. An object store (gs://) cannot append, so there it is one object of its own,
  WORKDIR/metrics.parts/<its index>.jsonl: a record costs one small write however long
  the log. The parts are merged into metrics.jsonl and deleted at `close` and, after a
  run that could not close, at the next start; `read_metrics` reads them meanwhile.
  """

  def __init__(self, workdir: str, step: int):
    self.path = epath.Path(workdir) / METRICS_FILE
    self._parts = epath.Path(workdir) / METRICS_PARTS
    self._local = "://" not in workdir
    records = read_metrics(workdir)
    self.records = [r for r in records if r.get("step", 0) <= step]
    self._lines = [to_json(r) for r in self.records]
    self._file = None
    if self._local:
      if self.path.exists() and (len(self.records) != len(records) or self._torn()):
        self._guard(self._rewrite)
      self._file = self._guard(lambda: open(self.path, "a"))
    elif len(self.records) != len(records) or self._parts.exists():
      self._guard(self._merge)
    self._unmerged = False

  def _torn(self) -> bool:
    text = self.path.read_text()
    return bool(text) and not text.endswith("\n")

  def _rewrite(self) -> None:
    replace_file(self.path, "".join(line + "\n" for line in self._lines).encode())

  def _merge(self) -> None:
    """metrics.jsonl holds every record, and the parts are deleted (an object store)."""
    self._rewrite()
    if self._parts.exists():
      self._parts.rmtree()

  def _guard(self, write):
    try:
      return write()
    except OSError as error:
      raise RunStopped(
        f"Writing {self.path} failed ({error}); the checkpoints saved so "
        "far are intact: fix the cause (free disk space, say) and rerun the "
        "same command to resume."
      ) from error

  def append(self, record: Mapping) -> None:
    line = to_json(record)
    index = len(self.records)
    self.records.append(json.loads(line))
    self._lines.append(line)
    if self._local:

      def write():
        self._file.write(line + "\n")
        self._file.flush()

    else:
      self._unmerged = True

      def write():
        (self._parts / f"{index:09d}.jsonl").write_text(line + "\n")

    self._guard(write)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._unmerged:
      self._guard(self._merge)
      self._unmerged = False


class Reporter:
  """Progress lines, metrics.jsonl and TensorBoard for a run of `total_steps` steps
  that starts (or resumes) after step `start_step`."""

  def __init__(
    self,
    workdir: str,
    total_steps: int,
    steps_per_epoch: int,
    batch_size: int,
    is_primary: bool,
    start_step: int = 0,
  ):
    self.workdir, self.total_steps = epath.Path(workdir), total_steps
    self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size
    self.is_primary = is_primary
    self._mark = None  # (time, step) of the previous train report
    self._tensorboard = self._log = None
    if is_primary:
      from tensorboardX import SummaryWriter

      self._log = MetricsLog(workdir, start_step)
      # Events after start_step, left by an interrupted run, are hidden from TensorBoard.
      self._tensorboard = SummaryWriter(
        os.fspath(self.workdir / "tensorboard"), purge_step=start_step + 1
      )

  def epoch(self, step: int) -> float:
    return step / self.steps_per_epoch

  def write(self, record: Mapping, tensorboard_prefix: str) -> None:
    """Appends `record` to metrics.jsonl and its scalars to TensorBoard."""
    if not self.is_primary:
      return
    self._log.append(record)
    for name, value in record.items():  # non-finite values are gaps, as in the plots
      if name not in ("step", "split", "variant") and np.ndim(value) == 0 and np.isfinite(value):
        self._tensorboard.add_scalar(f"{tensorboard_prefix}/{name}", float(value), record["step"])

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
    logging.info(
      "%s epoch %.2f/%d step %d/%d  loss %.4f [asl %.4f rec %.4f con %.4f]"
      "  BC same-class %.3g other %.3g  var %.3g+-%.3g  lr %.2e beta1 %.4f  skipped %d"
      "  %.1f img/s  ETA %s",
      bar(step, self.total_steps),
      self.epoch(step),
      math.ceil(self.total_steps / self.steps_per_epoch),
      step,
      self.total_steps,
      metrics["loss"],
      metrics["asl"],
      metrics["reconstruction"],
      metrics["contrastive"],
      metrics["bc_positive"],
      metrics["bc_negative"],
      metrics["var_mean"],
      metrics["var_std"],
      metrics["learning_rate"],
      metrics["beta1"],
      metrics["skipped_steps"],
      images_per_s,
      eta,
    )
    self.write(
      {
        "step": step,
        "epoch": self.epoch(step),
        "split": "train",
        "images_per_second": images_per_s,
        **metrics,
      },
      "train",
    )

  def evaluation(self, step: int, results: Mapping[str, Mapping]) -> None:
    """Logs mAP and F1 of the model and its EMA and writes one record per variant (unless
    the log holds this step's already: a finished run evaluated again)."""
    for variant, metrics in results.items():
      logging.info(
        "eval step %d %-5s mAP %.2f  OF1 %.4f CF1 %.4f  OF1_3 %.4f CF1_3 %.4f",
        step,
        variant,
        metrics["map"],
        metrics["OF1"],
        metrics["CF1"],
        metrics["OF1_3"],
        metrics["CF1_3"],
      )
      if self.is_primary and any(
        r.get("split") == "eval" and r.get("step") == step and r.get("variant") == variant
        for r in self._log.records
      ):
        continue
      self.write(
        {"step": step, "epoch": self.epoch(step), "split": "eval", "variant": variant, **metrics},
        f"eval/{variant}",
      )
    if self._tensorboard is not None:
      self._tensorboard.flush()

  def last_train_loss(self) -> float | None:
    """The loss of the last train record (None off the primary process or before one)."""
    train = [r for r in self._log.records if r.get("split") == "train"] if self._log else []
    return train[-1]["loss"] if train else None

  def summary(self, summary: Mapping) -> None:
    """Writes summary.json and the plots."""
    logging.info("summary: %s", to_json(summary))
    if self.is_primary:
      replace_file(self.workdir / SUMMARY_FILE, to_json(summary, indent=2).encode())
      write_plots(self.workdir, summary)

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None
    if self._log is not None:
      self._log.close()
      self._log = None


def read_summary(workdir: str) -> dict | None:
  """WORKDIR/summary.json, or None if there is none or it is not whole (cut short by an
  earlier version's interrupted write: the run then writes it again)."""
  path = epath.Path(workdir) / SUMMARY_FILE
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError:
    logging.warning("%s is not valid JSON; the final evaluation writes it again.", path)
    return None


def missing_plots(workdir: str) -> list[str]:
  """The names of PLOT_FILES that WORKDIR/plots/ lacks."""
  return [name for name in PLOT_FILES if not (epath.Path(workdir) / "plots" / name).exists()]


def pyplot():
  """matplotlib's pyplot drawing to files only (the Agg backend: no display needed)."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  return plt


def save_figure(figure, path) -> None:
  """Writes `figure` to `path` (local or gs://) as a PNG, whole (`replace_file`: an
  interrupted write leaves the previous file), and closes it."""
  figure.tight_layout()
  png = io.BytesIO()
  figure.savefig(png, format="png", dpi=110)
  replace_file(epath.Path(path), png.getvalue())
  pyplot().close(figure)


def write_plots(workdir: str, summary: Mapping) -> list[str]:
  """PNGs in WORKDIR/plots/ from metrics.jsonl and the summary's per-class AP; returns
  their paths."""
  plt = pyplot()
  records = read_metrics(workdir)
  train = [r for r in records if r["split"] == "train"]
  folder = epath.Path(workdir) / "plots"
  folder.mkdir(parents=True, exist_ok=True)
  paths = []

  def save(figure, name):
    paths.append(str(folder / name))
    save_figure(figure, folder / name)

  figure, axes = plt.subplots(1, 2, figsize=(11, 4))
  steps = [r["step"] for r in train]

  def series(records, name):  # null (a non-finite value) plots as a gap
    return np.array([np.nan if r[name] is None else r[name] for r in records], float)

  for name, label in (
    ("loss", "total"),
    ("asl", "ASL"),
    ("reconstruction", "reconstruction"),
    ("contrastive", "contrastive"),
  ):
    axes[0].plot(steps, series(train, name), label=label)
  axes[0].set(
    title="Training loss (mean per logging interval)", xlabel="step", ylabel="loss", yscale="log"
  )
  axes[0].legend()
  axes[1].plot(steps, series(train, "learning_rate"), color="tab:purple")
  axes[1].set(title="Learning rate (OneCycle)", xlabel="step", ylabel="learning rate")
  save(figure, PLOT_FILES[0])

  figure, axis = plt.subplots(figsize=(6, 4))
  for variant in ("model", "ema"):
    evaluations = [r for r in records if r["split"] == "eval" and r.get("variant") == variant]
    axis.plot(
      [r["step"] for r in evaluations], series(evaluations, "map"), marker="o", label=variant
    )
  axis.set(title="Test mAP", xlabel="step", ylabel="mAP (%)")
  axis.grid(alpha=0.3)
  axis.legend()
  save(figure, PLOT_FILES[1])

  names, values = list(summary["ap"]), list(summary["ap"].values())
  figure, axis = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4.5))
  bars = axis.bar(range(len(names)), values, color="tab:blue")
  axis.bar_label(bars, fmt="%.1f", fontsize=7, rotation=90 if len(names) > 12 else 0, padding=2)
  axis.set_xticks(range(len(names)), names, rotation=90 if len(names) > 12 else 0)
  axis.set(
    title=f"Per-class AP ({summary['best_of']}, mAP {summary['map']:.2f})",
    xlabel="class",
    ylabel="AP (%)",
    ylim=(0, 108),
  )
  save(figure, PLOT_FILES[2])
  return paths
