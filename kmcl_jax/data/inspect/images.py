"""Which images of a split are missing or unreadable, with a progress bar.

File sources: every path is checked to exist, then its header and last bytes are read
(`image_files.header_problem`: a cut-short or unknown file), or with `decode` the whole
image is decoded (`image_files.read_rgb`: damage inside the compressed data too). Other
sources hold no files: with `decode` each record's image is decoded (a TFDS record
whose bytes are damaged), without it nothing is read.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os

from kmcl_jax import reporting
from kmcl_jax.data.image_files import ImageFileSource, header_problem, read_rgb

DECODE_ERRORS = (OSError, ValueError, SyntaxError)


@dataclasses.dataclass(frozen=True)
class ImageProblems:
  """What the image check of one split found.

  Attributes:
    checked: "headers" (file headers and ends read), "decoded" (every image decoded) or
      "none" (a source without files, not decoded).
    missing: paths of image files that do not exist.
    unreadable: "<path or id>: <problem>", one per image that cannot be read.
  """

  checked: str
  missing: list[str]
  unreadable: list[str]


def _file_problem(path: str, decode: bool) -> tuple[bool, str | None]:
  """(exists, what is wrong with it or None)."""
  if not os.path.isfile(path):
    return False, None
  if not decode:
    return True, header_problem(path)
  try:
    read_rgb(path)
  except DECODE_ERRORS as error:
    return True, str(error)
  return True, None


def _record_problem(source, index: int) -> str | None:
  try:
    source[index]
  except DECODE_ERRORS as error:
    return f"{source.annotations(index)['id']}: {error}"
  return None


def image_problems(source, *, decode: bool, threads: int) -> ImageProblems:
  """The missing and unreadable images of `source` (see the module doc), checked by
  `threads` threads with a progress bar."""
  if not isinstance(source, ImageFileSource) and not decode:
    return ImageProblems("none", [], [])
  what = f"{'Decoding' if decode else 'Checking'} the images of {source.name}"
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    if isinstance(source, ImageFileSource):
      paths = list(source.paths)
      found = list(
        reporting.progress(
          pool.map(lambda path: _file_problem(path, decode), paths), len(paths), what
        )
      )
      missing = [path for path, (exists, _) in zip(paths, found, strict=True) if not exists]
      unreadable = [problem for _, problem in found if problem]
    else:
      indices = range(len(source))
      problems = reporting.progress(
        pool.map(lambda index: _record_problem(source, index), indices), len(source), what
      )
      missing, unreadable = [], [problem for problem in problems if problem]
  return ImageProblems("decoded" if decode else "headers", missing, unreadable)
