"""Cutout and RandAugment in JAX against the `randaugment` package the reference imports
and the host's PIL operations, their draws against the host's, determinism, and
sharding."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image
from scipy import stats
from sklearn.datasets import load_sample_image

from kmcl_jax.data import device_augment, transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_OPS = {name: (operation, values) for name, operation, values in transforms.RANDAUGMENT_OPS}
# Bit for bit, but for the shears: PIL interpolates in double precision, the device in
# float32, so a value whose double result lies within float32 round-off above an integer
# truncates one lower (about 0.1% of the values; the sampling positions and the fill
# boundary are PIL's exactly).
SHEAR_OPS = ("shear_x", "shear_y")
SHEAR_MOST_DIFFERING = 0.003


def sample_images(size):
  """A noise image (every level, hard edges), a smooth one (gradients, few levels) and a
  photograph (scikit-learn's, squished to size x size)."""
  rng = np.random.default_rng(size)
  noise = rng.integers(0, 256, (size, size, 3), np.uint8)
  ys, xs = np.mgrid[0:size, 0:size] * (64 / size)
  smooth = np.stack([xs * 3, ys * 2 + 40, (xs + ys) * 1.5], -1) + rng.normal(0, 6, (size, size, 3))
  photograph = Image.fromarray(load_sample_image("china.jpg")).resize((size, size))
  return [noise, np.clip(smooth, 0, 255).astype(np.uint8), np.asarray(photograph)]


@pytest.mark.parametrize("size", [32, 64])
def test_every_operation_matches_the_randaugment_package_at_every_magnitude_and_sign(size):
  """Judged by the package the reference imports (tests/randaugment_package.py)."""
  pytest.importorskip("randaugment")
  from randaugment_package import package_operation

  apply = jax.jit(device_augment.apply_op)
  centres = np.random.default_rng(0)
  for image in sample_images(size):
    for op, name in enumerate(device_augment.OP_NAMES):
      differing = total = 0
      for magnitude in range(1, 10):
        for negate in (False, True):
          centre = [int(c) for c in centres.integers(size, size=2)]
          theirs, _ = package_operation(name, magnitude, -1 if negate else 1, centre)
          expected = np.asarray(theirs(Image.fromarray(image)))
          got = np.asarray(apply(image, op, magnitude, negate, np.array(centre)))
          message = f"{name} magnitude {magnitude} negate {negate}"
          if name in SHEAR_OPS:
            assert np.abs(got.astype(int) - expected).max() <= 1, message
            differing += (got != expected).sum()
            total += got.size
          else:
            np.testing.assert_array_equal(got, expected, err_msg=message)
      if name in SHEAR_OPS:
        assert differing / total <= SHEAR_MOST_DIFFERING, (name, differing / total)


def test_autocontrast_reproduces_pils_float64_truncation():
  # A channel spanning [0, 25]: PIL's float64 table maps 25 to 254, not 255.
  image = np.zeros((8, 8, 3), np.uint8)
  image[:4, :, 0], image[4:, :, 0] = 0, 25
  image[..., 1], image[..., 2] = np.arange(8)[None] * 30, 7
  expected = np.asarray(HOST_OPS["autocontrast"][0](Image.fromarray(image), 0, None))
  assert expected[4:, :, 0].max() == 254
  got = jax.jit(device_augment.apply_op)(
    image, device_augment.OP_NAMES.index("autocontrast"), 5, False, np.zeros(2, int)
  )
  np.testing.assert_array_equal(np.asarray(got), expected)


def test_cutout_matches_the_host_rectangle_and_colour():
  for size, factor in ((32, 0.5), (48, 0.3), (17, 0.5)):
    image = sample_images(size)[0] if size != 17 else np.full((17, 17, 3), 9, np.uint8)
    for seed in range(30):
      expected = np.asarray(
        transforms.cutout(Image.fromarray(image), np.random.default_rng(seed), factor)
      )
      draws = np.random.default_rng(seed)  # the same draws, in the host's order
      centre = np.array([draws.integers(size), draws.integers(size)])
      colour = draws.integers(0, 256, size=3)
      got = device_augment.apply_cutout(jnp.asarray(image), centre, colour, factor)
      np.testing.assert_array_equal(np.asarray(got), expected)


def applied_counts(records):
  """(op, magnitude) -> how often it was applied, over the 15 x 9 cells."""
  counts = np.zeros((len(device_augment.OP_NAMES), 9), int)
  for op, magnitude in records:
    counts[op, magnitude - 1] += 1
  return counts


def test_device_draws_are_distributed_as_the_host_draws(monkeypatch):
  images = 20000
  # Host: rand_augment with recording stand-ins whose "value" is the magnitude itself.
  host_records = []
  recorders = tuple(
    (
      name,
      lambda image, magnitude, rng, op=op: host_records.append((op, magnitude)) or image,
      np.arange(10),
    )
    for op, (name, _, _) in enumerate(transforms.RANDAUGMENT_OPS)
  )
  monkeypatch.setattr(transforms, "RANDAUGMENT_OPS", recorders)
  tiny = Image.new("RGB", (2, 2))
  per_image_host = []
  for seed in range(images):
    before = len(host_records)
    transforms.rand_augment(tiny, np.random.default_rng(seed))
    per_image_host.append(len(host_records) - before)
  # Device: the draws of `images` rows.
  keys = jax.vmap(lambda row: jax.random.fold_in(jax.random.key(0), row))(jnp.arange(images))
  draws = jax.vmap(lambda key: device_augment.draw_augmentation(key, 32, 32))(keys)
  applied = np.asarray(draws["apply"])
  device_records = zip(
    np.asarray(draws["op"])[applied], np.asarray(draws["magnitude"])[applied], strict=True
  )
  host, device = applied_counts(host_records), applied_counts(device_records)
  # Each of 135 (op, magnitude) cells: probability 2 x 1/2 x 1/135 per image.
  expected = np.full(host.size, images / 135)
  for counts in (host, device):
    assert abs(counts.sum() - images) < 4 * np.sqrt(images / 2)
    assert stats.chisquare(counts.ravel(), expected * counts.sum() / images).pvalue > 1e-3
  assert stats.chi2_contingency(np.stack([host.ravel(), device.ravel()])).pvalue > 1e-3
  # Operations applied per image: 0, 1, 2 with probabilities 1/4, 1/2, 1/4 on both paths.
  for per_image in (np.bincount(per_image_host, minlength=3), np.bincount(applied.sum(1))):
    assert stats.chisquare(per_image, np.array([0.25, 0.5, 0.25]) * images).pvalue > 1e-3
  negate = np.asarray(draws["negate"])
  assert stats.binomtest(int(negate.sum()), negate.size).pvalue > 1e-3
  for field, high in (("cutout_centre", 32), ("patch_centre", 32), ("cutout_colour", 256)):
    values = np.asarray(draws[field]).ravel()
    assert values.min() == 0 and values.max() == high - 1
    assert stats.chisquare(np.bincount(values, minlength=high)).pvalue > 1e-3


def augment_config(**data):
  return ConfigDict(
    dict(seed=3, data={**dict(augment_on="device", augment="randaugment", cutout=0.5), **data})
  )


def test_the_same_seed_step_and_row_give_the_same_pixels_and_rows_differ():
  images = jnp.asarray(np.stack([sample_images(32)[1]] * 8))
  step = jax.jit(lambda images, step: device_augment.train_images(augment_config(), images, step))
  first, again, later = step(images, 5), step(images, 5), step(images, 6)
  np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
  first = np.asarray(first)
  assert len({row.tobytes() for row in first}) == 8  # the same image, 8 augmentations
  assert (np.asarray(later) != first).any(axis=(1, 2, 3)).all()
  # One row alone gets the pixels it gets in the batch: keys follow the row index.
  alone = jax.jit(device_augment.augment_image)(
    images[3], jax.random.fold_in(device_augment.step_key(3, 5), 3)
  )
  np.testing.assert_array_equal(np.asarray(alone), first[3])
  host = device_augment.train_images(augment_config(augment_on="host"), images, 5)
  assert host is images


SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from kmcl_jax.data import device_augment
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)
    key = device_augment.step_key(0, 7)
    augment = lambda images: device_augment.augment_batch(images, key)
    single = np.asarray(jax.jit(augment)(images))
    for devices in (2, 4):
      mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
      sharded = jax.device_put(images, NamedSharding(mesh, P("data")))
      out = jax.jit(augment)(sharded)
      assert len(out.sharding.device_set) == devices
      np.testing.assert_array_equal(np.asarray(out), single)
    print("same on 1, 2 and 4 devices")
""")


@pytest.mark.slow
def test_a_batch_sharded_over_devices_is_augmented_as_on_one_device():
  env = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": ROOT,
  }
  result = subprocess.run(
    [sys.executable, "-c", SHARDED], capture_output=True, text=True, env=env, timeout=300
  )
  assert result.stdout.strip() == "same on 1, 2 and 4 devices", result.stderr[-3000:]
