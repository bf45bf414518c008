"""A run's identity in its workdir (one run per workdir at a time: workdir_lock.py).

WORKDIR/run.json records the config a run was started with and its class names
(`--mode=eval/predict` read them), the software versions it started on, every resume
with what it changed and the versions it ran on (a resume on other versions than the
start or resume before it is logged as a warning naming each), and the newest
committed checkpoint's step (`saved_step`): a rerun that finds no checkpoint although
one was saved refuses to start again from step 0. Resuming compares the new config and
the dataset's classes with it before anything is restored: a field that defines what the
run computes (model, data, batch, schedule, seed, ...) must not change, since the
checkpoint would silently continue a different experiment; fields in
`config.RESUMABLE_FIELDS` (evaluation and checkpoint frequency, logging, workers,
data.root, ...) may, and the change is logged and recorded.
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import platform
import secrets
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from kmcl_jax.checkpointing import BEST, LATEST
from kmcl_jax.config import RESUMABLE_FIELDS, defaults
from kmcl_jax.errors import RunStopped
from kmcl_jax.reporting import METRICS_FILE, SUMMARY_FILE

RUN_FILE = "run.json"
# The packages whose version decides what a run computes, compiles or can restore.
VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


class WorkdirError(RunStopped):
  """The workdir cannot be used by this run (another run holds it, or it is another run)."""


def check_workdir(workdir: str, writable: bool) -> None:
  """Raises WorkdirError, in one sentence, if `workdir` cannot be a run's folder: empty
  (an unset shell variable), gs:// without the gcs extra, a file, a symbolic link to
  nothing, or, when `writable`, a folder that cannot be created or written in (a
  read-only mount, no permission). A writable one is created if missing."""
  if not workdir.strip():
    raise WorkdirError(
      f"--workdir={workdir!r} is empty (an unset shell variable?); pass the run's folder, "
      "e.g. --workdir=/tmp/kmcl_run or gs://BUCKET/run."
    )
  if "://" in workdir:
    if workdir.startswith("gs://"):
      try:
        import gcsfs  # noqa: F401
      except ImportError:
        raise WorkdirError(
          f"--workdir={workdir!r}: a gs:// workdir needs the gcs extra, which is not "
          "installed: pip install -e '.[gcs]'."
        ) from None
    if writable:
      epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    return
  if os.path.islink(workdir) and not os.path.exists(workdir):
    raise WorkdirError(
      f"--workdir={workdir!r} is a symbolic link to {os.readlink(workdir)!r}, which does "
      "not exist; create that folder or pass another --workdir."
    )
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(
      f"--workdir={workdir!r} is a file, not a folder; pass a folder for the run's "
      "checkpoints and logs."
    )
  if not writable:
    return
  probe = os.path.join(workdir, f".write_test_{secrets.token_hex(4)}")
  try:
    os.makedirs(workdir, exist_ok=True)
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    os.remove(probe)
  except OSError as error:
    reason = error.strerror or errno.errorcode.get(error.errno, str(error))
    raise WorkdirError(
      f"--workdir={workdir!r} cannot be written in ({reason}): a run keeps its "
      "checkpoints and logs there; pass a writable folder."
    ) from None


def has_checkpoints(workdir: str) -> bool:
  """Whether WORKDIR/checkpoints or WORKDIR/best holds a committed checkpoint (a folder
  named by its step; orbax's temporary folders are named otherwise)."""
  for folder in (LATEST, BEST):
    path = epath.Path(workdir) / folder
    if path.is_dir() and any(entry.name.isdigit() for entry in path.iterdir()):
      return True
  return False


def refuse_other_run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises WorkdirError if WORKDIR holds a run's results (run.json, summary.json,
  metrics.jsonl) but no checkpoint, unless they are this run's, stopped before its first
  checkpoint (run.json has the same config but for RESUMABLE_FIELDS, and no summary):
  a new run there would overwrite them. With checkpoints, `check_resume` decides.
  Process 0 decides, as for the lock (`exclusive`): other processes could read run.json
  while it writes it."""
  if jax.process_index() != 0 or has_checkpoints(workdir):
    return
  results = [
    n for n in (RUN_FILE, SUMMARY_FILE, METRICS_FILE) if (epath.Path(workdir) / n).exists()
  ]
  if not results:
    return
  run = read_run(workdir)
  if run is not None and SUMMARY_FILE not in results:
    saved, new = _flatten(run.get("config", {})), _flatten(_plain(config))
    if all(saved[f] == new[f] for f in saved.keys() & new.keys() if not _resumable(f)):
      return
  raise WorkdirError(
    f"{workdir} holds the results of another run ({', '.join(results)}) but no checkpoint "
    "to resume it from, and a new run would overwrite them; pass a new --workdir, or "
    "delete those files to start over in this one."
  )


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: tree}


def _plain(config: ml_collections.ConfigDict) -> dict:
  """The config as JSON would give it back (tuples as lists)."""
  return json.loads(json.dumps(config.to_dict()))


def _resumable(field: str) -> bool:
  return any(field == f or field.startswith(f + ".") for f in RESUMABLE_FIELDS)


def read_run(workdir: str) -> dict | None:
  """The contents of WORKDIR/run.json, or None if there is none."""
  path = epath.Path(workdir) / RUN_FILE
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise WorkdirError(
      f"{path} is not valid JSON ({error}); restore it from a copy (the checkpoints "
      "are untouched), or use a new --workdir to start a new run."
    ) from error


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config WORKDIR/run.json records, the one the run was started with, over the
  current defaults: a field added to the config since the run started has its default."""
  run = read_run(workdir)
  if run is None:
    raise WorkdirError(
      f"{epath.Path(workdir) / RUN_FILE} does not exist: {workdir} is not the folder of a "
      "training run (a run writes it when it starts)."
    )
  config = defaults()
  config.update(run["config"])
  return config


def saved_step(run: dict) -> int:
  """The newest step a run recorded in its run.json as saved or resumed from (0: none)."""
  return max([run.get("saved_step") or 0, *(r["step"] for r in run.get("resumes", []))])


def _class_difference(saved: Sequence[str], new: Sequence[str]) -> str:
  """How two class lists differ, in words."""
  added, removed = [n for n in new if n not in saved], [n for n in saved if n not in new]
  if not added and not removed:
    return "the same names in another order"
  return ", ".join(
    f"{what} {names}" for what, names in (("added", added), ("removed", removed)) if names
  )


def check_resume(
  config: ml_collections.ConfigDict,
  workdir: str,
  class_names: Sequence[str],
  has_checkpoints: bool,
) -> dict[str, tuple]:
  """Compares `config` and the dataset's `class_names` with the run WORKDIR/run.json
  records, before anything is restored.

  Returns {field: (saved, new)} of the resumable fields that changed (logged); {} for a
  new run.

  Raises:
    WorkdirError: checkpoints but no run.json (unless config.trust_workdir); a run.json
      that records saved progress but no checkpoint left; a field outside
      RESUMABLE_FIELDS that differs (every such field is named with both values); a
      class list that differs from the run's (data.root may change, its classes not).
  """
  run = read_run(workdir)
  path = epath.Path(workdir) / RUN_FILE
  if run is None:
    if has_checkpoints and not config.trust_workdir:
      raise WorkdirError(
        f"{workdir} holds checkpoints but no {RUN_FILE}, so this config and these classes "
        "cannot be checked against the run that saved them: pass "
        "--config.trust_workdir=true to resume it anyway, or use a new --workdir."
      )
    if has_checkpoints:
      logging.warning(
        "%s has checkpoints but no %s: resuming unchecked (config.trust_workdir).",
        workdir,
        RUN_FILE,
      )
    return {}
  if not has_checkpoints:
    if saved_step(run):
      raise WorkdirError(
        f"{path} records a checkpoint saved at step {saved_step(run)}, but {workdir} has "
        "none left in checkpoints/ or best/, so the run would start again from step 0: "
        "bring the checkpoints back, or remove run.json (or use a new --workdir) to start "
        "over on purpose."
      )
    return {}
  saved, new = _flatten(run["config"]), _flatten(_plain(config))
  changed = {
    field: (saved.get(field), new.get(field))
    for field in sorted(saved.keys() | new.keys())
    if saved.get(field) != new.get(field)
  }
  fixed = {
    field: values
    for field, values in changed.items()
    if not _resumable(field) and field in saved and field in new
  }
  if fixed:
    listed = ", ".join(f"{field} ({old!r} -> {value!r})" for field, (old, value) in fixed.items())
    raise WorkdirError(
      f"{workdir} holds a run started with another config, and resuming it would mix two "
      f"experiments: {listed}; use a new --workdir to start a new run, or rerun with the "
      f"values in {path}."
    )
  if list(class_names) != run["class_names"]:
    raise WorkdirError(
      f"config.data.root={config.data.root!r} gives {len(class_names)} classes where {path} "
      f"records {len(run['class_names'])} ({_class_difference(run['class_names'], class_names)}"
      "), so the checkpoints do not fit it: point data.root at the data the run was "
      "started with, or use a new --workdir."
    )
  for field, (old, value) in changed.items():
    logging.info("Resuming with config.%s changed: %r -> %r.", field, old, value)
  return {field: values for field, values in changed.items() if field not in fixed}


# What a trained model computes from an image: scoring its checkpoint with another value
# scores something else. The scoring choices only change how scores are computed or
# counted, so another value is applied, with a warning.
SCORING_FIELDS = (
  "model.backbone",
  "model.kernel",
  "model.embedding_dim",
  "model.variance",
  "model.mode",
  "data.image_size",
  "data.mean",
  "data.std",
)
SCORING_CHOICES = ("eval_batch_size", "threshold")


def check_scoring(
  config: ml_collections.ConfigDict, workdir: str, class_names: Sequence[str]
) -> None:
  """Compares `config` and the `class_names` scored with the run WORKDIR/run.json
  records, before its checkpoint is scored (--mode=eval/predict); logs the scoring
  choices that differ.

  Raises:
    WorkdirError: a field of SCORING_FIELDS, or the class list, differs (named).
  """
  run = read_run(workdir)
  if run is None:
    logging.warning("%s has no %s: its checkpoint is scored unchecked.", workdir, RUN_FILE)
    return
  path = epath.Path(workdir) / RUN_FILE
  saved, new = _flatten(run["config"]), _flatten(_plain(config))
  differ = [f for f in SCORING_FIELDS if f in saved and saved[f] != new.get(f)]
  if differ:
    listed = ", ".join(f"{f} ({saved[f]!r} -> {new.get(f)!r})" for f in differ)
    raise WorkdirError(
      f"{workdir}'s checkpoints were trained with another model or input than this config "
      f"gives: {listed}; rerun with the values in {path}."
    )
  if list(class_names) != run["class_names"]:
    raise WorkdirError(
      f"The data scored has {len(class_names)} classes where {path} records "
      f"{len(run['class_names'])} ({_class_difference(run['class_names'], class_names)}): "
      "point config.data.root at data with the run's classes."
    )
  for field in SCORING_CHOICES:
    if field in saved and saved[field] != new.get(field):
      logging.warning(
        "config.%s=%r differs from the run's %r; scoring with %r.",
        field,
        new.get(field),
        saved[field],
        new.get(field),
      )


def software_versions() -> dict[str, str | None]:
  """{package: installed version, None if absent} of VERSIONED_PACKAGES, and "python"."""
  versions = {}
  for name in VERSIONED_PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return {**versions, "python": platform.python_version()}


def _warn_about_new_versions(workdir: str, run: dict, versions: dict) -> None:
  """Logs which versions differ from those of the run's last start or resume."""
  recorded = [r["versions"] for r in run.get("resumes", []) if "versions" in r]
  previous = recorded[-1] if recorded else run.get("versions")
  if not previous:
    return
  changed = [f"{k} {previous.get(k)} -> {v}" for k, v in versions.items() if previous.get(k) != v]
  if changed:
    logging.warning(
      "Resuming %s on other software versions than its last start: %s; a checkpoint, the "
      "compiled step and the numbers may differ across versions.",
      workdir,
      ", ".join(changed),
    )


def write_run(
  workdir: str,
  config: ml_collections.ConfigDict,
  class_names: Sequence[str],
  resumed_at: int | None = None,
  changes: dict[str, tuple] | None = None,
) -> None:
  """Writes WORKDIR/run.json for a new run, or records a resume in it (process 0)."""
  if jax.process_index() != 0:
    return
  run = (read_run(workdir) if resumed_at is not None else None) or {"resumes": []}
  run.update({"class_names": list(class_names), "config": _plain(config)})
  versions = software_versions()
  if resumed_at is not None:
    _warn_about_new_versions(workdir, run, versions)
    run.setdefault("resumes", []).append(
      {
        "step": resumed_at,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "changed": {field: list(values) for field, values in (changes or {}).items()},
        "versions": versions,
      }
    )
  else:
    run["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run["versions"] = versions
  (epath.Path(workdir) / RUN_FILE).write_text(json.dumps(run, indent=2))


def record(workdir: str, fields: dict[str, Any]) -> None:
  """Adds `fields` to WORKDIR/run.json (process 0): facts learnt while the run starts,
  such as what its compiled step costs."""
  if jax.process_index() == 0:
    run = read_run(workdir) or {}
    run.update(fields)
    (epath.Path(workdir) / RUN_FILE).write_text(json.dumps(run, indent=2))


def record_saved_step(workdir: str, step: int | None) -> None:
  """Records in WORKDIR/run.json (process 0) that the checkpoint of `step` is committed,
  so that a rerun that finds no checkpoint refuses to start again from step 0."""
  if step is not None and jax.process_index() == 0:
    run = read_run(workdir) or {}
    if run.get("saved_step") != step:
      record(workdir, {"saved_step": step})
