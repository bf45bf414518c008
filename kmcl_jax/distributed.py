"""Starting JAX's multi-controller runtime: one process per host (or per GPU), one job.

`initialize(mode, ...)` calls `jax.distributed.initialize` when this process is one of
several, which is what lets every host build one mesh over all devices, lets orbax's
barriers and preemption sync work, and tells every host of a preemption notice:

- explicit: --coordinator_address (with --num_processes and --process_id) wins;
- "auto": where the environment says this job has more than one process (`cluster`:
  Cloud TPU VM slices from the GCE metadata server, GKE TPU pods, SLURM, Open MPI; a
  multi-slice job counts every slice), then JAX's own detection reads the coordinator
  and this process's id; never on a plain single machine, a one-host TPU VM, or a
  one-process SLURM or MPI job;
- "on": always (JAX's detection must then find the cluster, or it fails: the way to
  start other clusters JAX knows, such as Kubernetes jobs);
- "off": never.

The environments are read from what each one sets (variables, the metadata server), not
from JAX's private modules, which change without notice.
"""

from __future__ import annotations

import glob
import os
import urllib.request

import jax
from absl import logging

MODES = ("auto", "on", "off")

# Cloud TPU chips are PCI devices of Google's vendor id; the metadata server of their VM
# lists the slice's workers.
GOOGLE_PCI_VENDOR = "0x1ae0"


def has_tpu_chips() -> bool:
  """Whether this machine has Cloud TPU chips (a TPU VM), from its PCI devices."""
  for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor_file) as f:
        if f.read().strip() == GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def tpu_vm_metadata(key: str) -> str | None:
  """A TPU VM's instance attribute `key` from the GCE metadata server, None if absent."""
  host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
  request = urllib.request.Request(
    f"http://{host}/computeMetadata/v1/instance/attributes/{key}",
    headers={"Metadata-Flavor": "Google"},
  )
  try:
    with urllib.request.urlopen(request, timeout=5) as response:
      return response.read().decode()
  except OSError:
    return None


def _count(listed: str | None) -> int | None:
  return len([x for x in listed.split(",") if x]) if listed else None


def cluster() -> tuple[str, int] | None:
  """(name, number of processes) of the cluster this process is part of, or None on a
  plain machine. A TPU slice's count is its workers times MEGASCALE_NUM_SLICES."""
  slices = int(os.environ.get("MEGASCALE_NUM_SLICES", "1"))
  workers = _count(os.environ.get("TPU_PROCESS_ADDRESSES", os.environ.get("TPU_WORKER_HOSTNAMES")))
  if workers:
    return "GKE TPU pod", workers * slices
  if "SLURM_JOB_ID" in os.environ and "SLURM_NTASKS" in os.environ:
    return "SLURM", int(os.environ["SLURM_NTASKS"])
  if "OMPI_MCA_orte_hnp_uri" in os.environ and "OMPI_COMM_WORLD_SIZE" in os.environ:
    return "Open MPI", int(os.environ["OMPI_COMM_WORLD_SIZE"])
  if "TPU_SKIP_MDS_QUERY" not in os.environ and has_tpu_chips():
    workers = _count(tpu_vm_metadata("worker-network-endpoints"))
    if workers:
      return "Cloud TPU VM", workers * slices
  return None


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
  found = cluster()
  if found is None:
    return False
  name, processes = found
  if processes <= 1:
    logging.info("%s: a single process; not starting jax.distributed.", name)
    return False
  logging.info("%s with %d processes: starting jax.distributed.", name, processes)
  jax.distributed.initialize()
  return True
