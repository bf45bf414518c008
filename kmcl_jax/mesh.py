"""The device mesh every entry point uses, and how host batches become global arrays.

One mesh axis, `DATA_AXIS`, spans every device of every host: batches are split along
it, parameters are replicated over it. Under `jax.jit` a mean over the batch is then
over the GLOBAL batch, exactly as one device holding the whole batch would compute it.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh, axis `DATA_AXIS`, over `devices`: by default every device of every
  process, as every entry point trains (benchmarks pass fewer)."""
  return Mesh(np.array(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, optimiser state, scalars)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Rows (the leading axis) split over `DATA_AXIS`."""
  return NamedSharding(mesh, P(DATA_AXIS))


def to_global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's rows of a batch -> global arrays sharded over the mesh (every host calls
  it with its own rows, in process order). int64 fields become int32 (JAX's default)."""
  sharding = batch_sharded(mesh)
  return {
    name: jax.make_array_from_process_local_data(
      sharding, value.astype(np.int32) if value.dtype == np.int64 else value
    )
    for name, value in batch.items()
  }
