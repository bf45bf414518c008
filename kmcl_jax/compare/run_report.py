"""What a whole-run comparison shows: its table, its curves (PNG) and its JSON file."""

from __future__ import annotations

import numpy as np
from etils import epath

from kmcl_jax import losses
from kmcl_jax.compare.run import RUNS
from kmcl_jax.reporting import pyplot, save_figure, to_json

LABELS = {"ours": "ours (JAX)", "theirs": "theirs (PyTorch)", "seed_b": "ours, seed B"}
STYLES = {
  "ours": {"color": "tab:blue", "linewidth": 1.0},
  "theirs": {"color": "tab:orange", "linewidth": 1.0, "linestyle": "--"},
  "seed_b": {"color": "tab:gray", "linewidth": 0.8, "alpha": 0.7},
}


def verdict(agreement: dict) -> str:
  """One sentence: whether the runs agree, and the numbers each check compared."""
  first = agreement["first_steps_agree"]
  loss_part = (
    "the loss was not checked step by step (training precision)"
    if first is None
    else f"the loss of the first {agreement['first_steps']} steps differs by at most "
    f"{agreement['first_steps_max_rel_diff']:.1e} relative (tolerance "
    f"{agreement['loss_rtol']:.0e}: {'within' if first else 'EXCEEDED'})"
  )
  return (
    f"{'AGREE' if agreement['agree'] else 'DISAGREE'}: {loss_part}; the final mAP differs "
    f"by {agreement['final_map_diff']:.2f} points against a seed spread of "
    f"{agreement['seed_spread']:.2f} (bound {agreement['final_map_bound']:.2f}: "
    f"{'within' if agreement['final_map_agree'] else 'EXCEEDED'})."
  )


def table(record: dict) -> str:
  """The final numbers of each run side by side, then the verdict."""
  final_eval, final_step = record["evals"][-1], record["steps"][-1]
  rows = [
    ("final mAP, model", lambda run: f"{final_eval[run]['map']:.2f}"),
    ("final mAP, EMA", lambda run: f"{final_eval[run]['map_ema']:.2f}"),
    (f"loss at step {final_step['step']}", lambda run: f"{final_step[run]['loss']:.4f}"),
    ("seconds (steps + evaluations)", lambda run: f"{record['wall_seconds'][run]:.0f}"),
    ("  of which the first step", lambda run: f"{record['first_step_seconds'][run]:.0f}"),
  ]
  width = 32
  lines = [f"{'':<{width}}" + "".join(f"{LABELS[run]:>18}" for run in RUNS)]
  lines += [f"{name:<{width}}" + "".join(f"{cell(run):>18}" for run in RUNS) for name, cell in rows]
  timing = record["time_to_map"]
  lines.append(
    f"time to mAP {timing['target_map']:.2f}: ours {timing['ours']:.0f} s, theirs "
    f"{timing['theirs']:.0f} s"
  )
  lines.append(verdict(record["agreement"]))
  return "\n".join(lines)


def write_plot(record: dict, path: str) -> None:
  """Every loss term and the mAP of model and EMA over steps, the three runs overlaid."""
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  plt = pyplot()
  figure, axes = plt.subplots(2, 3, figsize=(15, 8))
  steps = [s["step"] for s in record["steps"]]
  for axis, key in zip(axes.flat, ("loss", *losses.TERMS), strict=False):
    for run in RUNS:
      values = np.array([np.nan if s[run][key] is None else s[run][key] for s in record["steps"]])
      axis.plot(steps, values, label=LABELS[run], **STYLES[run])
    # A term left out (weight 0, ASL-only) is 0 throughout: no log scale for it.
    positive = any((s[run][key] or 0) > 0 for s in record["steps"] for run in RUNS)
    axis.set(title=f"{key} (per step)", xlabel="step", yscale="log" if positive else "linear")
  eval_steps = [e["step"] for e in record["evals"]]
  for axis, key, title in ((axes[1, 1], "map", "model"), (axes[1, 2], "map_ema", "EMA")):
    for run in RUNS:
      axis.plot(
        eval_steps,
        [e[run][key] for e in record["evals"]],
        marker="o",
        label=LABELS[run],
        **STYLES[run],
      )
    axis.set(title=f"test mAP, {title}", xlabel="step", ylabel="mAP (%)")
    axis.grid(alpha=0.3)
  axes[0, 0].legend()
  figure.suptitle(verdict(record["agreement"]), fontsize=9, wrap=True)
  save_figure(figure, path)


def write_json(record: dict, path: str) -> None:
  """The record as strict JSON (a non-finite number as null), its folder made if needed."""
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  epath.Path(path).write_text(to_json(record, indent=1))
