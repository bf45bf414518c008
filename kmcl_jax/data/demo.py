"""An embedded multilabel dataset built at run time from scikit-learn's bundled digits.

Each image is a 2 x 2 grid of cells on a dark background; one to four cells hold a
handwritten digit (8 x 8 scans upscaled 3x, random colour and jitter), and the labels
are the digits present (10 classes). Train and test images draw their digits from
disjoint halves of the 1,797 scans, so test handwriting is unseen. Every image is a pure
function of (split, index): nothing is stored or downloaded, and any worker process can
render any record.

The correlated variant (`DigitGridSource(split, correlated=True)`, dataset name
`demo_correlated`) has label correlations by construction, a known answer for
`python -m kmcl_jax.analyze`: each digit of PAIRS brings its partner into the next free
cell with probability PARTNER_PROBABILITY, every other draw is independent.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

CLASS_NAMES = tuple(str(d) for d in range(10))
SPLITS = {"train": 4000, "test": 1000}
IMAGE_SIZE = 64
_CELL = IMAGE_SIZE // 2
_SCALE = 3
_TILE = 8 * _SCALE
_SPLIT_SEED = {"train": 1, "test": 2}
_MAX_CELLS = 4
# The correlated variant's digit pairs (disjoint); the digits 6 to 9 are independent.
PAIRS = ((0, 1), (2, 3), (4, 5))
PARTNER_PROBABILITY = 0.9
_PARTNER = {a: b for pair in PAIRS for a, b in (pair, pair[::-1])}


@functools.cache
def digit_pools() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{split: (scans float32 (M, 24, 24) in [0, 1], digits int (M,))}, disjoint halves."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  order = np.random.default_rng(0).permutation(len(digits.target))
  scans = np.kron(digits.images / 16.0, np.ones((_SCALE, _SCALE))).astype(np.float32)
  half = len(order) * 2 // 3
  return {
    "train": (scans[order[:half]], digits.target[order[:half]]),
    "test": (scans[order[half:]], digits.target[order[half:]]),
  }


@functools.cache
def _scans_of_digit(split: str) -> tuple[np.ndarray, ...]:
  """The indices into digit_pools()[split] of each digit's scans, by digit."""
  digits = digit_pools()[split][1]
  return tuple(np.flatnonzero(digits == d) for d in range(len(CLASS_NAMES)))


def _correlated_digits(rng: np.random.Generator) -> list[int]:
  """1 to 4 digits: uniform draws, each digit of PAIRS followed by its partner (while a
  cell is free) with probability PARTNER_PROBABILITY."""
  count = rng.integers(1, _MAX_CELLS + 1)
  digits = []
  while len(digits) < count:
    digit = int(rng.integers(len(CLASS_NAMES)))
    digits.append(digit)
    partner = _PARTNER.get(digit)
    if partner is not None and len(digits) < _MAX_CELLS and rng.random() < PARTNER_PROBABILITY:
      digits.append(partner)
  return digits


@dataclasses.dataclass(frozen=True)
class DigitGridSource:
  """grain random-access source of digit-grid records (see the module docstring)."""

  split: str
  correlated: bool = False
  class_names: tuple[str, ...] = CLASS_NAMES

  def __post_init__(self):
    if self.split not in SPLITS:
      raise ValueError(f"demo: unknown split {self.split!r}; expected one of {tuple(SPLITS)}.")
    # Load the scans (importing scikit-learn and SciPy) here, not first in a pipeline thread:
    # SciPy's import looks at a half-imported torch (tensorboardX imports it in the main
    # thread) and fails with "partially initialized module 'torch' has no attribute 'Tensor'".
    digit_pools()

  @property
  def name(self) -> str:
    return f"demo{'_correlated' if self.correlated else ''} {self.split}"

  def __len__(self) -> int:
    return SPLITS[self.split]

  def _layout(self, index: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """(rng for the rendering, occupied cells, scan indices), all from (split, index)."""
    if not 0 <= index < len(self):
      raise IndexError(f"demo {self.split}: index {index} outside [0, {len(self)}).")
    rng = np.random.default_rng([_SPLIT_SEED[self.split], index])
    if self.correlated:
      by_digit = _scans_of_digit(self.split)
      scans = np.array([rng.choice(by_digit[d]) for d in _correlated_digits(rng)])
      return rng, rng.permutation(_MAX_CELLS)[: len(scans)], scans
    count = rng.integers(1, _MAX_CELLS + 1)
    cells = rng.permutation(_MAX_CELLS)[:count]
    scans = rng.integers(0, len(digit_pools()[self.split][1]), size=count)
    return rng, cells, scans

  def annotations(self, index: int) -> dict:
    _, _, scans = self._layout(index)
    labels = np.zeros(len(CLASS_NAMES), np.float32)
    labels[digit_pools()[self.split][1][scans]] = 1.0
    return {
      "labels": labels,
      "ignore": np.zeros(len(CLASS_NAMES), bool),
      "id": f"demo{'_correlated' if self.correlated else ''}-{self.split}-{index:05d}",
    }

  def __getitem__(self, index: int) -> dict:
    rng, cells, scans = self._layout(index)
    background = rng.uniform(0, 60, size=3)
    image = background + rng.normal(0, 8, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    for cell, scan in zip(cells, scans, strict=True):
      colour = rng.uniform(120, 255, size=3)
      top, left = np.array(divmod(cell, 2)) * _CELL + rng.integers(0, _CELL - _TILE + 1, size=2)
      alpha = digit_pools()[self.split][0][scan][..., None]
      patch = image[top : top + _TILE, left : left + _TILE]
      image[top : top + _TILE, left : left + _TILE] = patch * (1 - alpha) + colour * alpha
    return {"image": np.clip(image, 0, 255).astype(np.uint8), **self.annotations(index)}
