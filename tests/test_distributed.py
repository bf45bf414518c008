"""--distributed=auto|on|off in every environment `distributed.cluster` knows: each is
simulated where it is read (environment variables; for a Cloud TPU VM, a local HTTP
server standing in for the GCE metadata server, the PCI check for TPU chips forced),
and jax.distributed.initialize is replaced by a recorder."""

import http.server
import os
import threading

import jax
import pytest

from kmcl_jax import distributed

CLUSTER_VARIABLES = (
  "SLURM_",
  "OMPI_",
  "PMI_",
  "TPU_",
  "MEGASCALE_",
  "KUBERNETES_",
  "JOB_COMPLETION_INDEX",
  "GCE_METADATA_IP",
)


@pytest.fixture
def calls(monkeypatch):
  """A plain machine (no cluster variable, no TPU chips) whose jax.distributed.initialize
  records its calls."""
  for name in list(os.environ):
    if name.startswith(CLUSTER_VARIABLES):
      monkeypatch.delenv(name)
  monkeypatch.setattr(distributed, "has_tpu_chips", lambda: False)
  recorded = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: recorded.append(kwargs))
  return recorded


@pytest.fixture
def metadata_server():
  """A GCE metadata server on 127.0.0.1 serving the instance attributes in its dict (it
  checks the Metadata-Flavor header, as Google's does)."""
  attributes = {}

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
      key = self.path.rsplit("/", 1)[-1]
      found = self.headers.get("Metadata-Flavor") == "Google" and key in attributes
      self.send_response(200 if found else 404)
      self.end_headers()
      self.wfile.write(attributes[key].encode() if found else b"")

    def log_message(self, *args):
      pass

  server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
  threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
  yield f"127.0.0.1:{server.server_port}", attributes
  server.shutdown()


def cloud_tpu_vm(monkeypatch, workers, metadata_server):
  """A worker of a Cloud TPU VM slice of `workers` hosts, as the metadata server lists
  them (old name:id:ip entries)."""
  address, attributes = metadata_server
  monkeypatch.setattr(distributed, "has_tpu_chips", lambda: True)
  monkeypatch.setenv("GCE_METADATA_IP", address)
  attributes["agent-worker-number"] = "1"
  attributes["worker-network-endpoints"] = ",".join(f"w{i}:{i}:10.0.0.{i}" for i in range(workers))


def slurm(monkeypatch, tasks, metadata_server=None):
  for name, value in {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_NODELIST": "node[001-004]",
    "SLURM_NTASKS": str(tasks),
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
  }.items():
    monkeypatch.setenv(name, value)


def open_mpi(monkeypatch, size, metadata_server=None):
  for name, value in {
    "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911",
    "OMPI_COMM_WORLD_SIZE": str(size),
    "OMPI_COMM_WORLD_RANK": "0",
    "OMPI_COMM_WORLD_LOCAL_RANK": "0",
  }.items():
    monkeypatch.setenv(name, value)


def gke_tpu(monkeypatch, hosts, metadata_server=None):
  monkeypatch.setattr(distributed, "has_tpu_chips", lambda: True)
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
def test_auto_starts_the_runtime_exactly_where_there_are_several_processes(
  calls, monkeypatch, metadata_server, environment, size, initialised
):
  if environment is not None:
    environment(monkeypatch, size, metadata_server)
  assert distributed.initialize("auto") is initialised
  assert calls == ([{}] if initialised else [])  # JAX reads the details itself


def test_the_cluster_found_and_its_size(calls, monkeypatch, metadata_server):
  assert distributed.cluster() is None
  slurm(monkeypatch, 2)
  assert distributed.cluster() == ("SLURM", 2)
  monkeypatch.delenv("SLURM_JOB_ID")
  assert distributed.cluster() is None
  # A TPU VM whose metadata server does not answer is not a cluster (no endpoints).
  monkeypatch.setattr(distributed, "has_tpu_chips", lambda: True)
  monkeypatch.setenv("GCE_METADATA_IP", metadata_server[0])
  assert distributed.cluster() is None
  cloud_tpu_vm(monkeypatch, 4, metadata_server)
  assert distributed.cluster() == ("Cloud TPU VM", 4)
  monkeypatch.setenv("MEGASCALE_NUM_SLICES", "2")  # two slices of 4 hosts: one job of 8
  assert distributed.cluster() == ("Cloud TPU VM", 8)


def test_explicit_coordinator_wins_and_off_never_starts(calls, monkeypatch):
  assert distributed.initialize("auto", "10.0.0.1:1234", 2, 1)
  assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}]
  slurm(monkeypatch, 8)
  assert not distributed.initialize("off")
  assert distributed.initialize("on") and len(calls) == 2


def test_an_unknown_mode_is_named():
  with pytest.raises(ValueError, match="--distributed='maybe': expected one of"):
    distributed.initialize("maybe")


def test_no_module_of_the_package_imports_jax_private_modules():
  package = os.path.dirname(distributed.__file__)
  for folder, _, files in os.walk(package):
    for name in files:
      if name.endswith(".py"):
        with open(os.path.join(folder, name)) as f:
          assert "jax._src" not in f.read(), os.path.join(folder, name)
