"""One of two JAX processes (over 127.0.0.1, gloo collectives) that save checkpoints 1
and 2 of a small replicated state and restore them while this process's file reads of
checkpoints/2 fail: first a storage error once, then on every read; then restore
checkpoint 1 onto another layout (an array split over the processes). Prints, as one
JSON line, what it restored each time, what stopped it and what was left in the workdir
(tests/test_restores.py runs two).

  python restore_agreement_run.py PROCESS_ID PORT WORKDIR FAILING_PROCESS
"""

import json
import os
import sys

import jax

process_id, port, workdir, failing_process = sys.argv[1:5]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))

import grain  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from kmcl_jax.checkpointing import CheckpointError, Checkpoints, integrity  # noqa: E402
from kmcl_jax.mesh import create_mesh, replicated  # noqa: E402

SHARDING = replicated(create_mesh())


def state_at(step):
  """A small state on both processes' devices whose values depend on the step."""
  host = {
    "step": np.asarray(step, np.int32),
    "params": {
      "w": np.arange(64 * 64, dtype=np.float32).reshape(64, 64) * step,
      "b": np.full((4,), float(step), np.float32),
    },
  }
  return jax.tree.map(
    lambda x: jax.make_array_from_callback(x.shape, SHARDING, lambda index: x[index]), host
  )


def fail_reads_of(folder, count):
  """This process's next `count` file reads under `folder` raise a storage error."""
  path_class = type(epath.Path("/"))
  real_read_text = path_class.read_text
  left = [count]

  def read_text(self, *args, **kwargs):
    if str(self).startswith(folder + os.sep) and left[0] > 0:
      left[0] -= 1
      raise OSError(f"503 Service Unavailable reading {self}")
    return real_read_text(self, *args, **kwargs)

  path_class.read_text = read_text


def restore(checkpoints, step=None, sharding=lambda path: SHARDING):
  """What restoring gives: the step and the state's checksums, or the error's sentence.
  `sharding(path)` places each array (by default replicated, as it was saved)."""
  abstract = jax.tree_util.tree_map_with_path(
    lambda path, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding(path)), state_at(0)
  )
  try:
    state, step = checkpoints.restore(abstract, step=step, repair=True)
  except CheckpointError as error:
    return {"error": str(error)}
  return {"step": step, "checksums": integrity(state)[1]}


def rows_split(path):
  """params.w split by rows over the two processes' devices, the rest replicated: a
  restore onto another layout than the one saved."""
  if jax.tree_util.keystr(path) == "['params']['w']":
    return NamedSharding(SHARDING.mesh, PartitionSpec(SHARDING.mesh.axis_names[0]))
  return SHARDING


def main():
  checkpoints = Checkpoints(workdir, keep=2, retry_seconds=0.05)
  iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
  for step in (1, 2):
    checkpoints.save_latest(step, state_at(step), iterator)
  checkpoints.wait()
  this_one_fails = process_id == failing_process
  result = {}
  for phase, count in (("fails_once", 1), ("fails_always", 1000)):
    if this_one_fails:
      fail_reads_of(os.path.join(workdir, "checkpoints", "2"), count)
    result[phase] = restore(checkpoints)
  result["resharded"] = restore(checkpoints, step=1, sharding=rows_split)
  result["saved_1"] = integrity(state_at(1))[1]
  result["left"] = sorted(os.listdir(workdir))
  result["checkpoints"] = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  checkpoints.close()
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
