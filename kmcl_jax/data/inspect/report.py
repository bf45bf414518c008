"""The inspection's outputs: OUTPUT/report.json, a co-occurrence heat map per split
(OUTPUT/cooccurrence_<split>.png) and the table printed to the terminal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath

from kmcl_jax import reporting
from kmcl_jax.data.inspect.images import ImageProblems
from kmcl_jax.data.split_checks import SplitStatistics

REPORT_FILE = "report.json"
# Above this many classes the heat map's cells are too small to print counts in.
ANNOTATED_CLASSES = 20


def heat_map_file(split: str) -> str:
  return f"cooccurrence_{split.replace('/', '_')}.png"


def split_report(
  statistics: SplitStatistics, problems: ImageProblems, warning: str | None, split: str
) -> dict:
  """The JSON record of one split."""
  names = statistics.class_names
  histogram = statistics.labels_per_image
  return {
    "name": statistics.name,
    "images": statistics.images,
    "labels_per_image": {
      "mean": float(histogram @ np.arange(len(histogram)) / max(statistics.images, 1)),
      "histogram": {str(count): int(images) for count, images in enumerate(histogram)},
    },
    "positives": dict(zip(names, statistics.positives.tolist(), strict=True)),
    "ignored": dict(zip(names, statistics.ignored.tolist(), strict=True)),
    "absent_classes": statistics.absent,
    "absent_warning": warning,
    "images_checked": problems.checked,
    "missing_images": problems.missing,
    "unreadable_images": problems.unreadable,
    "cooccurrence": statistics.cooccurrence.tolist(),
    "cooccurrence_png": heat_map_file(split),
  }


def problems_found(report: Mapping) -> list[str]:
  """One sentence per split that cannot be used as it is (missing or unreadable images)."""
  lines = []
  for split in report["splits"].values():
    bad = len(split["missing_images"]) + len(split["unreadable_images"])
    if bad:
      lines.append(
        f"{split['name']}: {len(split['missing_images'])} missing and "
        f"{len(split['unreadable_images'])} unreadable of {split['images']} images."
      )
  return lines


def write_heat_map(statistics: SplitStatistics, path) -> None:
  """The split's co-occurrence as a K x K heat map: cell (i, j) is coloured by the share
  of the images of class i that also show class j and, up to ANNOTATED_CLASSES classes,
  labelled with their count; the diagonal (each class's images) is left blank in colour
  so the scale spans the pairs."""
  plt = reporting.pyplot()
  counts = statistics.cooccurrence.astype(np.float64)
  share = counts / np.maximum(np.diag(counts), 1)[:, None]
  np.fill_diagonal(share, np.nan)
  top = np.nanmax(share) if len(share) > 1 and np.isfinite(share).any() else 1.0
  k = len(statistics.class_names)
  size = min(4 + 0.3 * k, 30)
  figure, axis = plt.subplots(figsize=(size + 1.5, size))
  image = axis.imshow(share, cmap="viridis", vmin=0, vmax=max(top, 1e-6))
  figure.colorbar(image, ax=axis, label="share of the row's images", fraction=0.046)
  ticks = range(k)
  font = 8 if k <= 40 else 5
  axis.set_xticks(ticks, statistics.class_names, rotation=90, fontsize=font)
  axis.set_yticks(ticks, statistics.class_names, fontsize=font)
  if k <= ANNOTATED_CLASSES:
    for i in range(k):
      for j in range(k):
        if counts[i, j]:
          colour = "black" if i == j or share[i, j] > 0.6 * top else "white"
          axis.text(j, i, f"{counts[i, j]:.0f}", ha="center", va="center", fontsize=6, c=colour)
  axis.set(
    title=f"{statistics.name}: class co-occurrence ({statistics.images} images)",
    xlabel="also shows class",
    ylabel="images of class",
  )
  reporting.save_figure(figure, path)


def write_report(report: Mapping, statistics: Mapping[str, SplitStatistics], output: str) -> None:
  """OUTPUT/report.json and a heat map per split."""
  folder = epath.Path(output)
  folder.mkdir(parents=True, exist_ok=True)
  for split, split_statistics in statistics.items():
    write_heat_map(split_statistics, folder / heat_map_file(split))
  (folder / REPORT_FILE).write_text(reporting.to_json(report, indent=1) + "\n")


def table(report: Mapping) -> str:
  """The report as text: a line per split, the positives of each class per split, the
  first missing and unreadable images of each split and its absent-class warning."""
  splits = list(report["splits"])
  records = [report["splits"][s] for s in splits]
  width = max(8, *(len(s) for s in splits))
  lines = [
    f"{'split':<{width}} {'images':>8} {'labels/img':>10} {'absent':>7} {'missing':>8} "
    f"{'unreadable':>10}  checked"
  ]
  for split, r in zip(splits, records, strict=True):
    lines.append(
      f"{split:<{width}} {r['images']:>8} {r['labels_per_image']['mean']:>10.2f} "
      f"{len(r['absent_classes']):>7} {len(r['missing_images']):>8} "
      f"{len(r['unreadable_images']):>10}  {r['images_checked']}"
    )
  classes: Sequence[str] = report["classes"]
  name_width = max(5, *(len(c) for c in classes))
  lines += ["", f"{'class':<{name_width}} " + " ".join(f"{s:>{width}}" for s in splits)]
  for name in classes:
    counts = " ".join(f"{r['positives'][name]:>{width}}" for r in records)
    lines.append(f"{name:<{name_width}} {counts}")
  for split, r in zip(splits, records, strict=True):
    lines += [f"{split}: missing {path}" for path in r["missing_images"][:5]]
    lines += [f"{split}: unreadable {line}" for line in r["unreadable_images"][:5]]
  lines += [r["absent_warning"] for r in records if r["absent_warning"]]
  return "\n".join(lines)
