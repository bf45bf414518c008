r"""How the global-batch KMCL loss scales over a device mesh, on simulated CPU devices.

  python -m kmcl_jax.benchmarks.scaling
  python -m kmcl_jax.benchmarks.scaling --memory_devices=8,64 --memory_batches=1024,4096

Memory: the per-device temporary memory XLA's memory analysis reports for the compiled
value-and-gradient of `kmcl_loss` (anisotropic, K = 80, D = 128, default block size),
batch sharded over the mesh axis, for two ways of partitioning the contrastive
term: `split` (ours, `losses.contrastive_loss(mesh=...)`: each device's anchors against
the all-gathered batch under `shard_map`) and `auto` (the same code left to XLA's SPMD
partitioner). It also counts the collectives in the compiled program and how many of
them sit inside loops (each one runs once per iteration: latency on a real pod).

Time: the median value-and-gradient time of the split loss at one batch on 1, 2, 4, 8
simulated devices. Simulated devices share this machine's cores, so this measures what
splitting costs and how the work divides, not the speed-up of real chips.
"""

from __future__ import annotations

import re

import jax
from absl import app, flags

from kmcl_jax import losses
from kmcl_jax.benchmarks import loss_programs
from kmcl_jax.mesh import create_mesh

_SIMULATED = flags.DEFINE_integer("simulated_devices", 64, "CPU devices to simulate.")
_MEMORY_DEVICES = flags.DEFINE_list(
  "memory_devices", ["8", "64"], "Mesh sizes of the memory table."
)
_MEMORY_BATCHES = flags.DEFINE_list(
  "memory_batches", ["1024", "4096"], "Global batches of the memory table."
)
_CLASSES = flags.DEFINE_integer("classes", 80, "K.")
_DIM = flags.DEFINE_integer("dim", 128, "D.")
_TIME_DEVICES = flags.DEFINE_list(
  "time_devices", ["1", "2", "4", "8"], "Mesh sizes of the time table."
)
_TIME_BATCH = flags.DEFINE_integer("time_batch", 256, "Global batch of the time table.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median reported).")

COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "reduce-scatter", "collective-permute")


def collective_counts(hlo_text: str) -> tuple[int, int]:
  """(collectives in the program, collectives inside while-loop bodies) of compiled HLO."""
  pattern = re.compile(r"= [^=]*\b(" + "|".join(COLLECTIVES) + r")(-start)?\(")
  loop_bodies = set(re.findall(r"while\([^)]*\).*?body=%?([\w.\-]+)", hlo_text))
  total = in_loops = 0
  for computation in hlo_text.split("\n\n"):
    header = computation.strip().split("\n", 1)[0]
    name = header.split()[1] if header.startswith("ENTRY") else header.split(" ", 1)[0]
    count = len(pattern.findall(computation))
    total += count
    if name.lstrip("%") in loop_bodies:
      in_loops += count
  return total, in_loops


def main(argv):
  del argv
  jax.config.update("jax_num_cpu_devices", _SIMULATED.value)  # before any computation

  def mesh_of(devices: int):
    if devices > jax.device_count():
      raise app.UsageError(
        f"--simulated_devices={jax.device_count()} is fewer than the {devices} devices asked for."
      )
    return create_mesh(jax.devices()[:devices])

  classes, dim = _CLASSES.value, _DIM.value
  print(
    f"JAX {jax.__version__}, {jax.device_count()} simulated {jax.devices()[0].device_kind} "
    f"devices; kmcl_loss value-and-gradient, anisotropic, K={classes}, D={dim}"
  )
  print(
    f"{'devices':>7} {'batch':>6} {'rows/device':>11} {'block':>5} {'split GiB':>9} "
    f"{'auto GiB':>8} {'split collectives (in loops)':>28} {'auto collectives (in loops)':>27}"
  )
  for devices in (int(d) for d in _MEMORY_DEVICES.value):
    for batch in (int(b) for b in _MEMORY_BATCHES.value):
      row = f"{devices:>7} {batch:>6} {batch // devices:>11} "
      row += f"{losses.default_block_size(batch, dim, classes):>5}"
      counts = []
      for split in (True, False):
        compiled = loss_programs.compiled_value_and_grad(
          batch, classes, dim, mesh=mesh_of(devices), split_anchors=split
        )
        row += f" {compiled.memory_analysis().temp_size_in_bytes / 2**30:>{9 if split else 8}.3g}"
        counts.append(collective_counts(compiled.as_text()))
      row += "".join(
        f" {f'{total} ({in_loops})':>{width}}"
        for (total, in_loops), width in zip(counts, (28, 27), strict=True)
      )
      print(row, flush=True)

  batch = _TIME_BATCH.value
  inputs = loss_programs.make_inputs(batch, classes, dim, "anisotropic")
  print(f"\nsplit loss, batch {batch}, median of {_REPEATS.value} runs")
  print(f"{'devices':>7} {'ms':>8} {'total':>10}")
  for devices in (int(d) for d in _TIME_DEVICES.value):
    seconds, total = loss_programs.time_loss(
      inputs, "anisotropic", _REPEATS.value, mesh_of(devices)
    )
    print(f"{devices:>7} {seconds * 1e3:>8.1f} {total:>10.5f}", flush=True)


if __name__ == "__main__":
  app.run(main)
