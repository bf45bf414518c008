"""Checkpoints: retention, checksums, fallback to an intact checkpoint, saves in flight,
refusal of non-finite state. Small pytrees stand in for the train state."""

import json
import os
import threading

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kmcl_jax import checkpointing
from kmcl_jax.checkpointing import CheckpointError, Checkpoints


def state_at(step):
  """A small state whose values depend on the step (w large enough to be stored apart
  from the checkpoint's index)."""
  return {
    "step": jnp.asarray(step, jnp.int32),
    "params": {
      "w": jnp.arange(64 * 64, dtype=jnp.float32).reshape(64, 64) * step,
      "b": jnp.full((4,), float(step)),
    },
  }


def abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def data_iterator():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def save(checkpoints, steps, *, best=()):
  iterator = data_iterator()
  for step in steps:
    next(iterator)
    checkpoints.save_latest(step, state_at(step), iterator)
    if step in best:
      checkpoints.save_best(step, state_at(step), iterator, score=float(step), variant="ema")
  checkpoints.wait()


def flip_a_byte_of_the_array_data(checkpoint):
  """Flips one bit in the middle of the biggest data file of a checkpoint's state."""
  folder = os.path.join(checkpoint, "state", "ocdbt.process_0", "d")
  files = [os.path.join(folder, name) for name in os.listdir(folder)]
  largest = max(files, key=os.path.getsize)
  data = bytearray(open(largest, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(largest, "wb").write(bytes(data))


def test_keeps_the_latest_n_and_restores_the_newest_with_the_data_position_saved(tmp_path):
  checkpoints = Checkpoints(str(tmp_path), keep=2)
  save(checkpoints, [1, 2, 3])
  assert checkpoints.latest.all_steps() == [2, 3]
  state, step = checkpoints.restore(abstract(state_at(0)))
  assert step == 3 and float(state["params"]["b"][0]) == 3.0
  # The grain iterator's position is saved with it (three elements consumed by step 3),
  # though restoring takes the input position from the step.
  (saved,) = (tmp_path / "checkpoints" / "3" / "data").glob("*.json")
  assert json.loads(saved.read_text())["next_index"] == 3
  checkpoints.close()


def test_flipped_bytes_are_caught_by_the_checksums_and_the_one_before_is_restored(tmp_path):
  checkpoints = Checkpoints(str(tmp_path), keep=2)
  save(checkpoints, [1, 2])
  flip_a_byte_of_the_array_data(tmp_path / "checkpoints" / "2")
  state, step = checkpoints.restore(abstract(state_at(0)), repair=True)
  assert step == 1
  np.testing.assert_array_equal(state["params"]["w"], state_at(1)["params"]["w"])
  # Moved aside, so that step 2 can be saved again when training gets there.
  assert checkpoints.latest.all_steps() == [1]
  assert os.listdir(tmp_path / "damaged") == ["checkpoints-2"]
  (entry,) = json.loads((tmp_path / "damaged.json").read_text())
  assert entry["moved_to"] == str(tmp_path / "damaged" / "checkpoints-2")
  assert entry["why"].startswith("checksum mismatch in 1 array(s)")
  save(checkpoints, [2])
  assert checkpoints.latest.all_steps() == [1, 2]
  checkpoints.close()


def test_checksums_name_the_changed_array(tmp_path):
  checkpoints = Checkpoints(str(tmp_path), keep=1)
  save(checkpoints, [5])
  flip_a_byte_of_the_array_data(tmp_path / "checkpoints" / "5")
  with pytest.raises(CheckpointError) as error:
    checkpoints.restore(abstract(state_at(0)))
  message = str(error.value)
  assert "checksum mismatch in 1 array(s)" in message and "['params']['w']" in message
  assert message.startswith(f"Every checkpoint of {tmp_path} is damaged")
  checkpoints.close()


def test_when_every_latest_checkpoint_is_damaged_the_best_one_is_restored(tmp_path):
  checkpoints = Checkpoints(str(tmp_path), keep=2)
  save(checkpoints, [1, 2, 3], best=[2])
  for step in ("2", "3"):
    flip_a_byte_of_the_array_data(tmp_path / "checkpoints" / step)
  state, step = checkpoints.restore(abstract(state_at(0)))
  assert step == 2 and float(state["params"]["b"][0]) == 2.0
  assert checkpoints.best_score() == 2.0 and checkpoints.best_variant() == "ema"
  checkpoints.close()


def test_no_intact_checkpoint_is_one_sentence_naming_each(tmp_path):
  checkpoints = Checkpoints(str(tmp_path), keep=2)
  save(checkpoints, [1, 2])
  for step in ("1", "2"):
    flip_a_byte_of_the_array_data(tmp_path / "checkpoints" / step)
  with pytest.raises(CheckpointError) as error:
    checkpoints.restore(abstract(state_at(0)))
  message = str(error.value)
  assert message.count("checksum mismatch") == 2
  assert f"{tmp_path}/checkpoints/2 (" in message and f"{tmp_path}/checkpoints/1 (" in message
  assert "\n" not in message and "aside" not in message
  checkpoints.close()


def test_an_empty_workdir_restores_nothing(tmp_path):
  checkpoints = Checkpoints(str(tmp_path))
  assert checkpoints.restore(abstract(state_at(0))) is None
  checkpoints.close()


def test_a_state_with_a_non_finite_value_is_never_saved(tmp_path):
  checkpoints = Checkpoints(str(tmp_path))
  state = state_at(1)
  state["params"]["b"] = state["params"]["b"].at[2].set(jnp.inf)
  with pytest.raises(CheckpointError, match="Refusing to save step 1 .* non-finite values"):
    checkpoints.save_latest(1, state, data_iterator())
  assert checkpoints.latest.all_steps() == []
  checkpoints.close()


def test_a_restored_state_with_a_non_finite_value_is_refused(tmp_path, monkeypatch):
  """What a checkpoint written by other code (or before the save check) could hold."""
  checkpoints = Checkpoints(str(tmp_path))
  state = state_at(1)
  state["params"]["b"] = state["params"]["b"].at[0].set(jnp.nan)
  real_integrity = checkpointing.integrity
  monkeypatch.setattr(
    checkpointing, "integrity", lambda s: (True, real_integrity(s)[1])
  )  # the save's check fooled
  checkpoints.save_latest(1, state, data_iterator())
  checkpoints.wait()
  monkeypatch.setattr(checkpointing, "integrity", real_integrity)
  with pytest.raises(CheckpointError, match="it holds non-finite values"):
    checkpoints.restore(abstract(state_at(0)))
  checkpoints.close()


def test_the_best_score_is_known_while_the_best_save_is_still_being_written(tmp_path, monkeypatch):
  """The second evaluation of a run can come while the first best save is in flight
  (seconds for a large state on a bucket); orbax then counts the step but has no
  metrics on disk for it yet."""
  real_finalize = ocp.CheckpointManager._finalize
  release = threading.Event()

  def slow_finalize(self, *args, **kwargs):
    release.wait(timeout=30)
    return real_finalize(self, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "_finalize", slow_finalize)
  checkpoints = Checkpoints(str(tmp_path))
  iterator = data_iterator()
  assert checkpoints.save_best(3, state_at(3), iterator, score=40.0, variant="model")
  assert checkpoints.best_score() == 40.0  # in flight: not on disk yet
  threading.Timer(0.5, release.set).start()
  assert not checkpoints.save_best(6, state_at(6), iterator, score=35.0, variant="ema")
  assert checkpoints.save_best(9, state_at(9), iterator, score=45.0, variant="ema")
  checkpoints.wait()
  assert checkpoints.best.all_steps() == [9]
  assert (checkpoints.best_score(), checkpoints.best_variant()) == (45.0, "ema")
  checkpoints.close()
  reopened = Checkpoints(str(tmp_path))
  assert (reopened.best_score(), reopened.best_variant()) == (45.0, "ema")
  reopened.close()


def test_checksums_are_of_the_bits_and_change_with_any_byte():
  x = np.arange(1000, dtype=np.float32)
  _, sums = checkpointing.integrity({"x": x})
  y = x.copy()
  y.view(np.uint8)[1234] ^= 1
  assert checkpointing.integrity({"x": y})[1] != sums
  swapped = x.copy()
  swapped[[10, 11]] = swapped[[11, 10]]
  assert checkpointing.integrity({"x": swapped})[1] != sums
  # The sum mod 2^32, computed here in NumPy, is what the device computes.
  bits = x.view(np.uint32).astype(np.uint64)
  weights = 2 * np.arange(1000, dtype=np.uint64) + 1
  assert sums == {"['x']": int(np.sum(bits * weights) % 2**32)}
