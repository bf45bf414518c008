"""The host's image transforms: the reference's augmentations with PIL."""

import numpy as np
import pytest
from PIL import Image

from kmcl_jax.data import transforms


def test_transforms_match_torchvision_resize_and_affine():
  pytest.importorskip("torchvision")
  from torchvision.transforms import InterpolationMode
  from torchvision.transforms import functional as F
  image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8))
  np.testing.assert_array_equal(transforms.squish_resize(image, 24), F.resize(image, [24, 24]))
  for angle, shift, scale in ((30.0, (3, -2), 1.1), (-44.2, (0, 5), 0.87)):
    np.testing.assert_array_equal(
        transforms.affine(image, angle, shift, scale),
        F.affine(image, angle, list(shift), scale, [0.0, 0.0],
                 interpolation=InterpolationMode.NEAREST, fill=0))


def test_cutout_fills_half_the_side_with_one_colour():
  image = Image.new("RGB", (40, 40), (1, 2, 3))
  for seed in range(20):
    out = np.asarray(transforms.cutout(image, np.random.default_rng(seed), 0.5))
    changed = (out != [1, 2, 3]).any(-1)
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    # 20-pixel sides, corners inclusive, clipped at the border.
    assert 1 <= len(rows) <= 21 and 1 <= len(cols) <= 21
    assert changed[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    assert len(np.unique(out[changed], axis=0)) == 1
  # A centre far from the borders gives the full 21 x 21 rectangle (corners inclusive).
  full = [seed for seed in range(200) if all(10 <= c < 30 for c in np.random.default_rng(
      seed).integers(40, size=2))][0]
  out = np.asarray(transforms.cutout(image, np.random.default_rng(full), 0.5))
  assert (out != [1, 2, 3]).any(-1).sum() == 21 * 21


def test_rand_augment_is_a_function_of_the_generator():
  image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8))
  outputs = [np.asarray(transforms.rand_augment(image, np.random.default_rng(s)))
             for s in range(30)]
  again = [np.asarray(transforms.rand_augment(image, np.random.default_rng(s))) for s in range(30)]
  assert all(np.array_equal(a, b) for a, b in zip(outputs, again))
  assert sum(not np.array_equal(o, np.asarray(image)) for o in outputs) >= 10
  for name, operation, values in transforms.RANDAUGMENT_OPS:
    for magnitude in range(1, 10):
      out = operation(image, values[magnitude], np.random.default_rng(magnitude))
      assert out.size == (32, 32) and out.mode == "RGB", name


def test_normalize():
  images = np.array([[[0, 255, 51]]], np.uint8)
  np.testing.assert_allclose(transforms.normalize(images, (0.5, 0.5, 0.2), (0.5, 0.25, 0.1)),
                             [[[-1.0, 2.0, 0.0]]], atol=1e-6)
