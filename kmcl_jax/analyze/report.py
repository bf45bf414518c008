"""`analyse`: a trained run's best checkpoint over a split -> analysis.json and PNGs.

OUTPUT/analysis.json holds the data's label statistics ("data": per-class frequency,
P(j | i), PMI, the strong pairs), then per variant (model, EMA) the mAP and per-class AP,
each learned affinity with its agreement with the data (analysis.py), the per-class
uncertainty and the class map; the PNGs are plots.py's.
"""

from __future__ import annotations

import math

import numpy as np
from absl import logging
from etils import epath

from kmcl_jax.analyze import analysis, plots, statistics
from kmcl_jax.analyze.collect import collect, feature_dim
from kmcl_jax.data import create_eval_dataset
from kmcl_jax.errors import RunStopped
from kmcl_jax.files import replace_file
from kmcl_jax.inference import load_state
from kmcl_jax.mesh import create_mesh
from kmcl_jax.reporting import to_json
from kmcl_jax.state import VARIANTS
from kmcl_jax.workdir import has_checkpoints, run_config

ANALYSIS_FILE = "analysis.json"
CHOICES = ("both", "auto", *VARIANTS)
ASL_ONLY_NOTE = (
  "ASL only: the head has no kernels, so the learned affinity is the correlation of the "
  "logits over the split and there is no learned variance."
)


def analyse(
  workdir: str,
  split: str | None = None,
  output: str | None = None,
  variant: str = "both",
  data_root: str | None = None,
) -> dict:
  """Analyses WORKDIR's best checkpoint on `split` (default: the run's evaluation split)
  with `variant`'s weights (both, auto: the one that scored the checkpoint, model or ema),
  the data read from `data_root` (default: the run's); writes OUTPUT (default
  WORKDIR/analysis)/analysis.json and the PNGs; returns what it wrote to the JSON."""
  if variant not in CHOICES:
    raise ValueError(f"--variant={variant!r}: expected one of {CHOICES}.")
  if not has_checkpoints(workdir):
    raise RunStopped(
      f"--workdir={workdir!r} has no checkpoint (best/ or checkpoints/): analyse a run "
      "that has saved one."
    )
  config = run_config(workdir)
  config.data.eval_split = split or config.data.eval_split
  config.data.root = data_root or config.data.root
  mesh = create_mesh()
  batches, source = create_eval_dataset(config)
  class_names = list(source.class_names)
  model, state, origin, best, _ = load_state(config, workdir, class_names, mesh)
  variants = {"both": VARIANTS, "auto": (best,)}.get(variant, (variant,))
  total_batches = math.ceil(len(source) / config.eval_batch_size)
  collected = collect(
    config, model, state, batches, total_batches, mesh, variants, f"analyze {source.name}"
  )
  positives = collected["positives"]
  statistics.check_positives(
    positives, class_names, f"The split {config.data.eval_split!r} of {config.data.name}"
  )
  data = statistics.cooccurrence(positives)
  dim = feature_dim(config, model, state)
  folder = epath.Path(output or epath.Path(workdir) / "analysis")
  folder.mkdir(parents=True, exist_ok=True)
  record = {
    "workdir": workdir,
    "weights": origin,
    "dataset": config.data.name,
    "split": config.data.eval_split,
    "images": len(positives),
    "head": {k: config.model[k] for k in ("mode", "kernel", "variance")}
    | {"embedding_dim": config.model.embedding_dim, "feature_dim": dim},
    "note": ASL_ONLY_NOTE if config.model.mode == "asl_only" else None,
    "data": {
      "class_names": class_names,
      "frequency": data["frequency"],
      "conditional": data["conditional"],
      "pmi": data["pmi"],
      "strong_pairs": [
        [class_names[i], class_names[j]] for i, j in statistics.strong_pairs(data["pmi"])
      ],
    },
    "variants": {},
    "plots": [],
  }
  for name in variants:
    classifier = np.asarray(state.weights(name)["params"]["head"]["kmm"]["pi"]["kernel"])
    variant_record, plotted = analysis.analyse_variant(
      collected[name], positives, collected["ignore"], data, class_names, dim, classifier
    )
    record["variants"][name] = variant_record
    record["plots"] += plots.write_plots(folder, name, variant_record, plotted, data, class_names)
    logging.info(
      "%s: mAP %.2f; rank correlation of the learned affinity with the data's PMI: %s",
      name,
      variant_record["map"],
      ", ".join(
        f"{affinity} {agreement['rank_correlation']:.3f}"
        for affinity, agreement in variant_record["affinity"].items()
      ),
    )
  path = folder / ANALYSIS_FILE
  replace_file(path, to_json(record, indent=2).encode())
  logging.info("Wrote %s and %d plots to %s", ANALYSIS_FILE, len(record["plots"]), folder)
  return record
