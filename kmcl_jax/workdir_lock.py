"""One run per workdir at a time: WORKDIR/.lock, a kernel lock in a local folder and a
renewed lease object in a gs:// bucket, so that a second run started in the same workdir
is refused instead of writing over the first one's files."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import jax
from absl import logging

from kmcl_jax.workdir import WorkdirError

LOCK_FILE = ".lock"
# A gs:// workdir's lease expires this long after its last renewal (every quarter of it).
LEASE_SECONDS = 120.0


@contextlib.contextmanager
def exclusive(workdir: str) -> Iterator[None]:
  """Holds WORKDIR/.lock for the block (process 0), so that a second run in the same
  workdir is refused instead of writing over the first one's files.

  In a local workdir the lock is the kernel's (flock): it is released whatever ends the
  process, SIGKILL included. In a gs:// workdir it is a lease object (`_gcs_lease`): a
  run killed without releasing it holds the workdir until the lease expires,
  LEASE_SECONDS after its last renewal. Other object stores (s3://, ...) are not checked.
  """
  if jax.process_index() != 0:
    yield
    return
  if workdir.startswith("gs://"):
    with _gcs_lease(workdir):
      yield
    return
  if "://" in workdir:
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  with open(path, "a+") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
      lock.seek(0)
      holder = lock.read().strip() or "another process"
      raise WorkdirError(
        f"{workdir} is in use by another run ({holder}); wait for it to end "
        "or use another --workdir."
      ) from error
    lock.seek(0)
    lock.truncate()
    lock.write(_holder())
    lock.flush()
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _holder() -> str:
  return f"pid {os.getpid()} on {socket.gethostname()}"


@contextlib.contextmanager
def _gcs_lease(workdir: str) -> Iterator[None]:
  """Holds the lease gs://.../WORKDIR/.lock for the block: a JSON object {"holder",
  "expires" (Unix seconds)} created only where none exists (generation precondition 0),
  rewritten every LEASE_SECONDS / 4 by a background thread, deleted at the end.

  A lease past its expiry (its run died) is taken over. Every write is conditional on
  the generation last seen, so of two runs starting or taking over at once exactly one
  wins, and a run whose lease was taken over learns it at its next renewal (logged).
  """
  from google.api_core import exceptions
  from google.cloud import storage

  bucket, _, folder = workdir.removeprefix("gs://").partition("/")
  name = f"{folder.strip('/')}/{LOCK_FILE}" if folder.strip("/") else LOCK_FILE
  blob = storage.Client().bucket(bucket).blob(name)
  where = f"gs://{bucket}/{blob.name}"
  holder = _holder()

  def write(generation: int) -> None:
    lease = {"holder": holder, "expires": time.time() + LEASE_SECONDS}
    blob.upload_from_string(json.dumps(lease), if_generation_match=generation)

  generation = 0  # no lease yet
  while True:
    try:
      write(generation)
      break
    except exceptions.PreconditionFailed:
      try:
        text = blob.download_as_text()  # sets blob.generation to the one read
      except exceptions.NotFound:  # released meanwhile
        generation = 0
        continue
      lease, generation = json.loads(text), blob.generation
      if lease["expires"] > time.time():
        expires = time.strftime("%H:%M:%S UTC", time.gmtime(lease["expires"]))
        raise WorkdirError(
          f"{workdir} is in use by another run ({lease['holder']}); wait for it to end "
          f"(if it died, its lease {where} expires at {expires}) or use another --workdir."
        ) from None
      logging.warning(
        "Taking over the expired lease %s of %s: that run has stopped renewing it.",
        where,
        lease["holder"],
      )
  stop = threading.Event()

  def renew() -> None:
    while not stop.wait(LEASE_SECONDS / 4):
      try:
        write(blob.generation)
      except exceptions.PreconditionFailed:
        logging.error(
          "Lost the lease %s of this run: another run took it over after it expired; "
          "both now write to %s.",
          where,
          workdir,
        )
        return
      except Exception as error:  # a transient storage error: the next renewal retries
        logging.warning("Renewing the lease %s failed (%s); retrying.", where, error)

  renewer = threading.Thread(target=renew, name=f"lease {where}", daemon=True)
  renewer.start()
  try:
    yield
  finally:
    stop.set()
    renewer.join()
    with contextlib.suppress(exceptions.PreconditionFailed, exceptions.NotFound):
      blob.delete(if_generation_match=blob.generation)  # only if still this run's
