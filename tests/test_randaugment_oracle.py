"""The host's RandAugment against the `randaugment` package the reference imports
(tests/randaugment_package.py), on a real photograph, over every operation, every
magnitude a draw can give (1..9) and both signs: bit for bit, as the host's transforms
claim. (tests/test_device_augment.py judges the device's operations by the same oracle.)
"""

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from kmcl_jax.data import transforms

pytest.importorskip("randaugment")
from randaugment import randaugment  # noqa: E402
from randaugment_package import package_operation  # noqa: E402

MAGNITUDES = range(1, 10)


class ScriptedDraws:
  """Stands in for the Generator a host operation draws from: its sign draw
  (integers(2)) gives `sign` (1 -> +1, 0 -> -1), its other integer draws `values` in turn."""

  def __init__(self, sign, values):
    self.sign_bit, self.values = int(sign == 1), list(values)

  def integers(self, high, *args, **kwargs):
    return self.sign_bit if high == 2 else self.values.pop(0)


def photograph(width, height):
  """scikit-learn's photograph of a Chinese temple, resized to (height, width, 3)."""
  return np.asarray(Image.fromarray(load_sample_image("china.jpg")).resize((width, height)))


def test_the_operations_and_their_draws_are_the_packages():
  """The same 15 operations in the same order, each policy two (p 0.5, op, magnitude
  1..9) draws over every pair once: a uniform, independent choice, as `rand_augment`'s."""
  names = [name.replace("_", "") for name, _, _ in transforms.RANDAUGMENT_OPS]
  assert names == [name.lower() for name in randaugment.RandAugment.get_trans_list()]
  cells = [
    (0.5, name, magnitude)
    for name in randaugment.RandAugment.get_trans_list()
    for magnitude in MAGNITUDES
  ]
  assert randaugment.RandAugment.get_rand_policies() == [[a, b] for a in cells for b in cells]


def test_host_operations_equal_the_packages_bit_for_bit():
  image = Image.fromarray(photograph(72, 56))  # not square: x and y cannot be swapped
  changed = {}
  for name, operation, values in transforms.RANDAUGMENT_OPS:
    changed[name] = 0
    for magnitude in MAGNITUDES:
      for sign in (1, -1):
        centre = (3 + 7 * magnitude, 50 - 5 * magnitude)  # inside, and near each border
        theirs, value = package_operation(name, magnitude, sign, centre)
        assert value == values[magnitude], (name, magnitude)
        expected = np.asarray(theirs(image))
        got = np.asarray(operation(image, values[magnitude], ScriptedDraws(sign, centre)))
        np.testing.assert_array_equal(got, expected, err_msg=f"{name} {magnitude} {sign}")
        changed[name] += not np.array_equal(got, np.asarray(image))
  # Every operation changes the photograph at some magnitude (none is compared idle).
  assert min(changed.values()) > 0, changed
