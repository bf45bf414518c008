"""The analysis's PNGs, one set per variant (model, EMA): affinity, uncertainty, class map."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from etils import epath

from kmcl_jax.analyze import statistics
from kmcl_jax.reporting import pyplot, save_figure

AFFINITY_TITLES = {
  "kernel_pair": "learned: -BD of the two components in an image",
  "kernel_prototype": "learned: -BD of the class prototypes",
  "prototype_means": "learned: -distance of the prototypes' means",
  "logit_correlation": "learned: correlation of the logits",
  "classifier_cosine": "learned: cosine of the classifier weights",
  "feature_prototypes": "control: -distance of the mean features",
}


def _heatmap(figure, axis, matrix: np.ndarray, class_names: Sequence[str], title: str) -> None:
  shown = np.array(matrix, dtype=float)
  np.fill_diagonal(shown, np.nan)  # the diagonal is trivial and would set the colour range
  image = axis.imshow(shown, cmap="viridis")
  ticks = range(len(class_names))
  small = dict(fontsize=7 if len(class_names) > 20 else 9)
  axis.set_xticks(ticks, class_names, rotation=90, **small)
  axis.set_yticks(ticks, class_names, **small)
  axis.set_title(title, fontsize=10)
  figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)


def _labelled_scatter(axis, x, y, class_names: Sequence[str]) -> None:
  axis.scatter(x, y, color="tab:blue")
  for name, a, b in zip(class_names, x, y, strict=True):
    axis.annotate(name, (a, b), textcoords="offset points", xytext=(3, 3), fontsize=8)


def write_plots(
  folder: epath.Path,
  variant: str,
  record: dict,
  plotted: dict,
  data: dict,
  class_names: Sequence[str],
) -> list[str]:
  """affinity_VARIANT.png (the data's P(j | i) beside each learned affinity),
  uncertainty_VARIANT.png (a kernel head's class variance against frequency and AP) and
  class_map_VARIANT.png in `folder`; returns their paths."""
  plt = pyplot()
  paths = []

  def save(figure, name):
    paths.append(str(folder / name))
    save_figure(figure, folder / name)

  affinities = plotted["affinities"]
  panels = 1 + len(affinities)
  rows, columns = math.ceil(panels / 3), min(panels, 3)
  figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.6 * rows), squeeze=False)
  axes = axes.ravel()
  _heatmap(figure, axes[0], data["conditional"], class_names, "data: P(column | row)")
  for axis in axes[panels:]:
    axis.set_axis_off()
  for axis, (name, matrix) in zip(axes[1:panels], affinities.items(), strict=True):
    agreement = record["affinity"][name]
    recovered = agreement["recovered"]
    _heatmap(
      figure,
      axis,
      matrix,
      class_names,
      f"{AFFINITY_TITLES[name]}\nrank corr. with PMI {agreement['rank_correlation']:.2f}"
      + (
        ""
        if recovered is None
        else f"\nstrong pairs on top {recovered:.0%}, partner nearest "
        f"{agreement['nearest_partner']:.0%}"
      ),
    )
  figure.suptitle(f"Label co-occurrence and learned class affinity ({variant})")
  save(figure, f"affinity_{variant}.png")

  if record["uncertainty"] is not None:
    uncertainty = record["uncertainty"]
    variance = plotted["variance"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    _labelled_scatter(axes[0], 100 * data["frequency"], variance, class_names)
    axes[0].set(
      xlabel="positive images (% of the split)",
      ylabel="learned variance (mean over dimensions)",
      title=f"rank corr. {uncertainty['rank_correlation_with_frequency']:.2f}",
    )
    _labelled_scatter(axes[1], plotted["ap"], variance, class_names)
    axes[1].set(
      xlabel="AP (%)",
      ylabel="learned variance (mean over dimensions)",
      title=f"rank corr. {uncertainty['rank_correlation_with_ap']:.2f}",
    )
    figure.suptitle(f"Per-class uncertainty ({variant})")
    save(figure, f"uncertainty_{variant}.png")

  figure, axis = plt.subplots(figsize=(6, 5))
  coordinates = plotted["map"]
  _labelled_scatter(axis, coordinates[:, 0], coordinates[:, 1], class_names)
  for i, j in statistics.strong_pairs(data["pmi"]):
    axis.plot(*coordinates[[i, j]].T, color="tab:orange", alpha=0.6)
  explained = record["class_map"]["explained_variance"]
  axis.set(
    xlabel=f"axis 1 ({100 * explained[0]:.0f}% of the variance)",
    ylabel=f"axis 2 ({100 * explained[1]:.0f}%)",
    title=f"{plotted['map_what']} ({variant})\nlines: the data's strong pairs",
  )
  axis.title.set_fontsize(10)
  save(figure, f"class_map_{variant}.png")
  return paths
