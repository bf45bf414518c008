"""python -m kmcl_jax.export and kmcl_jax.Classifier: the exported program, the Python API
and --mode=predict agree on the reference run's checkpoint; the program runs without
kmcl_jax; images are prepared as evaluation prepares them; bad input fails in one
sentence."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from runs import ROOT, run_config

from kmcl_jax import Classifier, inference
from kmcl_jax.data import CorruptImageError, create_eval_dataset
from kmcl_jax.data.demo import DigitGridSource
from kmcl_jax.export import artifact, export_model
from kmcl_jax.reporting import to_json

CLASS_NAMES = [str(k) for k in range(10)]
# Runs the exported program with JAX and NumPy only: importing kmcl_jax (installed or on
# the path) fails there.
PROGRAM_ALONE = """
import sys
sys.modules["kmcl_jax"] = None
import jax, numpy as np
with open(sys.argv[1], "rb") as f:
  program = jax.export.deserialize(bytearray(f.read()))
images = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(program.call(images)))
np.save(sys.argv[4], np.asarray(program.call(images[:1])))
assert not [m for m in sys.modules if m.startswith("kmcl_jax") and sys.modules[m]]
print(",".join(program.platforms))
"""


@pytest.fixture(scope="module")
def exports(reference_run, tmp_path_factory):
  """The reference run's best checkpoint exported as float32 for cpu,cuda and as bfloat16
  for the default platforms: (folder, float32 report, bfloat16 report)."""
  folder = tmp_path_factory.mktemp("exports")
  float32 = export_model(str(reference_run), str(folder / "f32"), platforms=("cpu", "cuda"))
  bfloat16 = export_model(str(reference_run), str(folder / "bf16"), bfloat16=True)
  return folder, float32, bfloat16


def demo_images(count):
  source = DigitGridSource("test")
  return [source[i]["image"] for i in range(count)]


def unscored_classifier():
  """The reference run's classifier without weights: enough to prepare images."""
  return Classifier(run_config(), CLASS_NAMES, {}, variant="model", origin="test", source="")


@pytest.mark.slow
def test_program_api_and_predict_mode_give_the_same_probabilities(exports, reference_run, tmp_path):
  folder, report, _ = exports  # export_model read the checkpoint with Classifier.load
  images = demo_images(5)
  for i, image in enumerate(images):
    Image.fromarray(image).save(tmp_path / f"{i}.png")
  (tmp_path / "9_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
  paths = sorted(str(p) for p in tmp_path.iterdir())

  # Batches of 6 (--mode=predict pads to its 6 files).
  rows = inference.predict(
    run_config(), str(reference_run), str(tmp_path), str(tmp_path / "p.json")
  )
  by_mode = np.array([[r["probabilities"][n] for n in CLASS_NAMES] for r in rows])
  exported = Classifier.load(folder / "f32")
  from_export = exported.predict(paths, batch_size=6, on_error="skip")
  assert from_export.kept == [0, 1, 2, 3, 4]
  assert from_export.skipped[0][0] == 5 and "9_broken.jpg" in from_export.skipped[0][1]
  np.testing.assert_allclose(from_export.probabilities, by_mode, rtol=0, atol=1e-6)
  assert from_export.labels == [r["labels"] for r in rows]
  assert 0 < by_mode.min() and by_mode.max() < 1 and by_mode.std() > 1e-3

  batch = np.stack([exported.preprocess(image) for image in images])
  np.save(tmp_path / "images.npy", batch)
  program = os.path.join(folder, "f32", artifact.PROGRAM_FILE)
  outputs = [str(tmp_path / "all.npy"), str(tmp_path / "one.npy")]
  result = subprocess.run(
    [sys.executable, "-c", PROGRAM_ALONE, program, str(tmp_path / "images.npy"), *outputs],
    cwd=tmp_path,
    env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "cpu,cuda"
  np.testing.assert_allclose(np.load(outputs[0]), by_mode, rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.load(outputs[1]), by_mode[:1], rtol=0, atol=1e-6)

  mixture = exported.embed(images[:2])
  np.testing.assert_allclose(
    jax.nn.sigmoid(mixture.pi), by_mode[:2], rtol=0, atol=1e-6
  )  # pi is the logit
  assert mixture.features.shape == (2, 128)
  assert mixture.mu.shape == mixture.var.shape == (2, 128, 10) and (mixture.var > 1).all()

  assert report["checkpoint"] == os.path.join(reference_run, "best", "6")
  assert report["export_bytes"] < report["checkpoint_bytes"] / 1.5
  description = json.loads((folder / "f32" / artifact.MODEL_FILE).read_text())
  assert description["class_names"] == CLASS_NAMES and description["threshold"] == 0.8
  assert (
    description["weights"]["variant"]
    == json.loads((reference_run / "summary.json").read_text())["best_of"]
  )


@pytest.mark.slow
def test_bfloat16_export_is_smaller_and_its_program_matches_its_weights(exports):
  folder, float32, bfloat16 = exports
  sizes = {name: os.path.getsize(folder / name / artifact.WEIGHTS_FILE) for name in ("f32", "bf16")}
  assert sizes["bf16"] < 0.51 * sizes["f32"]
  assert bfloat16["export_bytes"] < 0.6 * float32["export_bytes"]
  images = demo_images(6)  # a batch of mixed sizes and kinds, resized as evaluation does
  images[1] = Image.fromarray(images[1]).resize((70, 45))
  images[2] = np.asarray(Image.fromarray(images[2]).resize((40, 52)))
  rounded = Classifier.load(folder / "bf16")
  full = artifact.read_weights(folder / "f32" / artifact.WEIGHTS_FILE)
  pairs = list(zip(jax.tree.leaves(rounded.weights), jax.tree.leaves(full), strict=True))
  for bf16, f32 in pairs:  # float32 again, within bfloat16's rounding of the float32 export
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, f32, rtol=2**-8, atol=0)
  assert any((np.asarray(bf16) != f32).any() for bf16, f32 in pairs)
  probabilities = rounded.predict(images, batch_size=6).probabilities
  with open(folder / "bf16" / artifact.PROGRAM_FILE, "rb") as f:
    program = jax.export.deserialize(bytearray(f.read()))
  assert program.platforms == ("cpu", "cuda", "tpu")
  batch = np.stack([rounded.preprocess(image) for image in images])
  np.testing.assert_allclose(program.call(batch), probabilities, rtol=0, atol=1e-6)


def test_images_are_prepared_as_evaluation_prepares_them(tmp_path):
  config = run_config()
  config.eval_batch_size = 8
  eval_batches, _ = create_eval_dataset(config)
  batch = next(iter(eval_batches))
  classifier = unscored_classifier()
  grid = DigitGridSource("test")[int(batch["index"][0])]["image"]
  Image.fromarray(grid).save(tmp_path / "grid.png")
  Image.fromarray(grid).convert("RGBA").save(tmp_path / "grid_rgba.png")
  for image in (
    grid,
    Image.fromarray(grid),
    str(tmp_path / "grid.png"),
    tmp_path / "grid_rgba.png",
  ):
    np.testing.assert_array_equal(classifier.preprocess(image), batch["image"][0])
  wide = np.asarray(Image.fromarray(grid).resize((70, 45)))
  assert classifier.preprocess(wide).shape == (32, 32, 3)
  grey = classifier.preprocess(grid[..., 0])
  assert grey.shape == (32, 32, 3) and (grey[..., 0] == grey[..., 2]).all()


def test_an_unreadable_image_is_named_or_skipped_and_a_bad_array_refused(tmp_path):
  classifier = unscored_classifier()
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
  with pytest.raises(CorruptImageError, match="broken.jpg"):
    classifier.predict([broken])
  with pytest.raises(ValueError, match="on_error='ignore'"):
    classifier.predict([broken], on_error="ignore")
  with pytest.raises(ValueError, match="uint8"):
    classifier.predict(np.zeros((2, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match="batch_size=0"):
    classifier.predict([broken], batch_size=0)


def test_a_folder_that_is_no_export_and_a_workdir_without_checkpoints_are_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither an export .* nor a training workdir"):
    Classifier.load(tmp_path)
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "run.json").write_text(
    to_json({"config": run_config().to_dict(), "class_names": CLASS_NAMES})
  )
  with pytest.raises(FileNotFoundError, match="has no checkpoint"):
    Classifier.load(workdir)
  not_export = tmp_path / "other"
  not_export.mkdir()
  (not_export / artifact.MODEL_FILE).write_text('{"kind": "kmcl"}')
  with pytest.raises(ValueError, match="is not the model.json of `python -m kmcl_jax.export`"):
    Classifier.load(not_export)
  with pytest.raises(ValueError, match="one set of weights"):
    Classifier.load(not_export, variant="ema")
  with pytest.raises(ValueError, match="is an export already"):
    export_model(str(not_export), str(tmp_path / "out"))
  with pytest.raises(FileExistsError, match="already holds an export"):
    export_model(str(workdir), str(not_export))
  with pytest.raises(ValueError, match="--platforms='gpu'"):
    export_model(str(workdir), str(tmp_path / "out"), platforms=("gpu",))


@pytest.mark.slow
def test_the_export_command_stops_with_one_sentence(tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "kmcl_jax.export", f"--workdir={tmp_path}", f"--output={tmp_path}/x"],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert "is neither an export" in result.stderr.strip().splitlines()[-1]
  assert not os.path.exists(tmp_path / "x")


def test_importing_kmcl_jax_stays_light_until_the_classifier_is_used():
  import kmcl_jax.classifier

  command = "import sys, kmcl_jax; print(sorted({'jax', 'flax', 'PIL'} & set(sys.modules)))"
  result = subprocess.run(
    [sys.executable, "-c", command], cwd=ROOT, capture_output=True, text=True, check=True
  )
  assert result.stdout.strip() == "[]"
  assert Classifier is kmcl_jax.classifier.Classifier  # imported on first use
