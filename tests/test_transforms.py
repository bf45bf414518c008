"""The host's image transforms: the reference's augmentations with PIL (RandAugment's
judged by the `randaugment` package the reference imports), bit for bit."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

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
      F.affine(
        image,
        angle,
        list(shift),
        scale,
        [0.0, 0.0],
        interpolation=InterpolationMode.NEAREST,
        fill=0,
      ),
    )


def test_cutout_fills_half_the_side_with_one_colour():
  image = Image.new("RGB", (40, 40), (1, 2, 3))
  for seed in range(20):
    out = np.asarray(transforms.cutout(image, np.random.default_rng(seed), 0.5))
    changed = (out != [1, 2, 3]).any(-1)
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    # 20-pixel sides, corners inclusive, clipped at the border.
    assert 1 <= len(rows) <= 21 and 1 <= len(cols) <= 21
    assert changed[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
    assert len(np.unique(out[changed], axis=0)) == 1
  # A centre far from the borders gives the full 21 x 21 rectangle (corners inclusive).
  full = [
    seed
    for seed in range(200)
    if all(10 <= c < 30 for c in np.random.default_rng(seed).integers(40, size=2))
  ][0]
  out = np.asarray(transforms.cutout(image, np.random.default_rng(full), 0.5))
  assert (out != [1, 2, 3]).any(-1).sum() == 21 * 21


def test_rand_augment_is_a_function_of_the_generator():
  image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8))
  outputs = [
    np.asarray(transforms.rand_augment(image, np.random.default_rng(s))) for s in range(30)
  ]
  again = [np.asarray(transforms.rand_augment(image, np.random.default_rng(s))) for s in range(30)]
  assert all(np.array_equal(a, b) for a, b in zip(outputs, again, strict=True))
  assert sum(not np.array_equal(o, np.asarray(image)) for o in outputs) >= 10
  for name, operation, values in transforms.RANDAUGMENT_OPS:
    for magnitude in range(1, 10):
      out = operation(image, values[magnitude], np.random.default_rng(magnitude))
      assert out.size == (32, 32) and out.mode == "RGB", name


def test_normalize():
  images = np.array([[[0, 255, 51]]], np.uint8)
  np.testing.assert_allclose(
    transforms.normalize(images, (0.5, 0.5, 0.2), (0.5, 0.25, 0.1)), [[[-1.0, 2.0, 0.0]]], atol=1e-6
  )


# The recipe as first written here and as the reference runs it, its RandAugment
# operations the `randaugment` package's (tests/randaugment_package.py), fed the signs and
# cutout centres drawn from the Generator in the order the host's transforms draw them:
# the streamlined transforms must give the same pixels from the same Generator.
SIGNED = (
  "shear_x",
  "shear_y",
  "translate_x",
  "translate_y",
  "sharpness",
  "contrast",
  "color",
  "brightness",
)


def recipe_train_image(image, rng, image_size, cutout_factor, augment):
  from randaugment_package import package_operation

  pil = Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR)
  if cutout_factor > 0:
    width, height = pil.size
    half_w, half_h = int(cutout_factor * width + 0.5) // 2, int(cutout_factor * height + 0.5) // 2
    cx, cy = rng.integers(width), rng.integers(height)
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    pil = pil.copy()
    ImageDraw.Draw(pil).rectangle(
      [
        int(np.clip(cx - half_w, 0, width)),
        int(np.clip(cy - half_h, 0, height)),
        int(np.clip(cx + half_w, 0, width)),
        int(np.clip(cy + half_h, 0, height)),
      ],
      fill=colour,
    )
  if augment == "randaugment":
    names = [name for name, _, _ in transforms.RANDAUGMENT_OPS]
    choices = [(rng.integers(len(names)), rng.integers(1, 10)) for _ in range(2)]
    for op, magnitude in choices:
      if rng.random() < 0.5:
        name = names[op]
        sign = (1 if rng.integers(2) else -1) if name in SIGNED else 1
        centre = (rng.integers(pil.size[0]), rng.integers(pil.size[1])) if name == "cutout" else ()
        operation, _ = package_operation(name, magnitude, sign, centre)
        pil = operation(pil)
  elif augment == "affine":
    pil = transforms.random_affine(pil, rng)
  return np.asarray(pil.convert("RGB"), np.uint8)


def test_train_and_eval_images_equal_the_plain_pil_recipe_bit_for_bit():
  pytest.importorskip("randaugment")
  draws = np.random.default_rng(0)
  for seed in range(400):
    height, width = draws.integers(12, 90, size=2)
    image = draws.integers(0, 256, (height, width, 3), np.uint8)
    options = dict(
      image_size=int(draws.choice([16, 32, 48])),
      cutout_factor=float(draws.choice([0.0, 0.3, 0.5])),
      augment=str(draws.choice(["randaugment", "randaugment", "affine", "none"])),
    )
    expected = recipe_train_image(image, np.random.default_rng(seed), **options)
    for given in (image, Image.fromarray(image)):  # arrays and decoded PIL images alike
      np.testing.assert_array_equal(
        transforms.train_image(given, np.random.default_rng(seed), **options),
        expected,
        err_msg=f"seed {seed}, {options}",
      )
    np.testing.assert_array_equal(
      transforms.eval_image(Image.fromarray(image), 24),
      np.asarray(Image.fromarray(image).resize((24, 24), Image.BILINEAR)),
    )


def test_rotate_fills_with_grey_exactly_as_the_packages_rgba_composite():
  pytest.importorskip("randaugment")
  from randaugment_package import package_operation

  rotate = dict((name, op) for name, op, _ in transforms.RANDAUGMENT_OPS)["rotate"]
  draws = np.random.default_rng(1)
  for size in (7, 32, 33, 224):
    image = Image.fromarray(draws.integers(0, 256, (size, size + 3, 3), np.uint8))
    filled = 0
    for magnitude in range(1, 10):
      theirs, degrees = package_operation("rotate", magnitude, 1)
      expected = np.asarray(theirs(image))
      np.testing.assert_array_equal(np.asarray(rotate(image, degrees, None)), expected)
      filled += (expected == 128).all(-1).sum()
    assert filled > size  # the corners were filled
