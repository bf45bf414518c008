"""What a hostile but ordinary user does to a workdir never costs the run: a checkpoint
that cannot be read or does not fit is refused with one sentence and nothing is moved;
only damage (a checksum mismatch, a non-finite value) is taken out of the way, never the
best checkpoint; a run that saved progress never starts again from step 0."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from data_fixtures import COCO_ANNOTATIONS, COCO_CATEGORIES, COCO_IMAGES, make_coco
from etils import epath
from runs import ROOT, main_command, run_config, stopped_with_one_sentence
from test_checkpointing import (
  abstract,
  data_iterator,
  flip_a_byte_of_the_array_data,
  save,
  state_at,
)

from kmcl_jax import inference, optim, train
from kmcl_jax import workdir as workdir_lib
from kmcl_jax.checkpointing import CheckpointError, CheckpointMismatch, Checkpoints
from kmcl_jax.data import create_datasets
from kmcl_jax.mesh import create_mesh, replicated
from kmcl_jax.state import abstract_state, create_model
from kmcl_jax.workdir import WorkdirError


@pytest.fixture
def failing_reads(monkeypatch):
  """Makes every file read (epath's read_text, which orbax reads metadata and JSON items
  with) under a folder run `action(path)` first, as long as `reads[folder]` counts down
  from a positive number: a storage error, or another process deleting the folder."""
  faults = {}
  path_class = type(epath.Path("/"))
  real_read_text = path_class.read_text

  def read_text(self, *args, **kwargs):
    for folder, (count, action) in list(faults.items()):
      if str(self).startswith(folder + os.sep) and count > 0:
        faults[folder] = (count - 1, action)
        action(self)
    return real_read_text(self, *args, **kwargs)

  monkeypatch.setattr(path_class, "read_text", read_text)
  return faults


def storage_error(path):
  raise OSError(f"503 Service Unavailable reading {path}")


def with_array(state, name, value):
  state = jax.tree.map(lambda x: x, state)
  state["params"][name] = value
  return state


def remove(relative):
  return lambda workdir: os.remove(workdir / relative)


def write(relative, text):
  return lambda workdir: (workdir / relative).write_text(text)


# case: (what the user or the storage did to a workdir holding latest 1, 2 and best 2,
#        the state restored into, what restoring then gives: a step, or an error and
#        words of its message)
CASES = {
  "a missing file inside it": (
    remove("checkpoints/2/state/manifest.ocdbt"),
    state_at(0),
    (CheckpointError, "checkpoints/2 could not be read"),
  ),
  "its checksums file missing": (
    remove("checkpoints/2/integrity/metadata"),
    state_at(0),
    (CheckpointError, "checkpoints/2 could not be read"),
  ),
  "its metadata from another orbax version": (
    write("checkpoints/2/state/_METADATA", '{"format": "from the future"}'),
    state_at(0),
    (CheckpointError, "checkpoints/2 could not be read"),
  ),
  "the grain state missing": (
    lambda workdir: shutil.rmtree(workdir / "checkpoints" / "2" / "data"),
    state_at(0),
    2,
  ),
  "the grain state unreadable": (
    lambda workdir: [
      path.write_text("{not json") for path in (workdir / "checkpoints" / "2" / "data").iterdir()
    ],
    state_at(0),
    2,
  ),
  "an array of another shape (another class count)": (
    None,
    with_array(state_at(0), "b", jnp.zeros((5,))),
    (CheckpointMismatch, "1 array(s) changed shape, e.g. params.b is (4,) there, (5,) here"),
  ),
  "another structure (another backbone)": (
    None,
    with_array(state_at(0), "extra", jnp.zeros((3,))),
    (CheckpointMismatch, "1 array(s) of this run are not in it, e.g. params.extra"),
  ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_checkpoint_that_cannot_be_read_or_does_not_fit_moves_nothing(tmp_path, case):
  change, target, expected = CASES[case]
  checkpoints = Checkpoints(str(tmp_path), keep=2, retry_seconds=0.01)
  save(checkpoints, [1, 2], best=[2])
  if change is not None:
    change(tmp_path)
  if isinstance(expected, int):
    state, step = checkpoints.restore(abstract(target), repair=True)
    assert step == expected and float(state["params"]["b"][0]) == expected
  else:
    error, words = expected
    with pytest.raises(error) as raised:
      checkpoints.restore(abstract(target), repair=True)
    message = str(raised.value)
    assert words in message and "\n" not in message, message
    assert "damaged" not in message and "aside" not in message, message
  checkpoints.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
  assert os.listdir(tmp_path / "best") == ["2"]
  assert not (tmp_path / "damaged").exists() and not (tmp_path / "damaged.json").exists()


def test_a_transient_read_error_is_retried_and_restores_the_newest(tmp_path, failing_reads, caplog):
  checkpoints = Checkpoints(str(tmp_path), keep=2, retry_seconds=0.01)
  save(checkpoints, [1, 2])
  failing_reads[str(tmp_path / "checkpoints" / "2")] = (2, storage_error)
  state, step = checkpoints.restore(abstract(state_at(0)), repair=True)
  assert step == 2 and float(state["params"]["b"][0]) == 2.0
  assert caplog.text.count("503 Service Unavailable") == 2 and "retrying in" in caplog.text
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
  # An error that outlasts the retries stops the restore; nothing is moved.
  failing_reads[str(tmp_path / "checkpoints" / "2")] = (10, storage_error)
  with pytest.raises(CheckpointError, match="503 Service Unavailable .*, 4 attempts"):
    checkpoints.restore(abstract(state_at(0)), repair=True)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
  checkpoints.close()


def test_an_eval_racing_a_trainer_that_deletes_the_checkpoint_scores_the_next_one(
  tmp_path, failing_reads
):
  checkpoints = Checkpoints(str(tmp_path), keep=3)
  save(checkpoints, [1, 2, 3], best=[3])
  # Listed, then deleted by the trainer (its checkpoint rotation) as eval reads it.
  failing_reads[str(tmp_path / "best" / "3")] = (
    1,
    lambda _: shutil.rmtree(tmp_path / "best" / "3"),
  )
  state, step = checkpoints.restore(abstract(state_at(0)), best=True)
  assert step == 3 and float(state["params"]["b"][0]) == 3.0  # checkpoints/3
  failing_reads[str(tmp_path / "checkpoints" / "3")] = (
    1,
    lambda _: shutil.rmtree(tmp_path / "checkpoints" / "3"),
  )
  state, step = checkpoints.restore(abstract(state_at(0)), best=True)
  assert step == 2 and float(state["params"]["b"][0]) == 2.0
  checkpoints.close()


def test_the_best_checkpoint_is_never_moved_even_when_damaged(tmp_path):
  checkpoints = Checkpoints(str(tmp_path), keep=2)
  save(checkpoints, [1, 2], best=[2])
  for folder in ("checkpoints/1", "checkpoints/2", "best/2"):
    flip_a_byte_of_the_array_data(tmp_path / folder)
  with pytest.raises(CheckpointError) as raised:
    checkpoints.restore(abstract(state_at(0)), repair=True)
  message = str(raised.value)
  assert message.count("checksum mismatch") == 3 and "the best one kept" in message
  assert os.listdir(tmp_path / "best") == ["2"]
  assert sorted(os.listdir(tmp_path / "damaged")) == ["checkpoints-1", "checkpoints-2"]
  checkpoints.close()


def test_on_an_object_store_a_damaged_checkpoint_is_recorded_and_deleted(tmp_path):
  """gs:// has no rename: the branch object-store workdirs take, on a local folder."""
  checkpoints = Checkpoints(str(tmp_path), keep=2, renames=False)
  save(checkpoints, [1, 2])
  flip_a_byte_of_the_array_data(tmp_path / "checkpoints" / "2")
  state, step = checkpoints.restore(abstract(state_at(0)), repair=True)
  assert step == 1 and float(state["params"]["b"][0]) == 1.0
  assert os.listdir(tmp_path / "checkpoints") == ["1"] and not (tmp_path / "damaged").exists()
  (entry,) = json.loads((tmp_path / "damaged.json").read_text())
  assert entry["checkpoint"] == str(tmp_path / "checkpoints" / "2") and entry["deleted"]
  assert entry["why"].startswith("checksum mismatch in 1 array(s)")
  save(checkpoints, [2])  # the step can be saved again
  assert checkpoints.latest.all_steps() == [1, 2]
  checkpoints.close()


# The trainer and --mode=eval on real workdirs. ---------------------------------------


def coco_config(root, **overrides):
  """The runs' config (tests/runs.py) on a COCO-layout folder (tests/data_fixtures.py)."""
  config = run_config()
  config.data.update(dict(name="coco2014", root=str(root), train_split="train", eval_split="val"))
  config.batch_size, config.eval_batch_size = 2, 2
  config.update_from_flattened_dict(overrides)
  return config


def make_coco_root(root, categories):
  for split in ("train", "val"):
    make_coco(str(root), split, categories, COCO_IMAGES, COCO_ANNOTATIONS)
  return root


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
  """A COCO run of 2 classes that saved step 2 (latest and best), as training leaves
  it, and a copy of its data whose label file has one more class."""
  root = make_coco_root(tmp_path_factory.mktemp("coco"), COCO_CATEGORIES)
  other_root = make_coco_root(
    tmp_path_factory.mktemp("coco_one_more_class"), [*COCO_CATEGORIES, {"id": 5, "name": "bus"}]
  )
  workdir = tmp_path_factory.mktemp("coco_run")
  config = coco_config(root)
  datasets = create_datasets(config)
  model = create_model(config, len(datasets.class_names))
  optimizer = optim.create_optimizer(config.optim, config.train_steps)
  # Zeros of the trainer's state's shapes: what is checked before restoring is the
  # shapes, and initialising the model for real would only cost time.
  shapes = abstract_state(config, model, optimizer, replicated(create_mesh()))
  state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  checkpoints = Checkpoints(str(workdir))
  batches = datasets.train_from(2)
  checkpoints.save_latest(2, state, batches)
  checkpoints.save_best(2, state, batches, score=50.0, variant="ema")
  checkpoints.wait()
  checkpoints.close()
  batches.close()
  workdir_lib.write_run(str(workdir), config, datasets.class_names)
  workdir_lib.record_saved_step(str(workdir), checkpoints.saved_step)
  return workdir, root, other_root


def files(workdir):
  """{path: modification time} of every file but the lock, which every run takes."""
  return {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file() and p.name != ".lock"}


def remove_run_file(workdir):
  os.remove(workdir / "run.json")


def remove_checkpoints(workdir):
  shutil.rmtree(workdir / "checkpoints")
  shutil.rmtree(workdir / "best")


# case: (what was done to the workdir, the rerun's config changes ("OTHER_ROOT": the
#        copy with one more class), the error and words of its message)
RESUMES = {
  "data.root at a copy with one more class": (
    None,
    {"data.root": "OTHER_ROOT"},
    (WorkdirError, "gives 3 classes where", "records 2 (added ['bus'])"),
  ),
  "run.json missing": (None, {}, (WorkdirError, "no run.json", "--config.trust_workdir=true")),
  "run.json missing, trusted, a copy with one more class": (
    remove_run_file,
    {"data.root": "OTHER_ROOT", "trust_workdir": True},
    (CheckpointMismatch, "does not fit this run", "array(s) changed shape, e.g. params.head"),
  ),
  "run.json missing, trusted, another embedding_dim": (
    remove_run_file,
    {"model.embedding_dim": 64, "trust_workdir": True},
    (CheckpointMismatch, "does not fit this run", "changed shape, e.g. params.head.kmm"),
  ),
  "no checkpoint left, run.json records step 2": (
    remove_checkpoints,
    {},
    (WorkdirError, "records a checkpoint saved at step 2", "to start over on purpose"),
  ),
}
RESUMES["run.json missing"] = (remove_run_file, *RESUMES["run.json missing"][1:])


@pytest.mark.slow
@pytest.mark.parametrize("case", RESUMES)
def test_a_rerun_that_does_not_fit_the_workdir_is_refused_and_changes_nothing(
  tmp_path, coco_run, case
):
  change, overrides, (error, *words) = RESUMES[case]
  saved, root, other_root = coco_run
  workdir = tmp_path / "run"
  shutil.copytree(saved, workdir)
  if change is not None:
    change(workdir)
  before = files(workdir)
  overrides = {k: str(other_root) if v == "OTHER_ROOT" else v for k, v in overrides.items()}
  with pytest.raises(error) as raised:
    train.train_and_evaluate(coco_config(root, **overrides), str(workdir))
  message = str(raised.value)
  assert all(word in message for word in words) and "\n" not in message, message
  assert "damaged" not in message and "aside" not in message, message
  assert files(workdir) == before


@pytest.mark.slow
def test_the_observed_disaster_a_copy_with_one_more_class_is_one_line_and_exit_1(
  tmp_path, coco_run
):
  """Before: every checkpoint, best included, moved to damaged/, 6,435 log lines, and
  the next rerun trained from step 0."""
  saved, root, other_root = coco_run
  workdir = tmp_path / "run"
  shutil.copytree(saved, workdir)
  before = files(workdir)
  flags = (f"--config.{k}={v}" for k, v in flatten(coco_config(other_root)).items())
  last, log = stopped_with_one_sentence(main_command(workdir, *flags))
  assert "records 2 (added ['bus'])" in last and len(log.splitlines()) < 40
  assert files(workdir) == before


def flatten(config):
  """The data and batch fields coco_config sets, as --config flags take them."""
  return {
    "data.name": config.data.name,
    "data.root": config.data.root,
    "data.train_split": config.data.train_split,
    "data.eval_split": config.data.eval_split,
    "batch_size": config.batch_size,
    "eval_batch_size": config.eval_batch_size,
  }


@pytest.mark.slow
def test_eval_scores_the_workdirs_checkpoint_over_init_from_and_checks_run_json(
  tmp_path, reference_run, caplog
):
  """The training command line reused for eval names init_from; before, its weights
  were scored silently. A field that changes what the model computes is refused."""
  workdir = tmp_path / "run"
  shutil.copytree(reference_run, workdir)
  assert json.loads((workdir / "run.json").read_text())["saved_step"] == 6
  (tmp_path / "converted").mkdir()
  for field, value, words in (
    ("data.image_size", 64, "data.image_size (32 -> 64)"),
    ("model.embedding_dim", 64, "model.embedding_dim (128 -> 64)"),
  ):
    config = run_config()
    config.update_from_flattened_dict({field: value})
    with pytest.raises(WorkdirError, match=re.escape(words)):
      inference.evaluate_checkpoint(config, str(workdir))
  config = run_config()
  config.init_from, config.eval_batch_size = str(tmp_path / "converted"), 50
  report = inference.evaluate_checkpoint(config, str(workdir))
  assert report["weights"] == f"{workdir} step 6"
  trained = json.loads((workdir / "summary.json").read_text())
  assert report["map_model"] == pytest.approx(trained["map_model"], abs=0.01)
  assert "not config.init_from" in caplog.text
  assert "config.eval_batch_size=50 differs from the run's 100; scoring with 50" in caplog.text


@pytest.mark.slow
def test_eval_of_a_read_only_workdir_logs_its_results_and_exits_1(tmp_path, reference_run):
  """A read-only mount (in a user and mount namespace of its own): said before scoring,
  the results are logged, and exit 1 says eval.json is not this evaluation's."""
  unshare = shutil.which("unshare")
  if unshare is None or subprocess.run([unshare, "-rm", "true"]).returncode != 0:
    pytest.skip("needs unshare -rm (user and mount namespaces) for a read-only mount")
  workdir = tmp_path / "run"
  shutil.copytree(reference_run, workdir)
  (workdir / "eval.json").write_text('{"from": "an earlier evaluation"}')
  command = " ".join(f"'{arg}'" for arg in main_command(workdir, "--mode=eval"))
  script = f"mount --bind -o ro '{workdir}' '{workdir}' || exit 99; exec {command}"
  result = subprocess.run(
    [unshare, "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  if result.returncode == 99:
    pytest.skip("this sandbox does not allow a read-only bind mount")
  assert result.returncode == 1, result.stderr[-3000:]
  log = result.stderr
  assert "is read-only: the results will be logged" in log
  assert log.index("is read-only") < log.index("class  AP %")  # said before scoring
  last = log.strip().splitlines()[-1]
  assert "The results above were not written to" in last and "Traceback" not in log
  assert (workdir / "eval.json").read_text() == '{"from": "an earlier evaluation"}'


@pytest.mark.slow
@pytest.mark.alone
def test_two_hosts_agree_when_one_of_them_cannot_read_a_checkpoint(tmp_path):
  """Process 1's reads of the newest checkpoint fail once: it retries and both restore
  it. Then they fail on every read: both stop with the same sentence and nothing is
  moved (before, that host called it damaged alone and the processes fell out of step).
  An older checkpoint restores onto another sharding with the values saved."""
  import socket

  with socket.socket() as free:
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
  environment = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}
  processes = [
    subprocess.Popen(
      [
        sys.executable,
        os.path.join(ROOT, "tests", "restore_agreement_run.py"),
        str(process),
        str(port),
        str(tmp_path),
        "1",
      ],
      cwd=ROOT,
      env=environment,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for process in (0, 1)
  ]
  results, logs = [], []
  for process in processes:
    try:
      output, log = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
      for other in processes:
        other.kill()
      pytest.fail("the processes fell out of step (a barrier waited forever)")
    assert process.returncode == 0, log[-3000:]
    results.append(json.loads(output.strip().splitlines()[-1]))
    logs.append(log)
  assert "retrying in" in logs[1] and "retrying in" not in logs[0]
  first, second = results
  assert first["fails_once"]["step"] == second["fails_once"]["step"] == 2
  assert first["fails_once"]["checksums"] == second["fails_once"]["checksums"]
  assert "503 Service Unavailable" in second["fails_always"]["error"]
  assert "checkpoints/2 could not be read (on process 1" in first["fails_always"]["error"]
  for result in results:
    assert result["left"] == ["best", "checkpoints"] and result["checkpoints"] == ["1", "2"]
    # Another sharding (a slice of another size) restores the same values.
    assert result["resharded"] == {"step": 1, "checksums": result["saved_1"]}


def test_a_run_that_fell_back_and_scores_better_at_the_best_step_keeps_the_best(tmp_path):
  """Retraining a step lost to damage can score another mAP than its first pass did
  (other batches, another machine); the best checkpoint of that step is kept, not
  written over (before: orbax refused the save and the run stopped)."""
  checkpoints = Checkpoints(str(tmp_path))
  save(checkpoints, [6], best=[6])
  checkpoints.close()
  resumed = Checkpoints(str(tmp_path))
  assert not resumed.save_best(6, state_at(60), data_iterator(), score=99.0, variant="model")
  resumed.wait()
  state, step = resumed.restore(abstract(state_at(0)), best=True)
  assert step == 6 and float(state["params"]["b"][0]) == 6.0 and resumed.best_score() == 6.0
  resumed.close()
