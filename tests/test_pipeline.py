"""The grain pipelines: order, sharding, resumption (with other workers, after SIGTERM to
the whole process group), corrupt images, start-up checks, worker processes, absl flags,
data options."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from absl import flags
from data_fixtures import (
  COCO_ANNOTATIONS,
  COCO_CATEGORIES,
  COCO_IMAGES,
  XRAY_ENTRIES,
  cut_short,
  demo_config,
  make_chestxray,
  make_coco,
  make_voc,
  voc_config,
  voc_image,
  write_blank_png,
)
from runs import (
  ROOT,
  assert_trees_close,
  checkpoint_state,
  finish,
  main_command,
  records,
)

from kmcl_jax.data import CorruptImageError, create_datasets, get_source, image_files, pipeline

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True, scope="module")
def absl_flags_parsed():
  """grain 0.2.18 reads an absl flag in the process that starts its worker processes; a
  program parses its flags in absl.app.run, pytest does not, so this module does."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@dataclasses.dataclass(frozen=True)
class IndexSource:
  """Records whose pixels spell their index: channel 0 = index % 256, 1 = index // 256."""

  size: int
  class_names: tuple = ("a", "b", "c")
  name: str = "index source"

  def __len__(self):
    return self.size

  def annotations(self, index):
    return {
      "labels": np.eye(3, dtype=np.float32)[index % 3],
      "ignore": np.arange(3) == (index % 2),
      "id": str(index),
    }

  def __getitem__(self, index):
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0], image[..., 1] = index % 256, index // 256
    return {"image": image, **self.annotations(index)}


def indices(batch):
  return batch["image"][:, 0, 0, 0].astype(int) + 256 * batch["image"][:, 0, 0, 1].astype(int)


def plain(**overrides):
  options = dict(image_size=4, cutout_factor=0.0, augment="none", process_index=0, process_count=1)
  return {**options, **overrides}


def take(dataset, n):
  iterator = iter(dataset)
  batches = [next(iterator) for _ in range(n)]
  iterator.close()
  return batches


def test_train_epochs_are_reshuffled_permutations():
  batches = take(pipeline.train_dataset(IndexSource(20), seed=3, global_batch=4, **plain()), 10)
  order = np.concatenate([indices(b) for b in batches])
  assert sorted(order[:20]) == list(range(20)) and sorted(order[20:]) == list(range(20))
  assert list(order[:20]) != list(order[20:]) and list(order[:20]) != list(range(20))
  for b in batches:
    np.testing.assert_array_equal(b["labels"], np.eye(3)[indices(b) % 3])
    assert b["skipped"].tolist() == [0] * 4
  other_seed = take(pipeline.train_dataset(IndexSource(20), seed=4, global_batch=4, **plain()), 5)
  assert list(np.concatenate([indices(b) for b in other_seed])) != list(order[:20])


def test_two_hosts_read_disjoint_rows_of_the_same_global_batches():
  source = IndexSource(30)
  single = take(pipeline.train_dataset(source, seed=0, global_batch=6, **plain()), 8)
  hosts = [
    take(
      pipeline.train_dataset(
        source, seed=0, global_batch=6, **plain(process_index=p, process_count=2)
      ),
      8,
    )
    for p in (0, 1)
  ]
  for step in range(8):
    host_rows = [indices(hosts[p][step]) for p in (0, 1)]
    assert len(host_rows[0]) == 3 and not set(host_rows[0]) & set(host_rows[1])
    np.testing.assert_array_equal(np.concatenate(host_rows), indices(single[step]))


def test_eval_pads_to_whole_batches_and_counts_every_image_once():
  source = IndexSource(11)
  seen = []
  for p in (0, 1):
    batches = list(
      pipeline.eval_dataset(
        source,
        global_batch=4,
        **{
          k: v
          for k, v in plain(process_index=p, process_count=2).items()
          if k not in ("cutout_factor", "augment")
        },
      )
    )
    assert len(batches) == 3 and all(b["image"].shape == (2, 4, 4, 3) for b in batches)
    for b in batches:
      rows = b["index"][b["mask"]]
      np.testing.assert_array_equal(indices(b)[b["mask"]], rows)
      np.testing.assert_array_equal(b["labels"][b["mask"]], np.eye(3)[rows % 3])
      np.testing.assert_array_equal(b["ignore"][b["mask"]], (rows % 2)[:, None] == np.arange(3))
      assert (b["index"][~b["mask"]] == -1).all()
      seen.extend(rows)
  assert sorted(seen) == list(range(11))


def assert_same_batches(got, expected):
  for name in pipeline.TRAIN_FIELDS:
    np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_the_stream_from_any_step_is_the_tail_of_the_stream_from_zero_for_any_workers_and_hosts():
  """What a resumed run reads: batch b is the same whatever worker count or number of
  hosts the stream is built with, and whichever step it starts at."""
  reference = create_datasets(demo_config())
  assert reference.steps_per_epoch == 500
  assert reference.class_names == tuple("0123456789")
  stream = reference.train_from(0)
  expected = [next(stream) for _ in range(6)]
  stream.close()
  assert expected[0]["image"].shape == (8, 48, 48, 3)
  workers = create_datasets(demo_config(worker_count=2)).train_from(2)
  for batch in expected[2:]:
    assert_same_batches(next(workers), batch)
  workers.close()
  hosts = [
    create_datasets(demo_config(), process_index=p, process_count=2).train_from(4) for p in (0, 1)
  ]
  for batch in expected[4:]:
    got = [next(h) for h in hosts]
    assert_same_batches({k: np.concatenate([g[k] for g in got]) for k in got[0]}, batch)

  # Across epochs (5 batches of 4 of 20 records), and at a step far into a run.
  def global_indices(start, count, process_count):
    hosts = [
      take(
        pipeline.train_dataset(
          IndexSource(20),
          seed=3,
          global_batch=4,
          start_step=start,
          **plain(process_index=p, process_count=process_count),
        ),
        count,
      )
      for p in range(process_count)
    ]
    return [np.concatenate([indices(h[i]) for h in hosts]).tolist() for i in range(count)]

  from_zero = global_indices(0, 10, 1)
  for process_count in (1, 2):
    assert global_indices(7, 3, process_count) == from_zero[7:]
    far = global_indices(10**6 - 1, 3, process_count)
    assert global_indices(10**6, 2, process_count) == far[1:]
    assert sorted(sum(far, [])) != sorted(sum(from_zero[:3], [])) or far != from_zero[:3]
  # Augmentation happened: the records differ from their plainly resized versions.
  plain_batch = take(
    pipeline.train_dataset(
      get_source("demo", "train"), seed=1, global_batch=8, **plain(image_size=48)
    ),
    1,
  )[0]
  np.testing.assert_array_equal(plain_batch["labels"], expected[0]["labels"])
  assert (plain_batch["image"] != expected[0]["image"]).any(axis=(1, 2, 3)).sum() >= 4


@pytest.mark.parametrize("damage", ["truncated", "decompression bomb"])
def test_corrupt_image_raises_by_default_and_is_skipped_and_counted_on_request(tmp_path, damage):
  make_voc(str(tmp_path), corrupt="000007")
  if damage == "decompression bomb":  # 400 million pixels (a PNG, whatever the name says)
    write_blank_png(voc_image(str(tmp_path), "000007"), 20000, 20000)
  strict = create_datasets(voc_config(str(tmp_path))).train_from(0)
  with pytest.raises(CorruptImageError, match=r"000007.jpg: cannot decode the image"):
    for _ in range(4):
      next(strict)
  config = voc_config(str(tmp_path), skip_corrupt=True)
  config.batch_size = 2
  lenient = create_datasets(config).train_from(0)
  batches = [next(lenient) for _ in range(30)]
  lenient.close()
  # 60 rows are 15 epochs of the four images: the corrupt one (the only image labelled
  # 'car' alone) was met 15 times, flagged, and another row of its batch stood in.
  assert sum(int(b["skipped"].sum()) for b in batches) == 15
  car_only = np.eye(20)[6]
  assert not any(np.array_equal(row, car_only) for b in batches for row in b["labels"])
  flagged = [b for b in batches if b["skipped"].any()]
  assert all(np.array_equal(b["image"][0], b["image"][1]) for b in flagged)
  make_voc(str(tmp_path / "test"), corrupt="000002")
  evaluation = list(create_datasets(voc_config(str(tmp_path / "test"), skip_corrupt=True)).eval)
  rows = np.concatenate([b["index"] for b in evaluation])
  mask = np.concatenate([b["mask"] for b in evaluation])
  assert rows.tolist() == [0, 1, 2, -1] and mask.tolist() == [True, False, True, False]
  assert np.concatenate([b["skipped"] for b in evaluation]).tolist() == [0, 1, 0, 0]


def test_batch_sizes_are_checked_against_hosts_and_the_split():
  with pytest.raises(
    ValueError, match=r"config.batch_size=8 must be a positive multiple of .* \(3\)"
  ):
    create_datasets(demo_config(), process_index=0, process_count=3)
  config = demo_config()
  config.batch_size = 5000
  with pytest.raises(ValueError, match="config.batch_size=5000 exceeds the 4000 images"):
    create_datasets(config)


# ---------------------------------------------------------------------- start-up checks


def test_a_broken_evaluation_image_fails_at_start_up_naming_it(tmp_path):
  make_voc(str(tmp_path))
  cut_short(voc_image(str(tmp_path), "000002"), -60)  # the header reads, the scan is cut
  broken = voc_image(str(tmp_path), "000002")
  with pytest.raises(
    CorruptImageError,
    match=(
      rf"^{broken}: the JPEG file is cut short \(no end marker\) \(1 unreadable image\(s\) "
      r"in voc2007 test at .*, found before training; data.skip_corrupt=True"
    ),
  ):
    create_datasets(voc_config(str(tmp_path)))
  lenient = create_datasets(voc_config(str(tmp_path), skip_corrupt=True))
  batches = list(lenient.eval)
  assert np.concatenate([b["mask"] for b in batches]).tolist() == [True, False, True, False]


def test_the_header_check_reads_no_file_of_sources_that_are_not_files():
  assert (
    image_files.check_image_headers(get_source("demo", "test"), skip_corrupt=False, threads=2) == []
  )


# --------------------------------------------------------------------- worker processes


def process_table():
  """{pid: (parent pid, state)} of every process, from /proc."""
  table = {}
  for entry in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{entry}/stat") as f:
        state, parent = f.read().rsplit(")", 1)[1].split()[:2]
    except (OSError, ValueError):
      continue
    table[int(entry)] = (int(parent), state)
  return table


TRAINER_STAND_IN = textwrap.dedent("""
    import time
    from absl import flags
    from data_fixtures import demo_config
    from kmcl_jax.data import create_datasets
    flags.FLAGS.mark_as_parsed()
    train = create_datasets(demo_config(worker_count=2)).train_from(0)
    for _ in range(3):  # batches 0, 1 and 2 come from workers 0, 1 and 0: both run
      next(train)
    print("ready", flush=True)
    time.sleep(600)  # a long step: the workers fill their queues and wait
""")


def test_worker_processes_end_with_a_sigkilled_trainer():
  trainer = subprocess.Popen(
    [sys.executable, "-c", TRAINER_STAND_IN],
    cwd=TESTS,
    stdout=subprocess.PIPE,
    text=True,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  try:
    assert trainer.stdout.readline().strip() == "ready"
    children = [pid for pid, (parent, _) in process_table().items() if parent == trainer.pid]
    workers = [
      pid for pid in children if b"spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read()
    ]
    assert len(workers) == 2, children
  finally:
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline:
    table = process_table()
    alive = [pid for pid in children if pid in table and table[pid][1] != "Z"]
    if not alive:
      break
    time.sleep(0.2)
  for pid in alive:  # a failing run leaves nothing behind either
    os.kill(pid, signal.SIGKILL)
  assert not alive, f"processes {alive} outlived their SIGKILLed parent by 10 s"


def process_group(group):
  """Pids of the live (not zombie) processes of process group `group`, from /proc."""
  members = []
  for entry in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{entry}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[2]) == group and fields[0] != "Z":
      members.append(int(entry))
  return members


def wait_for_train_record(workdir, process, step):
  """Blocks until the run in `workdir` has logged a train step >= `step`; fails (never
  skips) if the run ends first."""
  deadline = time.monotonic() + 600
  while not any(r["step"] >= step for r in train_records(workdir)):
    assert process.poll() is None, f"the run ended (status {process.returncode}) before step {step}"
    assert time.monotonic() < deadline
    time.sleep(0.05)


def train_records(workdir):
  return records(workdir, "train") if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []


def stop_process_group(workdir, worker_count, after_step):
  """Runs the demo run in `workdir` with `worker_count` grain workers in a process group
  of its own, sends SIGTERM to the whole group (as a VM shutdown does) once the run has
  logged `after_step`, and returns the step the run says it stopped at. The run must
  exit 75 (its step saved), and no process of the group may outlive it."""
  run = subprocess.Popen(
    main_command(workdir, f"--config.data.worker_count={worker_count}"),
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  wait_for_train_record(workdir, run, after_step)
  os.killpg(run.pid, signal.SIGTERM)
  _, log = run.communicate(timeout=600)
  assert run.returncode == 75, log[-3000:]
  stopped = int(log.split("Stopped at step ")[1].split(" ")[0])
  assert str(stopped) in os.listdir(workdir / "checkpoints")
  deadline = time.monotonic() + 10
  while process_group(run.pid) and time.monotonic() < deadline:
    time.sleep(0.1)
  survivors = process_group(run.pid)
  for pid in survivors:
    os.kill(pid, signal.SIGKILL)
  assert not survivors, f"processes {survivors} outlived the run by 10 s"
  return stopped


@pytest.mark.slow
def test_sigterm_to_the_process_group_saves_and_a_resume_with_other_workers_is_bit_identical(
  tmp_path, reference_run
):
  """The demo run (6 steps, evaluated after the last) with 2 grain workers, stopped by
  SIGTERM to its whole process group after step 1; resumed with 1 worker and stopped
  again during its final evaluation (the evaluation's workers ignore SIGTERM too, so it
  completes and step 6 is saved); resumed with none, it only evaluates. The batches,
  the parameters and the scores are those of the uninterrupted run, bit for bit."""
  first = stop_process_group(tmp_path, worker_count=2, after_step=1)
  assert first < 6
  assert stop_process_group(tmp_path, worker_count=1, after_step=6) == 6
  assert not (tmp_path / "summary.json").exists()
  finish(
    subprocess.Popen(
      main_command(tmp_path, "--config.data.worker_count=0"),
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
  )
  assert [r["step"] for r in train_records(tmp_path)] == [1, 2, 3, 4, 5, 6]
  assert_trees_close(checkpoint_state(tmp_path, 6), checkpoint_state(reference_run, 6), atol=0)
  summary, reference = (
    json.loads((w / "summary.json").read_text()) for w in (tmp_path, reference_run)
  )
  assert (summary["map_model"], summary["map_ema"]) == (
    reference["map_model"],
    reference["map_ema"],
  )


# --------------------------------------------------------------------------- absl flags

FLAGLESS_PROGRAM = textwrap.dedent("""
    import sys
    import numpy as np
    from absl import flags
    from data_fixtures import demo_config
    from kmcl_jax.data import create_datasets
    in_process = create_datasets(demo_config(worker_count=0)).train_from(0)
    first = next(in_process)
    assert not flags.FLAGS.is_parsed(), "kmcl_jax.data parsed or marked the absl flags"
    flags.FLAGS(sys.argv[:1])  # what absl.app.run does for a program without flags
    with_worker = create_datasets(demo_config(worker_count=1)).train_from(0)
    np.testing.assert_array_equal(next(with_worker)["image"], first["image"])
    with_worker.close()
    print("same batches")
""")


def test_the_data_package_leaves_absl_flags_to_the_program():
  result = subprocess.run(
    [sys.executable, "-c", FLAGLESS_PROGRAM],
    cwd=TESTS,
    capture_output=True,
    text=True,
    env={**os.environ, "PYTHONPATH": ROOT},
    timeout=300,
  )
  assert result.stdout.strip() == "same batches", result.stderr[-3000:]
  data_package = os.path.join(ROOT, "kmcl_jax", "data")
  for name in sorted(os.listdir(data_package)):
    if name.endswith(".py"):
      with open(os.path.join(data_package, name)) as f:
        code = f.read()
      assert not re.search(
        r"^\s*(from absl import .*\bflags\b|import absl\.flags)", code, re.MULTILINE
      ), name


# ------------------------------------------------------------------------ configuration


def test_device_augmentation_leaves_the_host_only_resizing():
  device = create_datasets(demo_config(augment_on="device")).train_from(0)
  batches = [next(device) for _ in range(2)]
  device.close()
  resized = take(
    pipeline.train_dataset(
      get_source("demo", "train"), seed=1, global_batch=8, **plain(image_size=48)
    ),
    2,
  )
  for got, expected in zip(batches, resized, strict=True):
    for name in pipeline.TRAIN_FIELDS:
      np.testing.assert_array_equal(got[name], expected[name])


def test_data_options_are_checked_before_anything_is_read(tmp_path):
  errors = {
    (("augment_on", "gpu"),): (
      r"config.data.augment_on='gpu': expected one of "
      r"\('host', 'device'\)"
    ),
    (("augment_on", "device"), ("augment", "affine")): r"config.data.augment='affine' needs "
    r"augment_on='host'",
    (("subset_ids", "ids.csv"),): r"config.data.subset_ids applies to the coco2014 train "
    r"split only, not 'demo'",
    (("drop_no_finding", True),): "config.data.drop_no_finding applies to chestxray14 only",
    (("train_fraction", 0.1),): r"config.data.train_fraction=0.1 applies to chestxray14 only",
    (("name", "chestxray14"), ("eval_fraction", 0.0)): r"config.data.eval_fraction=0.0: "
    r"expected a fraction in \(0, 1\]",
  }
  for fields, message in errors.items():
    with pytest.raises(ValueError, match=message):
      create_datasets(demo_config(**dict(fields)))


def test_the_reference_protocols_through_the_config(tmp_path):
  names = list(XRAY_ENTRIES)
  os.makedirs(tmp_path / "xray")
  make_chestxray(str(tmp_path / "xray"), XRAY_ENTRIES, names[:8], names[8:])
  config = voc_config(
    str(tmp_path / "xray"),
    name="chestxray14",
    train_split="train_val",
    eval_split="test",
    augment="affine",
    drop_no_finding=True,
    train_fraction=0.5,
    eval_fraction=0.5,
  )
  datasets = create_datasets(config)
  # train: 5 of 8 with findings, the first int(2.5); test: 2 of 3, the first int(1.0).
  assert (datasets.num_train, datasets.num_eval) == (2, 1)
  make_coco(str(tmp_path / "coco"), "train", COCO_CATEGORIES, COCO_IMAGES, COCO_ANNOTATIONS)
  make_coco(str(tmp_path / "coco"), "val", COCO_CATEGORIES, COCO_IMAGES, COCO_ANNOTATIONS)
  (tmp_path / "ids.csv").write_text("61\n17\n")
  config = voc_config(
    str(tmp_path / "coco"),
    name="coco2014",
    train_split="train",
    eval_split="val",
    subset_ids=str(tmp_path / "ids.csv"),
  )
  datasets = create_datasets(config)
  assert (datasets.num_train, datasets.num_eval) == (2, 4)  # the subset is for training only
  assert datasets.class_names == ("person", "car")
