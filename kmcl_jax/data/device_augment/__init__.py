"""Cutout and RandAugment in JAX, inside the compiled train step (data.augment_on="device").

The host then only decodes and resizes; these are the host's augmentations
(`transforms.cutout`, `transforms.RANDAUGMENT_OPS` and `transforms.rand_augment`: the same
15 operations with the same magnitude tables, two draws of a uniform operation and a
magnitude in 1..9, each applied with probability 1/2, signs flipped with probability
1/2), computed per image under `vmap`. No Python control flow depends on the data: every
operation group is computed and the drawn one selected, so the function jits once and
runs on a batch sharded over a mesh axis, each device on its own rows.

Randomness: row r of the global batch at step t draws from
fold_in(fold_in(fold_in(key(seed), AUGMENT_STREAM), t), r), so a run is deterministic,
resumes exactly, and gives the same pixels on any number of devices or hosts (the global
batch is the same on any layout). The draws differ from the host path's NumPy
Generator, so the two paths agree in distribution, not image by image.

The operations themselves, and how close each is to PIL's, are in `ops.py`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kmcl_jax.data.device_augment.ops import NUM_MAGNITUDES, OP_NAMES, apply_cutout, apply_op

# Separates the augmentation keys from the other uses of key(seed) (model initialisation).
AUGMENT_STREAM = 0x61756720


def step_key(seed: int, step) -> jax.Array:
  """The augmentation key of training step `step` (an int or a traced int32)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), AUGMENT_STREAM), step)


def train_images(config, images: jax.Array, step) -> jax.Array:
  """The train step's hook: uint8 (B, S, S, 3) images augmented here when
  config.data.augment_on is "device", else returned unchanged (the host augmented them).
  `step` is the state's step counter (traced)."""
  data = config.data
  if data.augment_on != "device":
    return images
  return augment_batch(
    images,
    step_key(config.seed, step),
    cutout_factor=data.cutout,
    rand_augment=data.augment == "randaugment",
  )


def augment_batch(
  images: jax.Array, key: jax.Array, *, cutout_factor: float = 0.5, rand_augment: bool = True
) -> jax.Array:
  """uint8 (B, S, S, 3) -> uint8 (B, S, S, 3): row r is augmented with fold_in(key, r)
  (r = 0..B-1, the row of the global batch under jit): Cutout with `cutout_factor`
  (0 disables), then RandAugment if `rand_augment`. Pure and jit-able; the batch may be
  sharded over a mesh axis."""
  rows = jnp.arange(images.shape[0])
  keys = jax.vmap(lambda row: jax.random.fold_in(key, row))(rows)
  return jax.vmap(
    functools.partial(augment_image, cutout_factor=cutout_factor, rand_augment=rand_augment)
  )(images, keys)


def augment_image(
  image: jax.Array, key: jax.Array, *, cutout_factor: float = 0.5, rand_augment: bool = True
) -> jax.Array:
  """uint8 (S, S, 3) -> uint8 (S, S, 3), one image (see `augment_batch`)."""
  draws = draw_augmentation(key, image.shape[0], image.shape[1])
  if cutout_factor > 0:
    image = apply_cutout(image, draws["cutout_centre"], draws["cutout_colour"], cutout_factor)
  if rand_augment:
    for slot in range(2):
      changed = apply_op(
        image,
        draws["op"][slot],
        draws["magnitude"][slot],
        draws["negate"][slot],
        draws["patch_centre"][slot],
      )
      image = jnp.where(draws["apply"][slot], changed, image)
  return image


def draw_augmentation(key: jax.Array, height: int, width: int) -> dict[str, jax.Array]:
  """One image's random draws, distributed as the host path's:
  op int32 (2,) uniform in [0, 15) (index into OP_NAMES), magnitude int32 (2,) uniform
  in [1, 9], apply bool (2,) (probability 1/2), negate bool (2,) (the signed operations'
  sign, probability 1/2), patch_centre int32 (2, 2) (x, y) of the "cutout" operation,
  cutout_centre int32 (2,) (x, y) and cutout_colour int32 (3,) in [0, 255] of Cutout."""
  keys = jax.random.split(key, 9)
  return {
    "op": jax.random.randint(keys[0], (2,), 0, len(OP_NAMES)),
    "magnitude": jax.random.randint(keys[1], (2,), 1, NUM_MAGNITUDES),
    "apply": jax.random.bernoulli(keys[2], 0.5, (2,)),
    "negate": jax.random.bernoulli(keys[3], 0.5, (2,)),
    "patch_centre": jnp.stack(
      [jax.random.randint(keys[4], (2,), 0, width), jax.random.randint(keys[5], (2,), 0, height)],
      axis=-1,
    ),
    "cutout_centre": jnp.stack(
      [jax.random.randint(keys[6], (), 0, width), jax.random.randint(keys[7], (), 0, height)]
    ),
    "cutout_colour": jax.random.randint(keys[8], (3,), 0, 256),
  }
