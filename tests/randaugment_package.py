"""The `randaugment` package the reference imports (its train.py: `from randaugment import
RandAugment`) as the oracle of the RandAugment operations: one operation at one
magnitude, its random sign and "cutout" centre fixed.

The package draws its sign with Python's `random.choice([-1, 1])` and the centre with
`np.random.randint`; both are patched in its module while the operation runs. It was
written for NumPy < 1.24 (np.int, its magnitude tables' dtype), which is restored while
its tables are built.
"""

from unittest import mock

import numpy as np
from randaugment import randaugment

from kmcl_jax.data import transforms

OUR_NAMES = tuple(name for name, _, _ in transforms.RANDAUGMENT_OPS)


def package_name(name: str) -> str:
  """The package's name of our operation `name` (the two lists are in the same order)."""
  return randaugment.RandAugment.get_trans_list()[OUR_NAMES.index(name)]


def package_operation(name: str, magnitude: int, sign: int, centre=()):
  """(image -> image, value): the package's operation `name` (ours, e.g. "shear_x") at
  magnitude index `magnitude` with sign `sign` (+1 or -1) and cutout centre (x, y)
  `centre`; value is what its magnitude table gives."""
  with mock.patch.object(np, "int", int, create=True):
    policy = randaugment.SubPolicy(1.0, package_name(name), magnitude, 0.0, "Invert", 0)

  def apply(image):
    draws = list(centre)
    with (
      mock.patch.object(randaugment.random, "choice", lambda options: sign),
      mock.patch.object(randaugment.np.random, "randint", lambda low, high: draws.pop(0)),
    ):
      return policy(image)

  return apply, policy.magnitude1
