"""A trained KMCL model put to work from Python: probabilities, labels and the KMM
head's mixture for images, files or arrays.

  from kmcl_jax import Classifier

  classifier = Classifier.load("/tmp/kmcl_demo")  # a training workdir or an export
  result = classifier.predict(["a.jpg", "b.png"], batch_size=64)
  result.probabilities  # float32 (N, K); result.labels: the class names >= threshold
  mixture = classifier.embed(["a.jpg"])  # pi, mu, var as the KMM head gives them

Images are prepared exactly as evaluation prepares them (`preprocess`): decoded to RGB,
resized to image_size x image_size (bilinear, aspect ratio ignored) whatever their size,
normalised inside the compiled program. `--mode=predict` scores through this class.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from kmcl_jax.data import transforms
from kmcl_jax.data.image_files import CorruptImageError, read_rgb, to_rgb
from kmcl_jax.export import artifact
from kmcl_jax.inference import load_weights, run_class_names
from kmcl_jax.mesh import create_mesh, replicated
from kmcl_jax.reporting import progress
from kmcl_jax.state import create_model
from kmcl_jax.steps import class_probabilities, eval_outputs
from kmcl_jax.workdir import RUN_FILE, read_run, run_config

ON_ERROR = ("raise", "skip")  # what an image that cannot be read does


@dataclasses.dataclass(frozen=True)
class Predictions:
  """What `Classifier.predict` found for the images it could read.

  probabilities: float32 (N, K), sigmoid class probabilities, rows in input order.
  labels: per row, the class names whose probability is >= the threshold.
  class_names: the K class names, in column order.
  kept: per row, the index of its image in the inputs.
  skipped: (input index, why) of each image that could not be read (on_error="skip").
  """

  probabilities: np.ndarray
  labels: list[list[str]]
  class_names: list[str]
  kept: list[int]
  skipped: list[tuple[int, str]]


@dataclasses.dataclass(frozen=True)
class Mixture:
  """The KMM head's outputs for the images `Classifier.embed` could read: a Gaussian
  kernel per class (docs/method.md, section 1), float32.

  features: (N, D), the embedding the kernels live in (D = embedding_dim anisotropic,
    the backbone's width isotropic).
  pi: (N, K), the class logits (the mixture weights before the sigmoid).
  mu, var: (N, D, K) anisotropic or (N, K) isotropic, the kernels' means and variances
    (var > 1); None for a model trained with model.mode="asl_only".
  kept, skipped: as `Predictions`'.
  """

  features: np.ndarray
  pi: np.ndarray
  mu: np.ndarray | None
  var: np.ndarray | None
  kept: list[int]
  skipped: list[tuple[int, str]]


def _as_items(inputs: Any) -> list:
  """One image (a path, a PIL image, an (H, W[, C]) array) or many (a sequence of them, or
  an (N, H, W, C) array) -> a list of images."""
  if isinstance(inputs, (str, os.PathLike, Image.Image)):
    return [inputs]
  if isinstance(inputs, (np.ndarray, jax.Array)):
    return list(inputs) if inputs.ndim == 4 else [inputs]
  return list(inputs)


class Classifier:
  """One set of trained weights (a model or its EMA) with what scoring it needs.

  Attributes:
    config: the run's config (ml_collections), which rebuilds the model.
    class_names: the K class names, in the order of the model's outputs.
    threshold: the probability at or above which a class is predicted (may be changed).
    image_size: S, the side images are resized to.
    variant: "model" or "ema".
    origin: where the weights came from, in words.
    source: the folder they were read from (a checkpoint step, a converted model or an
      export).
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    class_names: Iterable[str],
    weights: dict,
    *,
    variant: str,
    origin: str,
    source: str,
    threshold: float | None = None,
  ):
    self.config = config
    self.class_names = list(class_names)
    self.threshold = float(config.threshold if threshold is None else threshold)
    self.image_size = int(config.data.image_size)
    self.variant, self.origin, self.source = variant, origin, source
    self.model = model = create_model(config, len(self.class_names))
    # Replicated over the mesh, as a checkpoint is restored: weights from a workdir and
    # from an export run the same compiled program.
    self.weights = jax.device_put(weights, replicated(create_mesh()))
    self._probabilities = jax.jit(
      lambda weights, images: {"probabilities": class_probabilities(config, model, weights, images)}
    )
    self._mixture = jax.jit(lambda weights, images: eval_outputs(config, model, weights, images))

  @classmethod
  def load(
    cls,
    path: str | os.PathLike,
    *,
    variant: str = "auto",
    step: int | None = None,
    config: ml_collections.ConfigDict | None = None,
  ) -> Classifier:
    """The classifier of an export (`python -m kmcl_jax.export`) or of a training
    workdir: its best checkpoint (or checkpoint `step`), the model or EMA weights
    (`variant`; "auto" = the one that scored that checkpoint's mAP), rebuilt with the
    config its run.json records (or `config`, checked against it). A workdir without
    checkpoints uses config.init_from's converted model, if it names one.

    Raises:
      FileNotFoundError: `path` is neither an export nor a workdir, or the workdir has
        no checkpoint.
      ValueError: `step`, `variant` or `config` given for an export (it holds one set of
        weights), or a damaged export.
    """
    path = os.fspath(path)
    if artifact.is_export(path):
      if step is not None or config is not None or variant != "auto":
        raise ValueError(
          f"{path} is an export of one set of weights: step, variant and config choose "
          "among a training workdir's checkpoints."
        )
      description, weights = artifact.read_export(path)
      return cls(
        ml_collections.ConfigDict(description["config"]),
        description["class_names"],
        weights,
        variant=description["weights"]["variant"],
        origin=f"{path} (exported from {description['weights']['origin']})",
        source=path,
        threshold=description["threshold"],
      )
    if config is None:
      run = read_run(path) if epath.Path(path).is_dir() else None
      if run is None:
        raise FileNotFoundError(
          f"{path!r} is neither an export of `python -m kmcl_jax.export` (no "
          f"{artifact.MODEL_FILE}) nor a training workdir (no {RUN_FILE})."
        )
      config = run_config(path)
    class_names = run_class_names(config, path)
    weights, origin, variant, folder = load_weights(config, path, class_names, step, variant)
    return cls(config, class_names, weights, variant=variant, origin=origin, source=folder)

  def preprocess(self, image: Any) -> np.ndarray:
    """An image file's path, a PIL image or a uint8 (H, W), (H, W, 3) or (H, W, 4) array
    -> uint8 (S, S, 3) RGB, as evaluation prepares it (`transforms.eval_image`).

    Raises:
      CorruptImageError: a file that cannot be read (its path named).
      ValueError: an array that is not a uint8 image.
    """
    if isinstance(image, (str, os.PathLike)):
      pil = read_rgb(os.fspath(image))
    elif isinstance(image, Image.Image):
      pil = to_rgb(image)
    else:
      array = np.asarray(image)
      if array.dtype != np.uint8 or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4))
      ):
        raise ValueError(
          f"An image array must be uint8 (H, W), (H, W, 3) or (H, W, 4); got {array.dtype} "
          f"{array.shape}."
        )
      pil = to_rgb(Image.fromarray(array[..., 0] if array.shape[-1:] == (1,) else array))
    return transforms.eval_image(pil, self.image_size)

  def predict(
    self, images: Any, batch_size: int | None = None, on_error: str = "raise"
  ) -> Predictions:
    """Class probabilities and labels of `images` (paths, PIL images or arrays of any
    sizes, or an (N, H, W, C) array), `batch_size` at a time (config.eval_batch_size by
    default). An image that cannot be read raises CorruptImageError naming it, or with
    on_error="skip" is logged and left out (`Predictions.skipped`)."""
    outputs, kept, skipped = self._run(self._probabilities, images, batch_size, on_error)
    probabilities = outputs["probabilities"]
    labels = [
      [name for name, p in zip(self.class_names, row, strict=True) if p >= self.threshold]
      for row in probabilities
    ]
    return Predictions(probabilities, labels, list(self.class_names), kept, skipped)

  def embed(self, images: Any, batch_size: int | None = None, on_error: str = "raise") -> Mixture:
    """The KMM head's mixture (pi, mu, var) and the features it is computed from for
    `images`, taken as `predict` takes them: for retrieval (compare features or
    kernels) or analysis."""
    outputs, kept, skipped = self._run(self._mixture, images, batch_size, on_error)
    return Mixture(
      outputs["features"], outputs["pi"], outputs.get("mu"), outputs.get("var"), kept, skipped
    )

  def _run(self, program, images: Any, batch_size: int | None, on_error: str):
    """({name: (N, ...) float32} of `program` over the readable images, kept, skipped).

    Every batch is padded to one size (so the program compiles once), the smaller of
    `batch_size` and the number of images."""
    if on_error not in ON_ERROR:
      raise ValueError(f"on_error={on_error!r}: expected one of {', '.join(ON_ERROR)}.")
    batch_size = self.config.eval_batch_size if batch_size is None else batch_size
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size}: expected a positive number of images.")
    items = _as_items(images)
    width = max(1, min(batch_size, len(items)))
    chunks = [range(start, min(start + width, len(items))) for start in range(0, len(items), width)]
    shape = (width, self.image_size, self.image_size, 3)
    results, kept, skipped = [], [], []
    for chunk in progress(chunks, len(chunks), "Scoring", unit="batches"):
      batch = np.zeros(shape, np.uint8)
      count = 0
      for index in chunk:
        try:
          batch[count] = self.preprocess(items[index])
        except CorruptImageError as error:
          if on_error == "raise":
            raise
          logging.warning("Skipping %s", error)
          skipped.append((index, str(error)))
          continue
        kept.append(index)
        count += 1
      if count:
        out = jax.device_get(program(self.weights, batch))
        results.append({name: value[:count] for name, value in out.items() if value is not None})
    if results:
      outputs = {name: np.concatenate([r[name] for r in results]) for name in results[0]}
    else:  # nothing readable: empty arrays of the right trailing shapes
      shapes = jax.eval_shape(program, self.weights, jax.ShapeDtypeStruct(shape, np.uint8))
      outputs = {
        name: np.zeros((0, *s.shape[1:]), s.dtype) for name, s in shapes.items() if s is not None
      }
    return outputs, kept, skipped
