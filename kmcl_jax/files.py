"""Files local or on an object store (gs://): whether one is there, and writing a whole
file so that a failure never leaves it cut short (readers see the old file or the new one,
never a mix or a truncated one)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import secrets

from etils import epath


def file_exists(path: str | os.PathLike) -> bool:
  """Whether `path` (local or gs://) is a file: False for a folder or nothing there."""
  path = os.fspath(path)
  if "://" not in path:
    return os.path.isfile(path)
  # Not epath's is_file(): up to etils 1.9 it is `not is_dir()`, True where nothing is.
  remote = epath.Path(path)
  return remote.exists() and not remote.is_dir()


def files_exist(paths: list[str], threads: int) -> list[bool]:
  """file_exists for each of `paths`, `threads` at a time (on gs:// each is a round trip)."""
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    return list(pool.map(file_exists, paths))


def replace_file(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` as the file `path`, replacing any file there only once all of it is
  written. A local file is written to a temporary file beside it and renamed over it
  (os.replace is atomic within a file system), which a failure (a full disk, a kill)
  leaves behind or removes, never `path` half-written; an object store (gs://) replaces
  the object in one upload.
  """
  path = os.fspath(path)
  if "://" in path:
    epath.Path(path).write_bytes(data)
    return
  folder, name = os.path.split(os.path.abspath(path))
  temporary = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
  # Created as open() creates files (0o666 less the umask), unlike mkstemp's 0o600.
  descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(descriptor, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(temporary)
    raise
