"""The RandAugment operations and Cutout of the device path on uint8 (S, S, 3) images,
with their drawn parameters passed in (tests call them one by one).

How close each operation is to PIL's (tests/test_device_augment.py checks each bound):
  exact (bit for bit): invert, posterize, solarize, equalize (integer LUTs);
    autocontrast (an exact integer LUT plus a table of the ~12,000 (lo, hi, level)
    entries where PIL's float64 arithmetic truncates one lower); cutout and Cutout
    (rectangles); translate_x/y (PIL's nearest-neighbour source indices, precomputed per
    magnitude in float64 as PIL steps them); rotate (PIL's 16.16 fixed-point
    nearest-neighbour arithmetic, in int32); sharpness, contrast, color and brightness
    (PIL's float32 SMOOTH filter and blend, each product rounded once as PIL's C does:
    `rounded_product` keeps a fused multiply-add from skipping that rounding);
  within 1 grey level, on about 0.1% of the values: shear_x/y. PIL interpolates in
    double precision and truncates; this interpolates in float32. The sampling
    positions and the fill boundary are PIL's (precomputed in float64), so only values
    whose double result lies within float32 round-off above an integer differ.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kmcl_jax.data import transforms

OP_NAMES = tuple(name for name, _, _ in transforms.RANDAUGMENT_OPS)
_VALUES = {name: np.asarray(values) for name, _, values in transforms.RANDAUGMENT_OPS}
# Operations are computed in groups that share their work; each op belongs to one.
_LUT_OPS = ("invert", "autocontrast", "posterize", "equalize", "solarize")
_BLEND_OPS = ("sharpness", "contrast", "color", "brightness")
_GROUPS = (
  _LUT_OPS,
  _BLEND_OPS,
  ("shear_x", "shear_y"),
  ("translate_x", "translate_y", "rotate"),
  ("cutout",),
)
_GROUP_OF_OP = np.array(
  [next(g for g, ops in enumerate(_GROUPS) if name in ops) for name in OP_NAMES], np.int32
)
_INDEX_IN_GROUP = np.array(
  [next(ops.index(name) for ops in _GROUPS if name in ops) for name in OP_NAMES], np.int32
)
NUM_MAGNITUDES = 10  # table entries 0..9; draws are 1..9 as on the host


def _rectangle_mask(height: int, width: int, x0, y0, x1, y1) -> jax.Array:
  """bool (H, W, 1): pixels with x0 <= x <= x1 and y0 <= y <= y1 (corners inclusive)."""
  ys = jnp.arange(height)[:, None, None]
  xs = jnp.arange(width)[None, :, None]
  return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


def apply_cutout(
  image: jax.Array, centre: jax.Array, colour: jax.Array, factor: float
) -> jax.Array:
  """`transforms.cutout` with its centre (x, y) and colour (3,) given: a rectangle of
  int(factor * side + 0.5) // 2 either side of the centre, clipped, corners inclusive."""
  height, width = image.shape[:2]
  half_w, half_h = int(factor * width + 0.5) // 2, int(factor * height + 0.5) // 2
  mask = _rectangle_mask(
    height,
    width,
    jnp.clip(centre[0] - half_w, 0, width),
    jnp.clip(centre[1] - half_h, 0, height),
    jnp.clip(centre[0] + half_w, 0, width),
    jnp.clip(centre[1] + half_h, 0, height),
  )
  return jnp.where(mask, colour.astype(jnp.uint8), image)


def apply_op(image: jax.Array, op, magnitude, negate, patch_centre) -> jax.Array:
  """RandAugment operation `op` (index into OP_NAMES) at `magnitude` (0..9), its sign
  negated if `negate`, on uint8 (S, S, 3); `patch_centre` (x, y) is the "cutout"
  operation's. Every group of operations is computed and the op's selected."""
  image = jnp.asarray(image)
  size = image.shape[0]
  if image.shape[1] != size:
    raise ValueError(f"device augmentation needs square images, got {image.shape[:2]}.")
  tables = {name: jnp.asarray(table) for name, table in _tables(size).items()}
  sign = jnp.asarray(negate).astype(jnp.int32)
  group, member = jnp.asarray(_GROUP_OF_OP)[op], jnp.asarray(_INDEX_IN_GROUP)[op]
  results = [
    _apply_lut(image, _lut_group(image, member, magnitude, tables)),
    _blend_group(image, member, magnitude, sign, tables),
    _shear_group(image, member, magnitude, sign, tables),
    _nearest_group(image, member, magnitude, sign, tables),
    _patch(image, magnitude, patch_centre),
  ]
  return jnp.select([group == g for g in range(len(_GROUPS))], results)


# LUT operations: invert, autocontrast, posterize, equalize, solarize. ---------------


def _apply_lut(image: jax.Array, lut: jax.Array) -> jax.Array:
  """uint8 (S, S, 3) through int32 (3, 256) per-channel tables (values in [0, 255])."""
  return lut[jnp.arange(3), image.astype(jnp.int32)].astype(jnp.uint8)


def _lut_group(image, member, magnitude, tables) -> jax.Array:
  pixels = image.reshape(-1, 3).astype(jnp.int32)
  fixed = tables["fixed_luts"][:, magnitude]  # invert, posterize, solarize: (3, 256)
  luts = jnp.stack(
    [
      jnp.broadcast_to(fixed[0], (3, 256)),
      autocontrast_lut(pixels),
      jnp.broadcast_to(fixed[1], (3, 256)),
      equalize_lut(pixels),
      jnp.broadcast_to(fixed[2], (3, 256)),
    ]
  )
  return luts[member]


def autocontrast_lut(pixels: jax.Array) -> jax.Array:
  """int32 (N, 3) pixels -> int32 (3, 256): ImageOps.autocontrast's per-channel table
  (cutoff 0): the channel's [lo, hi] stretched to [0, 255], identity if flat."""
  lo, hi = pixels.min(axis=0)[:, None], pixels.max(axis=0)[:, None]
  levels = jnp.arange(256)
  stretched = (255 * (levels[None, :] - lo)) // jnp.maximum(hi - lo, 1)
  index, masks = _autocontrast_corrections()
  row = jnp.asarray(index)[lo[:, 0] * 256 + hi[:, 0]]
  words = jnp.asarray(masks)[jnp.maximum(row, 0)]  # (3, 8) uint32
  bits = (words[:, levels // 32] >> (levels % 32).astype(jnp.uint32)) & jnp.uint32(1)
  stretched = stretched - jnp.where(row[:, None] >= 0, bits.astype(jnp.int32), 0)
  return jnp.where(hi > lo, jnp.clip(stretched, 0, 255), levels[None, :])


@functools.cache
def _autocontrast_corrections() -> tuple[np.ndarray, np.ndarray]:
  """PIL computes int(v * (255.0 / (hi - lo)) - lo * (255.0 / (hi - lo))) in float64,
  which truncates one below the exact 255 (v - lo) // (hi - lo) where that is an integer
  and the rounding falls short (about 12,000 of the 8.4 million (lo, hi, v)). Returns
  int32 (65536,): the row of (lo * 256 + hi) in the masks, or -1; uint32 (R, 8): bit v
  set where PIL's entry is one below the exact one."""
  lo, hi = np.triu_indices(256, 1)
  levels = np.arange(256)[None, :]
  scale = 255.0 / (hi - lo)[:, None]
  offset = -lo[:, None] * scale
  pil = np.trunc(levels * scale + offset)
  exact = (255 * (levels - lo[:, None])) // (hi - lo)[:, None]
  inside = (levels >= lo[:, None]) & (levels <= hi[:, None])
  lower = inside & (pil < exact)
  rows = np.flatnonzero(lower.any(axis=1))
  index = np.full(65536, -1, np.int32)
  index[lo[rows] * 256 + hi[rows]] = np.arange(len(rows))
  bits = lower[rows].reshape(len(rows), 8, 32).astype(np.uint64) << np.arange(32, dtype=np.uint64)
  return index, bits.sum(axis=2).astype(np.uint32)


def equalize_lut(pixels: jax.Array) -> jax.Array:
  """int32 (N, 3) pixels -> int32 (3, 256): ImageOps.equalize's per-channel table (integer
  arithmetic; identity when a channel has one level or too few pixels per step)."""
  counts = jax.vmap(lambda channel: jnp.bincount(channel, length=256))(pixels.T)  # (3, 256)
  levels = jnp.arange(256)
  last = jnp.max(jnp.where(counts > 0, levels, -1), axis=1)
  step = (pixels.shape[0] - counts[jnp.arange(3), last]) // 255
  before = jnp.cumsum(counts, axis=1) - counts
  lut = jnp.minimum((step[:, None] // 2 + before) // jnp.maximum(step, 1)[:, None], 255)
  flat = ((counts > 0).sum(axis=1) <= 1) | (step == 0)
  return jnp.where(flat[:, None], levels[None, :], lut)


# Blends: sharpness, contrast, color, brightness. ------------------------------------


def rounded_product(weight: jax.Array, values: jax.Array) -> jax.Array:
  """float32 weight * values (values: integers of at most 8 bits) rounded once, as PIL's
  C computes it, even where the compiler fuses the product into the next addition (a
  fused multiply-add would skip that rounding): the weight's 24-bit mantissa is split
  into 16 high and 8 low bits, both partial products are exact, and their sum is
  rounded once."""
  high_bits = lax.bitcast_convert_type(weight, jnp.uint32) & jnp.uint32(0xFFFFFF00)
  high = lax.bitcast_convert_type(high_bits, jnp.float32)
  return high * values + (weight - high) * values


def _luma(image: jax.Array) -> jax.Array:
  """uint8 (S, S, 3) -> int32 (S, S): PIL's RGB -> L (ITU-R 601-2, 16-bit fixed point)."""
  rgb = image.astype(jnp.int32)
  return (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16


def smooth(image: jax.Array) -> jax.Array:
  """ImageFilter.SMOOTH (3x3, weights 1 and a centre 5, over 13) as PIL computes it:
  float32 products summed row by row (the row below first) onto 0.5, truncated; the
  one-pixel border keeps the input."""
  pixels = image.astype(jnp.float32)
  edge, centre = jnp.float32(1) / jnp.float32(13), jnp.float32(5) / jnp.float32(13)

  def row_sum(rows, middle_weight):
    return (
      rounded_product(edge, rows[:, :-2]) + rounded_product(middle_weight, rows[:, 1:-1])
    ) + rounded_product(edge, rows[:, 2:])

  total = (
    (jnp.float32(0.5) + row_sum(pixels[2:], edge))
    + row_sum(pixels[1:-1], centre)
    + row_sum(pixels[:-2], edge)
  )
  inner = jnp.floor(jnp.clip(total, 0, 255)).astype(jnp.uint8)
  return image.at[1:-1, 1:-1].set(inner)


def blend(degenerate: jax.Array, image: jax.Array, alpha) -> jax.Array:
  """Image.blend(degenerate, image, alpha) for uint8 images: float32
  degenerate + alpha (image - degenerate), clipped to [0, 255] and truncated."""
  low = degenerate.astype(jnp.int32)
  difference = (image.astype(jnp.int32) - low).astype(jnp.float32)
  mixed = low.astype(jnp.float32) + rounded_product(jnp.float32(alpha), difference)
  return jnp.floor(jnp.clip(mixed, 0, 255)).astype(jnp.uint8)


def _blend_group(image, member, magnitude, sign, tables) -> jax.Array:
  luma = _luma(image)
  count = luma.size
  mean = (2 * jnp.sum(luma) + count) // (2 * count)  # int(mean + 0.5), in integers
  # A select, not a stack indexed by `member`: under vmap that would gather four images.
  degenerate = jnp.select(
    [member == 0, member == 1, member == 2],
    [
      smooth(image),
      jnp.broadcast_to(mean.astype(jnp.uint8), image.shape),
      jnp.broadcast_to(luma.astype(jnp.uint8)[..., None], image.shape),
    ],
    jnp.zeros_like(image),
  )
  return blend(degenerate, image, tables["blend_factors"][member, magnitude, sign])


# Shears (bicubic) and the nearest-neighbour moves. ----------------------------------


def _shear_group(image, member, magnitude, sign, tables) -> jax.Array:
  offset, fraction, first, last = (
    tables[name][magnitude, sign]
    for name in ("shear_offset", "shear_fraction", "shear_first", "shear_last")
  )
  return shear(image, offset, fraction, first, last, along_x=member == 0)


def shear(
  image: jax.Array,
  offset: jax.Array,
  fraction: jax.Array,
  first: jax.Array,
  last: jax.Array,
  along_x,
) -> jax.Array:
  """PIL's bicubic shear of uint8 (S, S, 3) along x (lines are rows) or, if not
  `along_x`, along y (lines are columns; PIL's numbers are symmetric for a square image).
  On line l, output position p reads the source at p + offset[l] + fraction[l] (taps
  p + offset - 1 .. p + offset + 2, clamped) with PIL's cubic (a = -1), truncated to
  [0, 255]; outside [first[l], last[l]] it is FILL_GREY. offset, first, last: int32 (S,);
  fraction: float32 (S,) in [0, 1)."""
  size = image.shape[0]
  ys, xs = jnp.arange(size)[:, None], jnp.arange(size)[None, :]
  line = jnp.where(along_x, ys, xs)
  position = jnp.where(along_x, xs, ys)
  base = position + offset[line] - 1
  pixels = image.reshape(size * size, 3)
  taps = []
  for k in range(4):
    # One flat gather per tap (cheaper under vmap than take_along_axis or a transpose).
    tap = jnp.clip(base + k, 0, size - 1)
    taps.append(
      pixels[jnp.where(along_x, line * size + tap, tap * size + line)].astype(jnp.float32)
    )
  d = fraction[line][..., None]
  p1 = taps[1]
  p2 = -taps[0] + taps[2]
  p3 = 2 * (taps[0] - taps[1]) + taps[2] - taps[3]
  p4 = -taps[0] + taps[1] - taps[2] + taps[3]
  value = p1 + d * (p2 + d * (p3 + d * p4))
  out = jnp.floor(jnp.clip(value, 0, 255)).astype(jnp.uint8)
  inside = ((position >= first[line]) & (position <= last[line]))[..., None]
  return jnp.where(inside, out, jnp.array(transforms.FILL_GREY, jnp.uint8))


def _nearest_group(image, member, magnitude, sign, tables) -> jax.Array:
  size = image.shape[0]
  ys, xs = jnp.arange(size)[:, None], jnp.arange(size)[None, :]
  moved = tables["translate_source"][magnitude, sign]
  a0, a1, a2, a3, a4, a5 = (tables["rotate_fixed"][magnitude, k] for k in range(6))
  full = (size, size)
  source_x = jnp.select(
    [member == 0, member == 1],
    [jnp.broadcast_to(moved[None, :], full), jnp.broadcast_to(xs, full)],
    (a2 + ys * a1 + xs * a0) >> 16,
  )
  source_y = jnp.select(
    [member == 0, member == 1],
    [jnp.broadcast_to(ys, full), jnp.broadcast_to(moved[:, None], full)],
    (a5 + ys * a4 + xs * a3) >> 16,
  )
  return sample_nearest(image, source_x, source_y)


def sample_nearest(image: jax.Array, source_x: jax.Array, source_y: jax.Array) -> jax.Array:
  """uint8 (S, S, 3) read at int32 (S, S) source coordinates; FILL_GREY outside."""
  size = image.shape[0]
  inside = (source_x >= 0) & (source_x < size) & (source_y >= 0) & (source_y < size)
  pixels = image[jnp.clip(source_y, 0, size - 1), jnp.clip(source_x, 0, size - 1)]
  return jnp.where(inside[..., None], pixels, jnp.array(transforms.FILL_GREY, jnp.uint8))


def _patch(image, magnitude, centre) -> jax.Array:
  """RandAugment's "cutout": a PATCH_COLOUR square of the magnitude's side at `centre`."""
  size = image.shape[0]
  half = jnp.asarray(_VALUES["cutout"].astype(np.int32))[magnitude] // 2
  mask = _rectangle_mask(
    size,
    size,
    jnp.maximum(0, centre[0] - half),
    jnp.maximum(0, centre[1] - half),
    jnp.minimum(size, centre[0] + half) - 1,
    jnp.minimum(size, centre[1] + half) - 1,
  )
  return jnp.where(mask, jnp.array(transforms.PATCH_COLOUR, jnp.uint8), image)


# PIL's per-magnitude numbers for an S x S image, computed once in float64. ----------


def _coord(values: np.ndarray) -> np.ndarray:
  """PIL's COORD: -1 for negative coordinates, else truncation."""
  return np.where(values < 0, -1, np.trunc(values)).astype(np.int64)


def _fix(value: float) -> int:
  """PIL's 16.16 fixed point: FLOOR(v * 65536 + 0.5)."""
  scaled = value * 65536.0 + 0.5
  return math.floor(scaled) if scaled < 0 else int(scaled)


def rotate_fixed(degrees: float, size: int) -> list[int]:
  """The six 16.16 fixed-point coefficients PIL's nearest-neighbour affine code derives
  from Image.rotate(degrees) of a size x size image (the inverse map about the centre,
  sines and cosines rounded to 15 digits; a2 and a5 moved to pixel centres)."""
  centre = size / 2
  angle = -math.radians(degrees % 360.0)
  a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
  d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
  c = a * -centre + b * -centre + 0.0 + centre
  f = d * -centre + e * -centre + 0.0 + centre
  return [
    _fix(a),
    _fix(b),
    _fix(c + a * 0.5 + b * 0.5),
    _fix(d),
    _fix(e),
    _fix(f + d * 0.5 + e * 0.5),
  ]


@functools.cache
def _tables(size: int) -> dict[str, np.ndarray]:
  """Each operation's numbers per (magnitude 0..9, sign 0 = +, 1 = -) for S x S images,
  as PIL computes them from the host's value tables."""
  levels = np.arange(256)
  signs = (1, -1)
  positions = np.arange(size) + 0.5
  shear = {
    name: np.zeros((NUM_MAGNITUDES, 2, size), dtype)
    for name, dtype in (
      ("shear_offset", np.int32),
      ("shear_fraction", np.float32),
      ("shear_first", np.int32),
      ("shear_last", np.int32),
    )
  }
  translate_source = np.zeros((NUM_MAGNITUDES, 2, size), np.int32)
  for m in range(NUM_MAGNITUDES):
    for s, sign in enumerate(signs):
      # shear_x reads output (x, y) at input x = 1.0 * (x + 0.5) + v * (y + 0.5) (+ 0.0);
      # the offset and fraction are constant along a line (checked for S = 32..448).
      sample = 1.0 * positions[None, :] + (_VALUES["shear_x"][m] * sign) * positions[:, None]
      inside = (sample >= 0) & (sample < size)
      base = np.floor(sample[:, 0] - 0.5)
      shear["shear_offset"][m, s] = base
      shear["shear_fraction"][m, s] = (sample[:, 0] - 0.5) - base
      shear["shear_first"][m, s] = np.where(inside.any(1), inside.argmax(1), size)
      shear["shear_last"][m, s] = np.where(inside.any(1), size - 1 - inside[:, ::-1].argmax(1), -1)
      # translate: PIL's scaling path steps x0 = t + 0.5 by 1.0 per output pixel.
      shift = _VALUES["translate_x"][m] * size * sign
      steps = np.add.accumulate(np.concatenate([[shift + 0.5], np.ones(size - 1)]))
      translate_source[m, s] = _coord(steps)
  blend_factors = np.array(
    [
      [[1 + _VALUES[name][m] * sign for sign in signs] for m in range(NUM_MAGNITUDES)]
      for name in _BLEND_OPS
    ],
    np.float32,
  )
  fixed_luts = np.stack(
    [
      np.broadcast_to(255 - levels, (NUM_MAGNITUDES, 256)),
      np.stack([levels & ~(2 ** (8 - int(bits)) - 1) for bits in _VALUES["posterize"]]),
      np.stack(
        [np.where(levels < threshold, levels, 255 - levels) for threshold in _VALUES["solarize"]]
      ),
    ]
  ).astype(np.int32)
  return {
    **shear,
    "translate_source": translate_source,
    "blend_factors": blend_factors,
    "fixed_luts": fixed_luts,
    "rotate_fixed": np.array(
      [rotate_fixed(_VALUES["rotate"][m], size) for m in range(NUM_MAGNITUDES)], np.int32
    ),
  }
