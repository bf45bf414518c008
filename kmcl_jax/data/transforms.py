"""Image transforms of the reference recipe, on PIL images with an explicit numpy Generator.

Every random transform draws only from the `rng` it is given; the pipeline hands each
record a Generator seeded by (seed, epoch, index), so a record's augmentation never
depends on worker count, host count or what other records drew.

The image operations are PIL's, as the reference's (torchvision on PIL, its `CutoutPIL`
and the `randaugment` package): the same library gives the same pixels, and PIL releases
the GIL while decoding and resampling, so grain's reader threads overlap it.

Images come in as uint8 (H, W, 3) arrays or decoded RGB PIL images (file sources hand
the pipeline PIL images, which saves an array round trip) and leave as uint8 arrays.
Normalisation is not applied here: batches leave the host as uint8 (4x less host-to-device
traffic than float32) and `normalize` runs inside the compiled step.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

AUGMENTATIONS = ("randaugment", "affine", "none")
FILL_GREY = (128, 128, 128)  # what the geometric operations move in
PATCH_COLOUR = (125, 122, 113)  # the RandAugment "cutout" patch


def as_pil(image: np.ndarray | Image.Image) -> Image.Image:
  """uint8 (H, W, 3) array or RGB PIL image -> RGB PIL image (no copy for a PIL image)."""
  return image if isinstance(image, Image.Image) else Image.fromarray(image)


def as_array(image: Image.Image) -> np.ndarray:
  """RGB PIL image -> uint8 (H, W, 3) array (one copy)."""
  return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def squish_resize(image: Image.Image, size: int) -> Image.Image:
  """Resizes to (size, size) ignoring aspect ratio, bilinear with antialiasing (as
  torchvision's Resize((S, S)) on a PIL image)."""
  return image.resize((size, size), Image.BILINEAR)


def cutout(image: Image.Image, rng: np.random.Generator, factor: float = 0.5) -> Image.Image:
  """Fills a rectangle of `factor` times each side, at a uniform random centre (clipped
  to the image; corners inclusive), with a uniform random colour; returns a new image."""
  return draw_cutout(image.copy(), rng, factor)


def draw_cutout(image: Image.Image, rng: np.random.Generator, factor: float = 0.5) -> Image.Image:
  """`cutout` drawn into `image` itself, which it returns (for an image the caller owns)."""
  width, height = image.size
  half_w, half_h = int(factor * width + 0.5) // 2, int(factor * height + 0.5) // 2
  cx, cy = int(rng.integers(width)), int(rng.integers(height))
  colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
  ImageDraw.Draw(image).rectangle(
    [
      min(max(cx - half_w, 0), width),
      min(max(cy - half_h, 0), height),
      min(max(cx + half_w, 0), width),
      min(max(cy + half_h, 0), height),
    ],
    fill=colour,
  )
  return image


def _sign(rng: np.random.Generator) -> int:
  return 1 if rng.integers(2) else -1


def _rotate(image, degrees, rng):
  # The package rotates an RGBA copy and composites it on grey; nearest-neighbour alpha
  # is 0 or 255, so filling with grey directly gives the same pixels without the copies.
  return image.rotate(degrees, fillcolor=FILL_GREY)


def _patch(image, side, rng):
  width, height = image.size
  cx, cy = rng.integers(width), rng.integers(height)
  image = image.copy()
  ImageDraw.Draw(image).rectangle(
    [
      max(0, cx - side // 2),
      max(0, cy - side // 2),
      min(width, cx + side // 2) - 1,
      min(height, cy + side // 2) - 1,
    ],
    fill=PATCH_COLOUR,
  )
  return image


def _affine(image, matrix, resample=Image.NEAREST):
  return image.transform(image.size, Image.AFFINE, matrix, resample, fillcolor=FILL_GREY)


def _shear_x(image, value, rng):
  return _affine(image, (1, value * _sign(rng), 0, 0, 1, 0), Image.BICUBIC)


def _shear_y(image, value, rng):
  return _affine(image, (1, 0, 0, value * _sign(rng), 1, 0), Image.BICUBIC)


def _translate_x(image, value, rng):
  return _affine(image, (1, 0, value * image.size[0] * _sign(rng), 0, 1, 0))


def _translate_y(image, value, rng):
  return _affine(image, (1, 0, 0, 0, 1, value * image.size[1] * _sign(rng)))


def _enhance(enhancer):
  return lambda image, value, rng: enhancer(image).enhance(1 + value * _sign(rng))


# The `randaugment` package's operations: (name, operation(image, value, rng), values of
# magnitudes 0..9). Signed operations flip the sign with probability 1/2.
RANDAUGMENT_OPS = (
  ("invert", lambda image, value, rng: ImageOps.invert(image), [0] * 10),
  ("cutout", _patch, np.round(np.linspace(0, 20, 10)).astype(int)),
  ("sharpness", _enhance(ImageEnhance.Sharpness), np.linspace(0.0, 0.9, 10)),
  ("autocontrast", lambda image, value, rng: ImageOps.autocontrast(image), [0] * 10),
  (
    "posterize",
    lambda image, value, rng: ImageOps.posterize(image, int(value)),
    np.round(np.linspace(8, 4, 10)).astype(int),
  ),
  ("shear_x", _shear_x, np.linspace(0, 0.3, 10)),
  ("translate_x", _translate_x, np.linspace(0, 150 / 331, 10)),
  ("translate_y", _translate_y, np.linspace(0, 150 / 331, 10)),
  ("shear_y", _shear_y, np.linspace(0, 0.3, 10)),
  ("rotate", _rotate, np.linspace(0, 30, 10)),
  ("equalize", lambda image, value, rng: ImageOps.equalize(image), [0] * 10),
  ("contrast", _enhance(ImageEnhance.Contrast), np.linspace(0.0, 0.9, 10)),
  ("color", _enhance(ImageEnhance.Color), np.linspace(0.0, 0.9, 10)),
  ("solarize", lambda image, value, rng: ImageOps.solarize(image, value), np.linspace(256, 0, 10)),
  ("brightness", _enhance(ImageEnhance.Brightness), np.linspace(0.0, 0.9, 10)),
)


def rand_augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
  """The reference's RandAugment (the `randaugment` package): two operations, each a
  uniform choice of one of 15 operations and a magnitude in 1..9, each applied with
  probability 1/2."""
  choices = [(rng.integers(len(RANDAUGMENT_OPS)), rng.integers(1, 10)) for _ in range(2)]
  for op, magnitude in choices:
    if rng.random() < 0.5:
      _, operation, values = RANDAUGMENT_OPS[op]
      image = operation(image, values[magnitude], rng)
  return image


def affine(
  image: Image.Image,
  degrees: float,
  translate: tuple[int, int],
  scale: float,
  fill: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
  """Rotates by `degrees` (counter-clockwise) and scales about the image centre, then
  shifts by `translate` pixels; nearest-neighbour (torchvision's F.affine, no shear)."""
  width, height = image.size
  cx, cy = width * 0.5, height * 0.5
  tx, ty = translate
  # PIL wants the inverse map, output -> input: unshift, then unrotate and unscale.
  a = math.cos(math.radians(degrees)) / scale
  b = math.sin(math.radians(degrees)) / scale
  matrix = [a, b, cx - a * (cx + tx) - b * (cy + ty), -b, a, cy + b * (cx + tx) - a * (cy + ty)]
  return image.transform(image.size, Image.AFFINE, matrix, Image.NEAREST, fillcolor=fill)


def random_affine(
  image: Image.Image,
  rng: np.random.Generator,
  degrees: float = 45.0,
  translate: float = 0.15,
  scale: tuple[float, float] = (0.85, 1.15),
) -> Image.Image:
  """torchvision's RandomAffine(degrees, translate=(t, t), scale), black fill: the
  reference's Chest X-ray14 augmentation."""
  width, height = image.size
  angle = rng.uniform(-degrees, degrees)
  shift = (
    round(rng.uniform(-translate * width, translate * width)),
    round(rng.uniform(-translate * height, translate * height)),
  )
  return affine(image, angle, shift, rng.uniform(*scale))


def train_image(
  image: np.ndarray | Image.Image,
  rng: np.random.Generator,
  *,
  image_size: int,
  cutout_factor: float,
  augment: str,
) -> np.ndarray:
  """uint8 (H, W, 3) array or RGB PIL image -> uint8 (S, S, 3): resize, Cutout (if
  factor > 0), then RandAugment or the random affine map or nothing, in the reference's
  order."""
  if augment not in AUGMENTATIONS:
    raise ValueError(f"data.augment must be one of {AUGMENTATIONS}, got {augment!r}.")
  pil = squish_resize(as_pil(image), image_size)
  if cutout_factor > 0:
    pil = draw_cutout(pil, rng, cutout_factor)  # the resized image is ours to draw on
  if augment == "randaugment":
    pil = rand_augment(pil, rng)
  elif augment == "affine":
    pil = random_affine(pil, rng)
  return as_array(pil)


def eval_image(image: np.ndarray | Image.Image, image_size: int) -> np.ndarray:
  """uint8 (H, W, 3) array or RGB PIL image -> uint8 (S, S, 3), resize only."""
  return as_array(squish_resize(as_pil(image), image_size))


def normalize(images, mean, std):
  """uint8 images (..., 3) -> float32 (x / 255 - mean) / std; NumPy or JAX arrays."""
  return (images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(
    std, np.float32
  )
