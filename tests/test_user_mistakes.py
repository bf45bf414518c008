"""What an ordinary user gets wrong never costs them a run or a result: predictions
written whole, workdirs checked, config values and field names checked before anything
compiles, conversions refused before they run. Each case fails in one sentence, without
a traceback, before touching anything."""

import contextlib
import json
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from data_fixtures import (
  COCO_ANNOTATIONS,
  COCO_CATEGORIES,
  COCO_IMAGES,
  XRAY_ENTRIES,
  make_chestxray,
  make_coco,
  make_voc,
  voc_config,
  voc_image,
  write_image,
)
from runs import ROOT, main_command, run_config, signal_when

from kmcl_jax import config as config_lib
from kmcl_jax import convert, errors, inference
from kmcl_jax import workdir as workdir_lib
from kmcl_jax.data import adp, create_datasets, get_source
from kmcl_jax.data.image_files import decode_image
from kmcl_jax.models.tresnet import create_backbone
from kmcl_jax.train import train_and_evaluate
from kmcl_jax.workdir import WorkdirError


def run_program(*args, cwd=ROOT):
  return subprocess.run(
    [sys.executable, "-m", *args],
    cwd=cwd,
    env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])},
    capture_output=True,
    text=True,
    timeout=300,
  )


def last_line(result):
  return result.stderr.strip().splitlines()[-1]


def strict_json(text):
  def refuse(constant):
    raise ValueError(f"not strict JSON: {constant}")

  return json.loads(text, parse_constant=refuse)


# 3. Predictions. -------------------------------------------------------------------------


def prediction_rows(count, path="img.jpg"):
  return [
    {"path": f"{k}_{path}", "probabilities": {"a": 0.25, "b": 0.75}, "labels": ["b"]}
    for k in range(count)
  ]


@contextlib.contextmanager
def file_size_limit(limit_bytes):
  """Writes past `limit_bytes` fail with EFBIG (a full disk, for one process)."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_a_failed_prediction_write_leaves_the_earlier_file_whole(tmp_path, suffix):
  output = tmp_path / f"predictions{suffix}"
  inference.write_predictions(prediction_rows(3), ["a", "b"], str(output))
  earlier = output.read_bytes()
  with file_size_limit(16 * 1024), pytest.raises(OSError):
    inference.write_predictions(prediction_rows(5000), ["a", "b"], str(output))
  assert output.read_bytes() == earlier
  assert os.listdir(tmp_path) == [output.name]  # no temporary file left behind
  inference.write_predictions(prediction_rows(5000), ["a", "b"], str(output))
  assert output.read_bytes().count(b"_img.jpg") == 5000


def test_predictions_keep_non_utf8_file_names_and_are_strict_json(tmp_path, caplog):
  name = b"caf\xe9 \xff.jpg"  # Latin-1 and a byte no encoding has: not UTF-8
  write_image(os.path.join(os.fsencode(tmp_path), name).decode("utf-8", "surrogateescape"))
  (path,) = inference.find_images(str(tmp_path))
  assert os.fsencode(path) == os.path.join(os.fsencode(tmp_path), name)
  assert decode_image(path).shape == (16, 20, 3)
  rows = [
    {"path": path, "probabilities": {"a": math.nan, "b": 0.5}, "labels": []},
    {"path": "plain.jpg", "probabilities": {"a": math.inf, "b": 0.25}, "labels": ["a"]},
  ]
  inference.write_predictions(rows, ["a", "b"], str(tmp_path / "out.json"))
  written = strict_json((tmp_path / "out.json").read_text(encoding="utf-8"))
  assert os.fsencode(written[0]["path"]) == os.fsencode(path)
  assert written[0]["probabilities"] == {"a": None, "b": 0.5}
  assert written[1]["probabilities"]["a"] is None
  with caplog.at_level(logging.WARNING):
    inference.write_predictions(rows, ["a", "b"], str(tmp_path / "out.csv"))
  assert "1 file names are not UTF-8" in caplog.text
  lines = (tmp_path / "out.csv").read_bytes().splitlines()
  assert lines[0] == b"path,a,b,labels"
  assert lines[1].startswith(os.fsencode(path) + b",nan,0.500000,")


# 4. Workdirs. ----------------------------------------------------------------------------


@pytest.fixture
def read_only_folder(tmp_path):
  """A folder nobody may write in: chmod for a user, the immutable attribute for root
  (whom permissions do not stop)."""
  folder = tmp_path / "read_only"
  folder.mkdir()
  if os.geteuid() == 0:
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
      pytest.skip("root, and chattr +i is not available here")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)
  else:
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def hostile_workdir(tmp_path, kind, read_only):
  if kind == "file":
    (tmp_path / "notes.txt").write_text("a file")
    return str(tmp_path / "notes.txt")
  if kind == "under a file":
    (tmp_path / "notes.txt").write_text("a file")
    return str(tmp_path / "notes.txt" / "run")
  if kind == "dangling symlink":
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    return str(tmp_path / "link")
  if kind == "read-only":
    return str(read_only)
  if kind == "under a read-only folder":
    return str(read_only / "run")
  return kind  # "" or blanks: an unset shell variable


@pytest.mark.parametrize(
  "kind, message",
  [
    ("", "is empty (an unset shell variable?)"),
    ("  ", "is empty (an unset shell variable?)"),
    ("file", "is a file, not a folder"),
    ("under a file", "cannot be written in (Not a directory)"),
    ("dangling symlink", "which does not exist; create that folder or pass another --workdir"),
    ("read-only", "cannot be written in"),
    ("under a read-only folder", "cannot be written in"),
  ],
)
def test_an_unusable_workdir_is_one_sentence(tmp_path, read_only_folder, kind, message):
  workdir = hostile_workdir(tmp_path, kind, read_only_folder)
  with pytest.raises(WorkdirError) as error:
    workdir_lib.check_workdir(workdir, writable=True)
  assert message in str(error.value) and "\n" not in str(error.value)
  assert str(error.value).startswith(f"--workdir={workdir!r}")
  assert not os.path.exists(os.path.join(str(read_only_folder), "run"))


def test_a_gs_workdir_without_the_gcs_extra_names_the_install_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "gcsfs", None)  # what `import gcsfs` meets uninstalled
  with pytest.raises(WorkdirError, match=r"needs the gcs extra.*pip install -e '\.\[gcs\]'\."):
    workdir_lib.check_workdir("gs://bucket/run", writable=True)


def test_eval_and_predict_may_read_a_read_only_workdir(read_only_folder):
  workdir_lib.check_workdir(str(read_only_folder), writable=False)


def smoke_config():
  config = run_config()
  config.compilation_cache = ""  # leaves this process's JAX settings alone
  return config


@pytest.mark.parametrize(
  "files, change, refused",
  [
    ({"summary.json": "{}"}, {}, True),  # a finished run whose checkpoints are gone
    ({"metrics.jsonl": ""}, {}, True),  # some run's logs, no run.json to say whose
    ({"run.json": True, "metrics.jsonl": ""}, {"batch_size": 4}, True),  # another run
    ({"run.json": True}, {"optim.lr": 0.5}, True),
    ({"run.json": True, "metrics.jsonl": ""}, {"log_every_steps": 3}, False),  # this run
    ({"run.json": True, "checkpoints/2/x": ""}, {"batch_size": 4}, False),  # check_resume's
    ({"notes.txt": ""}, {}, False),
  ],
)
def test_another_runs_results_without_checkpoints_are_never_overwritten(
  tmp_path, files, change, refused
):
  for name, content in files.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    if content is True:
      workdir_lib.write_run(str(tmp_path), smoke_config(), ["a"])
    else:
      (tmp_path / name).write_text(content)
  before = {name: (tmp_path / name).read_bytes() for name in files}
  config = smoke_config()
  config.update_from_flattened_dict(change)
  if not refused:
    workdir_lib.refuse_other_run(config, str(tmp_path))
    return
  with pytest.raises(WorkdirError) as error:
    workdir_lib.refuse_other_run(config, str(tmp_path))
  assert "holds the results of another run (" in str(error.value)
  assert all(name in str(error.value) for name in files)
  # The trainer refuses before writing anything.
  with pytest.raises(WorkdirError):
    train_and_evaluate(config, str(tmp_path))
  assert {name: (tmp_path / name).read_bytes() for name in files} == before
  assert sorted(os.listdir(tmp_path)) == sorted({*files, ".lock"} - {"checkpoints/2/x"})


# 5. Config values and fields. ------------------------------------------------------------


@pytest.mark.parametrize(
  "field, value, expected",
  [
    ("loss.temperature", 0.0, "a finite positive number"),
    ("loss.temperature", -0.17, "a finite positive number"),
    ("loss.temperature", math.inf, "a finite positive number"),
    ("loss.gamma_neg", -1.0, "a finite non-negative number"),
    ("loss.gamma_neg", math.nan, "a finite non-negative number"),
    ("loss.gamma_pos", math.inf, "a finite non-negative number"),
    ("loss.clip", -0.05, "a probability shift in [0, 1) (0 disables it)"),
    ("loss.clip", 1.0, "a probability shift in [0, 1) (0 disables it)"),
    ("loss.clip", math.nan, "a probability shift in [0, 1) (0 disables it)"),
    ("loss.weights.asl", math.inf, "a finite non-negative weight"),
    ("optim.lr", math.inf, "a finite positive learning rate"),
    ("optim.lr", math.nan, "a finite positive learning rate"),
    ("optim.weight_decay", math.inf, "a finite non-negative number"),
    ("optim.eps", 0.0, "a finite positive number"),
    ("optim.eps", math.inf, "a finite positive number"),
    ("optim.b2", 1.0, "a number in [0, 1)"),
    ("optim.b2", -0.1, "a number in [0, 1)"),
    ("optim.beta1_base", 1.5, "a number in [0, 1)"),
    ("optim.beta1_peak", math.nan, "a number in [0, 1)"),
    ("optim.div_factor", 0.0, "a finite positive number"),
    ("optim.final_div_factor", math.inf, "a finite positive number"),
    ("ema_decay", math.nan, "a number in [0, 1)"),
    ("ema_decay", 1.0, "a number in [0, 1)"),
  ],
)
def test_bad_loss_and_optimiser_values_are_named_before_compiling(field, value, expected):
  config = smoke_config()
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError) as error:
    config_lib.validate(config)
  assert str(error.value) == f"config.{field}={value!r}: expected {expected}."


def conv_outputs_per_image(backbone, image_size):
  """Values per image of every convolution's (or, with remat, every block's) output,
  as flax traces the backbone (nothing is computed)."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  kept = (lambda m, _: type(m).__name__ == "Block") if backbone.remat else None

  def intermediates(images):
    variables = backbone.init(jax.random.key(0), images)
    _, state = backbone.apply(
      variables,
      images,
      train=True,
      capture_intermediates=kept or (lambda m, _: isinstance(m, nn.Conv)),
      mutable=["intermediates", "batch_stats"],
    )
    return state["intermediates"]

  leaves = jax.tree.leaves(jax.eval_shape(intermediates, images))
  stem = (image_size // 4) ** 2 * backbone.planes if backbone.remat else 0
  return stem + sum(leaf.size for leaf in leaves)


@pytest.mark.parametrize("remat", [False, True])
def test_the_activation_bound_counts_what_the_backbone_computes(remat):
  backbone = create_backbone("tresnet_tiny", remat=remat)
  for size in (64, 96):
    assert backbone.stored_activations(size) == conv_outputs_per_image(backbone, size)


def test_an_image_size_that_cannot_fit_in_memory_is_refused_with_the_estimate():
  config = smoke_config()
  config_lib.check_training_memory(config)  # 32 px fits anywhere
  config.data.image_size = 2**16
  per_image = conv_outputs_per_image(create_backbone("tresnet_tiny"), 64) * (2**16 // 64) ** 2
  with pytest.raises(ValueError) as error:
    config_lib.check_training_memory(config)
  gib = per_image * 4 * config.batch_size / 2**30  # float32 on the CPU
  assert str(error.value).startswith(
    f"config.data.image_size=65536: a train step of tresnet_tiny at batch 8 keeps at "
    f"least {gib:,.1f} GiB of activations for its backward pass"
  )
  assert "lower data.image_size or batch_size, or set model.remat=True." in str(error.value)


@pytest.mark.parametrize(
  "field, message",
  [
    ("batchsize", "unknown field config.batchsize; did you mean config.batch_size?"),
    ("lr", "unknown field config.lr; did you mean config.optim.lr?"),
    ("model.backbon", "unknown field config.model.backbon; did you mean config.model.backbone?"),
    ("data.image_size.x", "config.data.image_size is a value, not a group of fields"),
    ("optim.zzz", "unknown field config.optim.zzz; config.optim has the fields b2, "),
    ("optim.lr", None),
  ],
)
def test_an_unknown_field_is_named_with_the_nearest_one(field, message):
  problem = config_lib.unknown_field(smoke_config(), field)
  assert problem == message if message is None else problem.startswith(message)


@pytest.mark.parametrize(
  "flags, message",
  [
    (
      ["--config=configs/demo.py:smoke", "--config.batchsize=3"],
      "unknown field config.batchsize; did you mean config.batch_size?",
    ),
    # Run in tmp_path: an empty --workdir used to mean the working directory.
    ([f"--config={ROOT}/configs/demo.py:smoke", "--workdir="], "--workdir='' is empty"),
  ],
)
@pytest.mark.slow
def test_the_program_says_what_is_wrong_in_one_line(tmp_path, flags, message):
  workdir = [] if any(f.startswith("--workdir") for f in flags) else [f"--workdir={tmp_path}"]
  cwd = tmp_path if workdir == [] else ROOT
  result = run_program("kmcl_jax.main", *flags, *workdir, cwd=cwd)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert message in last_line(result)
  assert not os.listdir(tmp_path)


# 6. The end of a run. -------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def finished_copy(reference_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference_run, workdir, ignore=shutil.ignore_patterns(".lock"))
  return workdir


@pytest.mark.slow
def test_a_rerun_of_a_finished_run_writes_its_missing_plots_and_nothing_else(
  tmp_path, reference_run
):
  workdir = finished_copy(reference_run, tmp_path)
  (workdir / "plots" / "map.png").unlink()
  kept = {name: (workdir / name).read_bytes() for name in ("summary.json", "metrics.jsonl")}
  result = subprocess.run(
    main_command(workdir), cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "finished at step 6 already" in result.stderr and "map.png" in result.stderr
  assert (workdir / "plots" / "map.png").read_bytes().startswith(PNG_SIGNATURE)
  assert {name: (workdir / name).read_bytes() for name in kept} == kept


@pytest.mark.slow
def test_sigterm_while_the_summary_and_plots_are_written_lets_them_finish(tmp_path, reference_run):
  """A summary cut short (by a kill during an earlier version's write) and no plots: the
  rerun evaluates and writes them, and a SIGTERM once it logs the summary (which it then
  writes, and the plots) lets them finish and ends with 0."""
  workdir = finished_copy(reference_run, tmp_path)
  (workdir / "summary.json").write_bytes((reference_run / "summary.json").read_bytes()[:40])
  shutil.rmtree(workdir / "plots")
  process = subprocess.Popen(
    main_command(workdir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )
  output = signal_when(process, process.stderr, lambda line: "] summary: {" in line, signal.SIGTERM)
  assert process.returncode == 0, output[-3000:]
  assert "SIGTERM arrived after the last step: finished the summary and plots first" in output
  summary = strict_json((workdir / "summary.json").read_text())
  assert summary["map"] == strict_json((reference_run / "summary.json").read_text())["map"]
  for name in ("loss.png", "map.png", "per_class_ap.png"):
    assert (workdir / "plots" / name).read_bytes().startswith(PNG_SIGNATURE), name
  assert "Traceback" not in output


# 7. Data. -------------------------------------------------------------------------------


def make_nuswide(root, rows):
  with open(os.path.join(root, "nus_wid_data.csv"), "w") as f:
    f.write("filepath,label,split_name\n")
    for path, labels, split in rows:
      f.write(f'{path},"{labels}",{split}\n')
      write_image(os.path.join(root, path))


def make_adp(root, rows, train):
  """ADP's flat CSV with `rows` (patch name, L1 labels E C H S A M N G T) and its train
  split `train`, saved as given (any dtype)."""
  os.makedirs(os.path.join(root, "splits"))
  with open(os.path.join(root, adp.CSV_NAME), "w") as f:
    f.write(",".join(("Patch Names",) + adp.CLASS_NAMES) + "\n")
    for name, labels in rows:
      f.write(",".join([name, *map(str, labels)]) + "\n")
      write_image(os.path.join(root, adp.IMAGES, name), fmt="PNG")
  np.save(os.path.join(root, "splits", "train.npy"), train)


E, C = (1, 0, 0, 0, 0, 0, 0, 0, 0), (0, 1, 0, 0, 0, 0, 0, 0, 0)


def duplicated(root, dataset, conflicting):
  """A dataset whose train split lists one image twice, with other labels if
  `conflicting`; returns (source name, split, the image's id)."""
  if dataset == "voc2007":
    folder = make_voc(root)
    # 000005 is not an aeroplane (-1); as "0" it is listed again with another label.
    with open(os.path.join(folder, "ImageSets", "Main", "aeroplane_trainval.txt"), "a") as f:
      f.write("000005  0\n" if conflicting else "000005 -1\n")
    return "trainval", "000005"
  if dataset == "coco2014":
    images = COCO_IMAGES + [{"id": 17, "file_name": "COCO_train2014_000000000017.jpg"}]
    if conflicting:
      images[-1] = {"id": 17, "file_name": "elsewhere.jpg"}
    make_coco(root, "train", COCO_CATEGORIES, images, COCO_ANNOTATIONS)
    return "train", "17"
  if dataset == "nuswide":
    rows = [("images/a.jpg", "['sky']", "train"), ("images/b.jpg", "['water']", "train")]
    make_nuswide(
      root, rows + [("images/a.jpg", "['water']" if conflicting else "['sky']", "train")]
    )
    return "train", "images/a.jpg"
  if dataset == "chestxray14":
    names = list(XRAY_ENTRIES)
    make_chestxray(root, XRAY_ENTRIES, names[:6] + names[:1], names[6:])
    if conflicting:
      with open(os.path.join(root, "Data_Entry_2017.csv"), "a") as f:
        f.write(f"{names[0]},Hernia,0,1\n")
    return "train_val", names[0]
  make_adp(root, [("p0.png", E), ("p1.png", C), ("p0.png", C if conflicting else E)], [0, 1, 2])
  return "train", "p0.png"


@pytest.mark.parametrize("dataset", ["voc2007", "coco2014", "nuswide", "chestxray14", "adp"])
def test_an_image_listed_twice_with_other_labels_is_refused_naming_it(tmp_path, dataset):
  split, image_id = duplicated(str(tmp_path), dataset, conflicting=True)
  with pytest.raises(ValueError) as error:
    get_source(dataset, split, str(tmp_path))
  assert repr(image_id) in str(error.value) or f"image id {image_id} " in str(error.value)
  assert "twice" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("dataset", ["voc2007", "coco2014", "nuswide", "chestxray14", "adp"])
def test_an_image_listed_twice_alike_is_merged_with_a_warning(tmp_path, caplog, dataset):
  split, image_id = duplicated(str(tmp_path), dataset, conflicting=False)
  with caplog.at_level(logging.WARNING):
    source = get_source(dataset, split, str(tmp_path))
  ids = [source.annotations(i)["id"] for i in range(len(source))]
  assert ids.count(image_id) == 1 and len(ids) == len(set(ids))
  assert "repeated image" in caplog.text and "merged (same labels)" in caplog.text


def test_class_names_that_differ_only_in_case_are_warned_about(tmp_path, caplog):
  make_nuswide(str(tmp_path), [("a.jpg", "['Sky']", "train"), ("b.jpg", "['sky']", "train")])
  with caplog.at_level(logging.WARNING):
    source = get_source("nuswide", "train", str(tmp_path))
  assert list(source.class_names) == ["Sky", "sky"]
  assert "the classes 'Sky' and 'sky' differ only in case" in caplog.text


@pytest.mark.parametrize(
  "train, message",
  [
    (np.array([0.0, 1.5]), "index 1.5 is not a whole number"),
    (np.array([0.0, np.nan]), "index nan is not a whole number"),
    (np.array([True, False]), "holds bool values, not row indices"),
    (np.array(["0", "1"]), "holds <U1 values, not row indices"),
    (np.array([0, 1, 2], np.int64), "row index 2 is out of range"),
    (np.array([0, -1]), "row index -1 is out of range"),
    (np.array([{"rows": [0]}], object), "not readable as .npy (Object arrays cannot be loaded"),
  ],
)
def test_an_adp_split_file_that_holds_no_row_indices_is_refused_naming_it(tmp_path, train, message):
  make_adp(str(tmp_path), [("p0.png", E), ("p1.png", C)], train)
  with pytest.raises(ValueError) as error:
    get_source("adp", "train", str(tmp_path))
  path = os.path.join(str(tmp_path), "splits", "train.npy")
  assert str(error.value).startswith(f"{path}: {message}")
  assert "expected a .npy array of integer row indices" in str(error.value)


def test_whole_float_indices_in_an_adp_split_are_read(tmp_path):
  make_adp(str(tmp_path), [("p0.png", E), ("p1.png", C)], np.array([1.0, 0.0]))
  source = get_source("adp", "train", str(tmp_path))
  assert [source.annotations(i)["id"] for i in range(2)] == ["p1.png", "p0.png"]


def test_a_missing_training_image_is_found_before_training(tmp_path, caplog):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain reads an absl flag (see test_pipeline.py)
  make_voc(str(tmp_path))
  os.remove(voc_image(str(tmp_path), "000009"))
  with pytest.raises(FileNotFoundError) as error:
    create_datasets(voc_config(str(tmp_path)))
  assert str(error.value).startswith(
    f"{voc_image(str(tmp_path), '000009')}: no such image file (1 of the 4 images of "
    f"voc2007 trainval at {tmp_path} are missing, found before training;"
  )
  with caplog.at_level(logging.WARNING):
    datasets = create_datasets(voc_config(str(tmp_path), skip_corrupt=True))
  assert datasets.num_train == 4 and "1 of the 4 images of voc2007 trainval" in caplog.text


def test_a_missing_config_file_says_what_to_pass(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(FileNotFoundError) as error:
    config_lib.load("configs/no_such.py:smoke")
  assert str(error.value) == (
    f"--config='configs/no_such.py:smoke': no config file '{tmp_path}/configs/no_such.py'; "
    "pass the path of one of the repository's configs/*.py (relative to the working "
    f"directory, {tmp_path}), with :VARIANT after it if it has variants."
  )


# 8. Conversion. --------------------------------------------------------------------------


def test_a_truncated_safetensors_file_is_one_sentence(tmp_path):
  from safetensors.numpy import save_file

  path = tmp_path / "weights.safetensors"
  save_file({"body.conv1.conv.weight": np.zeros((64, 48, 3, 3), np.float32)}, str(path))
  for keep in (path.stat().st_size - 1000, 40, 3):
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ValueError) as error:
      convert.read_state_dict(str(path))
    assert str(error.value).startswith(f"--src={str(path)!r} is not a readable .safetensors")
    assert "\n" not in str(error.value) and errors.raised_on_purpose(error.value)


@pytest.mark.slow
def test_an_existing_destination_is_refused_before_the_conversion_reads_anything(tmp_path):
  (tmp_path / "out" / "variables").mkdir(parents=True)
  (tmp_path / "unreadable.safetensors").write_bytes(b"not safetensors")
  result = run_program(
    "kmcl_jax.convert",
    f"--src={tmp_path / 'unreadable.safetensors'}",
    f"--dst={tmp_path / 'out'}",
  )
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert last_line(result).endswith(
    f"--dst='{tmp_path / 'out'}' already holds a converted checkpoint (variables); "
    "choose another --dst or remove it."
  )
