"""A run's identity in its workdir, and one run per workdir at a time.

WORKDIR/run.json records the config a run was started with and its class names
(`--mode=eval/predict` read them), and every resume with what it changed. Resuming
compares the new config with it before anything is restored: a field that defines what
the run computes (model, data, batch, schedule, seed, ...) must not change, since the
checkpoint would silently continue a different experiment; fields in
`config.RESUMABLE_FIELDS` (evaluation and checkpoint frequency, logging, workers, ...)
may, and the change is logged and recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from kmcl_jax.config import RESUMABLE_FIELDS
from kmcl_jax.errors import RunStopped

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
# A gs:// workdir's lease expires this long after its last renewal (every quarter of it).
LEASE_SECONDS = 120.0


class WorkdirError(RunStopped):
  """The workdir cannot be used by this run (another run holds it, or it is another run)."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: tree}


def _plain(config: ml_collections.ConfigDict) -> dict:
  """The config as JSON would give it back (tuples as lists)."""
  return json.loads(json.dumps(config.to_dict()))


def _resumable(field: str) -> bool:
  return any(field == f or field.startswith(f + ".") for f in RESUMABLE_FIELDS)


def read_run(workdir: str) -> dict | None:
  """The contents of WORKDIR/run.json, or None if there is none."""
  path = epath.Path(workdir) / RUN_FILE
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise WorkdirError(
      f"{path} is not valid JSON ({error}); restore it or move the workdir "
      "aside to start a new run."
    ) from error


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> dict[str, tuple]:
  """Compares `config` with the config WORKDIR/run.json was started with.

  Returns {field: (saved, new)} of the resumable fields that changed (logged).

  Raises:
    WorkdirError: a field outside RESUMABLE_FIELDS differs; the message names every
      such field with both values and how to start a new run instead.
  """
  run = read_run(workdir)
  if run is None:
    logging.warning(
      "%s has checkpoints but no %s: resuming without checking that the "
      "config is the one it was started with.",
      workdir,
      RUN_FILE,
    )
    return {}
  saved, new = _flatten(run["config"]), _flatten(_plain(config))
  changed = {
    field: (saved.get(field), new.get(field))
    for field in sorted(saved.keys() | new.keys())
    if saved.get(field) != new.get(field)
  }
  fixed = {
    field: values
    for field, values in changed.items()
    if not _resumable(field) and field in saved and field in new
  }
  if fixed:
    listed = ", ".join(f"{field} ({old!r} -> {value!r})" for field, (old, value) in fixed.items())
    raise WorkdirError(
      f"{workdir} holds a run started with another config, and resuming it would mix two "
      f"experiments: {listed}; use a new --workdir to start a new run, or rerun with the "
      f"values in {epath.Path(workdir) / RUN_FILE}."
    )
  for field, (old, value) in changed.items():
    logging.info("Resuming with config.%s changed: %r -> %r.", field, old, value)
  return {field: values for field, values in changed.items() if field not in fixed}


def write_run(
  workdir: str,
  config: ml_collections.ConfigDict,
  class_names: Sequence[str],
  resumed_at: int | None = None,
  changes: dict[str, tuple] | None = None,
) -> None:
  """Writes WORKDIR/run.json for a new run, or records a resume in it (process 0)."""
  if jax.process_index() != 0:
    return
  run = (read_run(workdir) if resumed_at is not None else None) or {"resumes": []}
  run.update({"class_names": list(class_names), "config": _plain(config)})
  if resumed_at is not None:
    run.setdefault("resumes", []).append(
      {
        "step": resumed_at,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "changed": {field: list(values) for field, values in (changes or {}).items()},
      }
    )
  else:
    run["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
  (epath.Path(workdir) / RUN_FILE).write_text(json.dumps(run, indent=2))


def record(workdir: str, fields: dict[str, Any]) -> None:
  """Adds `fields` to WORKDIR/run.json (process 0): facts learnt while the run starts,
  such as what its compiled step costs."""
  if jax.process_index() == 0:
    run = read_run(workdir) or {}
    run.update(fields)
    (epath.Path(workdir) / RUN_FILE).write_text(json.dumps(run, indent=2))


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
