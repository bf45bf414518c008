"""Records, image decoding and the random-access source shared by every file-based dataset.

A record is a dict:
  image:  uint8 (H, W, 3), RGB whatever the file holds (grayscale, CMYK, RGBA, palette,
          16-bit, PNG or JPEG).
  labels: float32 (K,) in {0, 1}; the training target.
  ignore: bool (K,); entries left out of AP (VOC "difficult"), all False elsewhere.
  id:     str; the dataset's own name for the image.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from kmcl_jax.files import files_exist


class CorruptImageError(OSError):
  """An image file that cannot be decoded; the message starts with its path."""


# Decoding bound, in pixels (64 MiB as RGB). Every image of the paper's datasets is far
# smaller (at most about 1,100 x 1,100), and the pipeline resizes to at most 448 px, so
# only an outlier (a scan, a panorama, a malicious file) exceeds it: a JPEG above it is
# decoded at 1/2, 1/4 or 1/8 scale by libjpeg (`Image.draft`, the smallest reduction
# that fits), so its full resolution is never in memory; any other format above it, and
# any image above PIL's decompression-bomb limit, is a CorruptImageError. Images within
# the bound decode exactly as before.
MAX_DECODED_PIXELS = 4096 * 4096
_TAIL_BYTES = 1024
_END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND"}
_SCALABLE_FORMATS = ("JPEG", "MPO")  # decoders that honour Image.draft


@contextlib.contextmanager
def open_image(path: str) -> Iterator[Image.Image]:
  """The image file `path`, local or on an object store (gs://), opened by PIL (not yet
  decoded)."""
  if "://" not in path:
    with Image.open(path) as image:
      yield image
    return
  with epath.Path(path).open("rb") as f, Image.open(f) as image:
    yield image


def read_rgb(path: str) -> Image.Image:
  """Reads an image file into a decoded RGB PIL image (at most MAX_DECODED_PIXELS);
  raises CorruptImageError naming `path`."""
  try:
    with open_image(path) as image:
      bound_decoded_size(image, path)
      return to_rgb(image)
  except CorruptImageError:
    raise
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
    raise CorruptImageError(f"{path}: cannot decode the image ({error}).") from error


def decode_image(path: str) -> np.ndarray:
  """Reads an image file into uint8 (H, W, 3) RGB; raises CorruptImageError naming `path`."""
  return np.asarray(read_rgb(path))


def bound_decoded_size(image: Image.Image, path: str) -> None:
  """Makes an opened, not yet decoded `image` decode to at most MAX_DECODED_PIXELS (a
  JPEG at a reduced scale), or raises CorruptImageError naming `path`."""
  width, height = image.size
  if width * height <= MAX_DECODED_PIXELS:
    return
  scale = next((s for s in (2, 4, 8) if -(-width // s) * -(-height // s) <= MAX_DECODED_PIXELS), 8)
  # Only JPEG decoders honour the request; for other formats the size stays and is refused.
  image.draft(None, (width // scale, height // scale))
  if image.size[0] * image.size[1] > MAX_DECODED_PIXELS:
    raise CorruptImageError(
      f"{path}: {width} x {height} pixels is more than the {MAX_DECODED_PIXELS:,} this "
      "pipeline decodes (JPEGs are decoded at down to 1/8 scale, other formats whole)."
    )


def to_rgb(image: Image.Image) -> Image.Image:
  """A PIL image of any mode as a decoded RGB PIL image (the same object if it is RGB)."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    # 16-bit scans (some X-ray PNGs): keep the top 8 bits rather than clip at 255.
    depth = 16 if image.mode.startswith("I;16") else 32
    values = np.asarray(image, dtype=np.uint32) >> (depth - 8)
    image = Image.fromarray(values.astype(np.uint8))
  elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
    # Transparent pixels become white, as a viewer shows them, not their hidden colour.
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(background, rgba)
  if image.mode == "RGB":
    image.load()
    return image
  return image.convert("RGB")


def header_problem(path: str) -> str | None:
  """What is wrong with an image file ("<path>: <problem>", no final period), found from
  its header and last bytes without decoding it, or None.

  Finds: a missing or unreadable file, an unknown format, a header cut short, a size
  beyond what `read_rgb` decodes, and a JPEG or PNG cut short (no end marker in its
  last KiB; entropy-coded JPEG data cannot contain FF D9, so only a complete file ends
  with it; a PNG that lost only its final IEND chunk is flagged though PIL would still
  decode it). Damage inside the compressed data is found only by decoding.
  """
  try:
    with open_image(path) as image:
      width, height = image.size
      if width * height > MAX_DECODED_PIXELS and image.format not in _SCALABLE_FORMATS:
        return (
          f"{path}: {width} x {height} pixels is more than the {MAX_DECODED_PIXELS:,} "
          "this pipeline decodes"
        )
      marker = _END_MARKERS.get(image.format)
      if marker:
        size = image.fp.seek(0, os.SEEK_END)
        image.fp.seek(-min(_TAIL_BYTES, size), os.SEEK_END)
        if marker not in image.fp.read(_TAIL_BYTES):
          return f"{path}: the {image.format} file is cut short (no end marker)"
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
    return f"{path}: cannot read the image header ({error})"
  return None


def require_directory(path: str, dataset: str, layout: str) -> str:
  """Returns `path` if it is a directory, else raises naming it and the layout expected."""
  if not os.path.isdir(path):
    raise FileNotFoundError(
      f"{dataset}: dataset folder {path!r} does not exist; expected {layout}."
    )
  return path


def require_file(path: str, dataset: str, layout: str) -> str:
  """Returns `path` if it is a file, else raises naming it and the layout expected."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"{dataset}: annotation file {path!r} does not exist; expected {layout}."
    )
  return path


@dataclasses.dataclass(frozen=True)
class ImageFileSource:
  """A grain random-access source over image files with multilabel targets.

  Attributes:
    paths: N image file paths.
    labels: float32 (N, K) in {0, 1}.
    ignore: bool (N, K).
    ids: N image ids.
    class_names: K class names, in label order.
    name: the dataset and split, for messages.
  """

  paths: Sequence[str]
  labels: np.ndarray
  ignore: np.ndarray
  ids: Sequence[str]
  class_names: Sequence[str]
  name: str

  def __post_init__(self):
    if len(self.paths) == 0:
      raise ValueError(f"{self.name}: the split has no images.")
    by_case = {}
    for name in self.class_names:
      by_case.setdefault(name.casefold(), []).append(name)
    for names in (n for n in by_case.values() if len(n) > 1):
      logging.warning(
        "%s: the classes %s differ only in case and are learnt as separate classes; "
        "if they are one, spell them alike in the annotations.",
        self.name,
        " and ".join(map(repr, names)),
      )
    n, k = self.labels.shape
    if not (
      len(self.paths) == len(self.ids) == n
      and self.ignore.shape == (n, k)
      and len(self.class_names) == k
    ):
      raise ValueError(
        f"{self.name}: paths, ids, labels {self.labels.shape}, ignore "
        f"{self.ignore.shape} and {len(self.class_names)} class names disagree."
      )

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict:
    return {"image": decode_image(self.paths[index]), **self.annotations(index)}

  def read(self, index: int) -> dict:
    """The record with its image as a decoded RGB PIL image (what the pipeline resizes,
    one copy fewer than `self[index]`)."""
    return {"image": read_rgb(self.paths[index]), **self.annotations(index)}

  def annotations(self, index: int) -> dict:
    """The record without its image (no file is read)."""
    return {"labels": self.labels[index], "ignore": self.ignore[index], "id": self.ids[index]}


def first_of_each_id(
  ids: Sequence[str], labels: np.ndarray, paths: Sequence[str], where: str
) -> list[int]:
  """The index of the first record of each id, in order. An id listed again with the same
  labels and file is dropped with a warning; with other labels (or another file) it is
  a ValueError naming `where` (the annotation file) and the id."""
  first, repeats = {}, 0
  for index, image_id in enumerate(ids):
    if image_id not in first:
      first[image_id] = index
      continue
    seen = first[image_id]
    if paths[seen] != paths[index] or not np.array_equal(labels[seen], labels[index]):
      raise ValueError(
        f"{where}: image {image_id!r} is listed twice with different labels or files; "
        "keep one of its entries."
      )
    repeats += 1
  if repeats:
    logging.warning("%s: %d repeated image entries merged (same labels).", where, repeats)
  return list(first.values())


def multi_hot(label_lists: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
  """float32 (N, K) with ones at each row's class indices."""
  labels = np.zeros((len(label_lists), num_classes), np.float32)
  for row, classes in enumerate(label_lists):
    labels[row, list(classes)] = 1.0
  return labels


def parse_error(path: str, line_number: int, line: str, expected: str) -> ValueError:
  """The error for a malformed annotation line: file, 1-based line number, what was expected."""
  return ValueError(f"{path}, line {line_number}: expected {expected}, got {line.rstrip()!r}.")


def check_image_headers(source, *, skip_corrupt: bool, threads: int) -> list[str]:
  """Reads the header and last KiB of every image file of `source` (no decoding) and
  returns what is wrong with each bad one; raises CorruptImageError naming the first
  unless `skip_corrupt`. Sources that are not files have nothing to check: the demo set
  renders its images and TFDS checked its records when it prepared them."""
  if not isinstance(source, ImageFileSource):
    return []
  start = time.perf_counter()
  paths = list(source.paths)
  chunks = [paths[i::threads] for i in range(threads)]
  # Threads overlap the file reads; the header parsing itself holds the GIL.
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    problems = sorted(
      p for chunk in pool.map(lambda c: [header_problem(x) for x in c], chunks) for p in chunk if p
    )
  logging.info(
    "Checked the headers of the %d images of %s in %.1f s: %d unreadable.",
    len(paths),
    source.name,
    time.perf_counter() - start,
    len(problems),
  )
  if problems and not skip_corrupt:
    raise CorruptImageError(
      f"{problems[0]} ({len(problems)} unreadable image(s) in {source.name}, found "
      "before training; data.skip_corrupt=True leaves them out of the evaluation)."
    )
  for problem in problems:
    logging.warning("Unreadable evaluation image (skipped, data.skip_corrupt): %s", problem)
  return problems


def check_image_files(source, *, skip_corrupt: bool, threads: int) -> list[str]:
  """The image files of `source` that do not exist (a stat each, nothing read); raises
  FileNotFoundError naming the first unless `skip_corrupt`, which leaves them out of
  training (each is then skipped as undecodable when its turn comes)."""
  if not isinstance(source, ImageFileSource):
    return []
  paths = list(source.paths)
  exists = files_exist(paths, threads)
  missing = [path for path, found in zip(paths, exists, strict=True) if not found]
  if missing and not skip_corrupt:
    raise FileNotFoundError(
      f"{missing[0]}: no such image file ({len(missing)} of the {len(paths)} images of "
      f"{source.name} are missing, found before training; data.skip_corrupt=True trains "
      "without them)."
    )
  if missing:
    logging.warning(
      "%d of the %d images of %s are missing and are skipped (data.skip_corrupt), such as %s",
      len(missing),
      len(paths),
      source.name,
      missing[0],
    )
  return missing
