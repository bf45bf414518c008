"""--distributed=auto|on|off in every environment JAX's own cluster detection knows: each
environment is simulated where JAX reads it (environment variables, the GCE metadata
server), and jax.distributed.initialize is replaced by a recorder."""

import os

import jax
import pytest
from jax._src.clusters import cloud_tpu_cluster

from kmcl_jax import distributed

CLUSTER_VARIABLES = (
  "SLURM_",
  "OMPI_",
  "PMI_",
  "TPU_",
  "MEGASCALE_",
  "KUBERNETES_",
  "JOB_COMPLETION_INDEX",
)


@pytest.fixture
def calls(monkeypatch):
  """A plain machine (no cluster variable, not a Cloud TPU VM) whose
  jax.distributed.initialize records its calls."""
  for name in list(os.environ):
    if name.startswith(CLUSTER_VARIABLES):
      monkeypatch.delenv(name)
  monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", False)
  recorded = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: recorded.append(kwargs))
  return recorded


def cloud_tpu_vm(monkeypatch, workers, metadata_server=True):
  """A worker of a Cloud TPU VM slice of `workers` hosts, as the GCE metadata server
  describes it (or only the TPU_* variables GKE sets, without the metadata server)."""
  monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
  metadata = {
    "agent-worker-number": "1",
    "tpu-env": "",
    "worker-network-endpoints": ",".join(f"w{i}:{i}:10.0.0.{i}" for i in range(workers)),
  }

  def get_metadata(key):
    if metadata_server and key in metadata:
      return metadata[key], 200
    return "", 404

  monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", get_metadata)


def slurm(monkeypatch, tasks):
  for name, value in {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_NODELIST": "node[001-004]",
    "SLURM_NTASKS": str(tasks),
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
  }.items():
    monkeypatch.setenv(name, value)


def open_mpi(monkeypatch, size):
  for name, value in {
    "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911",
    "OMPI_COMM_WORLD_SIZE": str(size),
    "OMPI_COMM_WORLD_RANK": "0",
    "OMPI_COMM_WORLD_LOCAL_RANK": "0",
  }.items():
    monkeypatch.setenv(name, value)


def gke_tpu(monkeypatch, hosts):
  cloud_tpu_vm(monkeypatch, 0, metadata_server=False)
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", ",".join(f"host-{i}" for i in range(hosts)))
  monkeypatch.setenv("TPU_WORKER_ID", "0")


@pytest.mark.parametrize(
  "environment, size, initialised",
  [
    (None, 1, False),
    (cloud_tpu_vm, 4, True),
    (cloud_tpu_vm, 1, False),
    (gke_tpu, 2, True),
    (gke_tpu, 1, False),
    (slurm, 8, True),
    (slurm, 1, False),
    (open_mpi, 2, True),
    (open_mpi, 1, False),
  ],
)
def test_auto_starts_the_runtime_exactly_where_jax_finds_several_processes(
  calls, monkeypatch, environment, size, initialised
):
  if environment is not None:
    environment(monkeypatch, size)
  assert distributed.initialize("auto") is initialised
  assert calls == ([{}] if initialised else [])  # JAX reads the details itself


def test_the_cluster_found_is_the_one_jax_would_use(calls, monkeypatch):
  slurm(monkeypatch, 2)
  assert distributed.detected_cluster().name == "slurm"
  monkeypatch.delenv("SLURM_JOB_ID")
  assert distributed.detected_cluster() is None


def test_explicit_coordinator_wins_and_off_never_starts(calls, monkeypatch):
  assert distributed.initialize("auto", "10.0.0.1:1234", 2, 1)
  assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}]
  slurm(monkeypatch, 8)
  assert not distributed.initialize("off")
  assert distributed.initialize("on") and len(calls) == 2


def test_an_unknown_mode_is_named():
  with pytest.raises(ValueError, match="--distributed='maybe': expected one of"):
    distributed.initialize("maybe")
