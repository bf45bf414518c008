"""Starting JAX's multi-controller runtime: one process per host (or per GPU), one job.

`initialize(mode, ...)` calls `jax.distributed.initialize` when this process is one of
several, which is what lets every host build one mesh over all devices, lets orbax's
barriers and preemption sync work, and tells every host of a preemption notice:

- explicit: --coordinator_address (with --num_processes and --process_id) wins;
- "auto": wherever JAX's own cluster detection (`jax._src.clusters`: Cloud TPU VMs from
  the GCE metadata server, GKE TPU pods, SLURM, Open MPI, Kubernetes jobs) finds an
  environment with more than one process; never on a plain single machine, and not in a
  one-process SLURM or MPI job;
- "on": always (JAX's detection must then find the cluster, or it fails);
- "off": never.
"""

from __future__ import annotations

import jax
from absl import logging
from jax._src import clusters

MODES = ("auto", "on", "off")


def detected_cluster() -> type[clusters.ClusterEnv] | None:
  """The cluster environment JAX's automatic detection would use here, or None."""
  return next(
    (
      env
      for env in clusters.ClusterEnv._cluster_types
      if not env.opt_in_only_method and env.is_env_present()
    ),
    None,
  )


def initialize(
  mode: str = "auto",
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> bool:
  """Initialises jax.distributed as `mode` says (see the module doc); returns whether
  it did."""
  if mode not in MODES:
    raise ValueError(f"--distributed={mode!r}: expected one of {MODES}.")
  if mode == "off":
    return False
  if mode == "on" or coordinator_address or num_processes:
    jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True
  cluster = detected_cluster()
  if cluster is None:
    return False
  processes = cluster.get_process_count()
  if processes <= 1:
    logging.info("%s: a single process; not starting jax.distributed.", cluster.__name__)
    return False
  logging.info("%s with %d processes: starting jax.distributed.", cluster.__name__, processes)
  jax.distributed.initialize()
  return True
