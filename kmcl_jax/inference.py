"""Scoring a trained or converted model without training: --mode=eval and --mode=predict.

Weights come from WORKDIR's best checkpoint (or `step`, from best/ or checkpoints/) when
the workdir has one, whatever config.init_from says (the training command line reused
for eval names the ImageNet backbone there); else from config.init_from, a model
converted with `python -m kmcl_jax.convert` (a published KMCL checkpoint, say), whose
model and "EMA" are the same weights. A checkpoint is scored only with the model, image
size and classes of the run that saved it (WORKDIR/run.json).
"""

from __future__ import annotations

import csv
import glob
import io
import os

import jax
from absl import logging
from etils import epath
from jax.sharding import Mesh

from kmcl_jax import config as config_lib
from kmcl_jax import metrics as metrics_lib
from kmcl_jax import optim
from kmcl_jax.checkpointing import BEST, LATEST, Checkpoints
from kmcl_jax.data import create_eval_dataset
from kmcl_jax.data.data_config import split_source
from kmcl_jax.errors import RunStopped
from kmcl_jax.evaluation import evaluate, result_record
from kmcl_jax.files import replace_file
from kmcl_jax.mesh import create_mesh, replicated
from kmcl_jax.models import KMCLModel
from kmcl_jax.reporting import to_json
from kmcl_jax.state import (
  VARIANT_CHOICES,
  TrainState,
  abstract_state,
  create_model,
  initial_state,
  load_initial_weights,
)
from kmcl_jax.steps import make_eval_step
from kmcl_jax.workdir import check_scoring, read_run

EVAL_FILE = "eval.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def run_class_names(config, workdir: str) -> list[str]:
  """From WORKDIR/run.json (written by training), else from the dataset's eval split."""
  run = read_run(workdir)
  if run is not None:
    return run["class_names"]
  data = config.data
  return list(split_source(data, data.eval_split, training=False).class_names)


def load_state(
  config, workdir: str, class_names, mesh: Mesh, step: int | None = None
) -> tuple[KMCLModel, TrainState, str, str, str]:
  """(model, state, where the weights came from, the variant that scored best, the
  folder they were read from) for inference: WORKDIR's checkpoint when it has one
  (checked against its run.json), else config.init_from's converted model (whose model
  and "EMA" are the same weights)."""
  model = create_model(config, len(class_names))
  # Only the optimiser state's structure matters here, not its schedule's length.
  optimizer = optim.create_optimizer(config.optim, total_steps=100)
  checkpoints = Checkpoints(workdir)
  try:
    if checkpoints.latest.all_steps() or checkpoints.best.all_steps():
      if config_lib.initial_weights(config):
        logging.warning(
          "Scoring the checkpoints of %s, not config.init_from=%s: init_from is used only "
          "when the workdir has no checkpoint.",
          workdir,
          config.init_from,
        )
      check_scoring(config, workdir, class_names)
      restored = checkpoints.restore(
        abstract_state(config, model, optimizer, replicated(mesh)), best=True, step=step
      )
      if restored is not None:  # None: a trainer deleted every one while they were read
        state, restored_step = restored
        origin = f"{workdir} step {restored_step}"
        kind = BEST if restored_step in checkpoints.best.all_steps() else LATEST
        folder = os.fspath(checkpoints.root / kind / str(restored_step))
        return model, state, origin, checkpoints.best_variant() or "model", folder
  finally:
    checkpoints.close()
  if config_lib.initial_weights(config):
    state = initial_state(config, model, optimizer, replicated(mesh))
    weights = load_initial_weights(state, config.init_from, config, len(class_names))
    return model, weights, config.init_from, "model", config.init_from
  raise FileNotFoundError(
    f"--workdir={workdir!r} has no checkpoint (best/ or checkpoints/); "
    "train first or set --config.init_from to a converted model."
  )


def load_weights(
  config, workdir: str, class_names, step: int | None = None, variant: str = "auto"
) -> tuple[dict, str, str, str]:
  """({"params", "batch_stats"} of one variant, where they came from, that variant, the
  folder they were read from), found as `load_state` finds them: the one choice of
  weights for --mode=predict, `kmcl_jax.Classifier` and `kmcl_jax.export`.

  `variant` is "model", "ema" or "auto": the one that scored the best checkpoint's mAP
  (the model, for a converted model).
  """
  if variant not in VARIANT_CHOICES:
    raise ValueError(f"variant={variant!r}: expected one of {', '.join(VARIANT_CHOICES)}.")
  _, state, origin, best_variant, folder = load_state(
    config, workdir, class_names, create_mesh(), step
  )
  chosen = best_variant if variant == "auto" else variant
  return state.weights(chosen), origin, chosen, folder


def _writable(workdir: str) -> bool:
  """Whether eval.json can be written into a local workdir (an object store is tried)."""
  return "://" in workdir or os.access(workdir, os.W_OK)


def evaluate_checkpoint(config, workdir: str, step: int | None = None) -> dict:
  """Scores the evaluation split with the model and its EMA, logs the per-class AP
  table and writes WORKDIR/eval.json; returns what it wrote.

  Raises:
    RunStopped: eval.json could not be written (a read-only workdir, found before
      scoring and said then); the results are logged first.
  """
  config_lib.validate(config)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  path = epath.Path(workdir) / EVAL_FILE
  writable = _writable(workdir)
  if not writable:
    logging.warning(
      "%s is read-only: the results will be logged but not written to %s.", workdir, path
    )
  mesh = create_mesh()
  eval_batches, source = create_eval_dataset(config)
  class_names = list(source.class_names)
  model, state, origin, _, _ = load_state(config, workdir, class_names, mesh, step)
  eval_step = jax.jit(make_eval_step(config, model), out_shardings=replicated(mesh))
  results = evaluate(eval_step, state, eval_batches, mesh, config.threshold)
  report = {
    "weights": origin,
    **result_record(results, class_names),
    "ema": {k: results["ema"][k] for k in metrics_lib.THRESHOLD_METRICS},
  }
  best = report["best_of"]
  logging.info(
    "%s on %s: mAP model %.2f, EMA %.2f. Per-class AP of the %s:\n%s",
    origin,
    source.name,
    results["model"]["map"],
    results["ema"]["map"],
    best,
    metrics_lib.ap_table(results[best]["ap"], class_names),
  )
  why = "the workdir is read-only"
  if writable and jax.process_index() == 0:
    try:
      path.write_text(to_json(report, indent=2))
    except OSError as error:
      writable, why = False, str(error)
  if not writable:
    raise RunStopped(
      f"The results above were not written to {path} ({why}), so an eval.json there is "
      "not this evaluation's: make the workdir writable, or copy it, and rerun."
    )
  return report


def find_images(inputs: str) -> list[str]:
  """An image file, every image file in a folder (sorted, not recursive), or a glob."""
  if os.path.isdir(inputs):
    paths = [
      os.path.join(inputs, name)
      for name in sorted(os.listdir(inputs))
      if name.lower().endswith(IMAGE_EXTENSIONS)
    ]
  elif os.path.isfile(inputs):
    paths = [inputs]
  else:
    paths = sorted(p for p in glob.glob(inputs) if os.path.isfile(p))
  if not paths:
    raise FileNotFoundError(
      f"--inputs={inputs!r}: no image file (a file, a folder of "
      f"{'/'.join(IMAGE_EXTENSIONS)} files, or a glob)."
    )
  return paths


def predict(
  config, workdir: str, inputs: str, output: str, step: int | None = None, variant: str = "auto"
) -> list[dict]:
  """Class probabilities and predicted label sets (score >= config.threshold) for every
  readable image of `inputs`, written to `output` (.csv or .json) by
  `kmcl_jax.Classifier`. Unreadable images are logged and skipped. Returns the rows."""
  # classifier.py loads its weights through this module.
  from kmcl_jax.classifier import Classifier

  if jax.process_count() > 1:
    raise ValueError("--mode=predict runs as a single process.")
  if not output.endswith((".csv", ".json")):
    raise ValueError(f"--output={output!r}: expected a .csv or .json file name.")
  config_lib.validate(config)
  paths = find_images(inputs)
  classifier = Classifier.load(workdir, config=config, step=step, variant=variant)
  scored = classifier.predict(paths, batch_size=config.eval_batch_size, on_error="skip")
  class_names = classifier.class_names
  rows = [
    {
      "path": paths[index],
      "probabilities": dict(zip(class_names, map(float, row), strict=True)),
      "labels": labels,
    }
    for index, row, labels in zip(scored.kept, scored.probabilities, scored.labels, strict=True)
  ]
  write_predictions(rows, class_names, output)
  unreadable = [paths[index] for index, _ in scored.skipped]
  logging.info(
    "%d images scored with the %s of %s -> %s; %d unreadable%s",
    len(rows),
    classifier.variant,
    classifier.origin,
    output,
    len(unreadable),
    f": {unreadable}" if unreadable else "",
  )
  return rows


def write_predictions(rows: list[dict], class_names, output: str) -> None:
  """Writes `rows` to `output` (.csv or .json, local or gs://) in one piece: a failure
  leaves any earlier file there as it was. JSON is strict (a non-finite probability is
  null). A path that is not valid UTF-8 (a file name in another encoding) keeps its
  bytes: the CSV holds them as they are, the JSON as the \\udcXX escapes Python's
  os.fsdecode gives them (os.fsencode of the parsed string is the file's name again)."""
  if output.endswith(".json"):
    data = to_json(rows, indent=2).encode()
  else:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", *class_names, "labels"])
    for row in rows:
      writer.writerow(
        [
          row["path"],
          *(f"{row['probabilities'][n]:.6f}" for n in class_names),
          "|".join(row["labels"]),
        ]
      )
    data = text.getvalue().encode("utf-8", "surrogateescape")
    # os.fsdecode turns each byte that is not UTF-8 into U+DC80..U+DCFF.
    raw = [row["path"] for row in rows if any("\udc80" <= c <= "\udcff" for c in row["path"])]
    if raw:
      logging.warning(
        "%d file names are not UTF-8, such as %r: %s holds their bytes as they are (read it "
        "with errors='surrogateescape'), or write --output=*.json.",
        len(raw),
        raw[0],
        output,
      )
  if "://" not in output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  replace_file(output, data)
