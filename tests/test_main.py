"""The program's contract with a shell or a scheduler: exit codes, and one sentence for a
bad input (the traceback only when asked for, or for a bug)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*flags):
  return subprocess.run(
    [sys.executable, "-m", "kmcl_jax.main", *flags],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_a_bad_input_ends_with_its_one_sentence_and_exit_code_1(tmp_path):
  result = run_main(
    "--config=configs/voc.py",
    f"--workdir={tmp_path}",
    f"--config.data.root={tmp_path}/no_such_folder",
    "--config.init_from=scratch",
  )
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert "voc2007: dataset folder" in last and "no_such_folder" in last
  assert "does not exist; expected" in last


def test_verbosity_1_shows_the_traceback_of_the_same_error(tmp_path):
  result = run_main(
    "--config=configs/voc.py",
    f"--workdir={tmp_path}",
    f"--config.data.root={tmp_path}/no_such_folder",
    "--config.init_from=scratch",
    "--verbosity=1",
  )
  assert result.returncode == 1
  assert "Traceback" in result.stderr and "FileNotFoundError" in result.stderr


def test_a_bad_config_value_is_named(tmp_path):
  result = run_main(
    "--config=configs/demo.py:smoke", f"--workdir={tmp_path}", "--config.keep_checkpoints=0"
  )
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert (
    result.stderr.strip()
    .splitlines()[-1]
    .endswith("config.keep_checkpoints=0: expected a positive integer.")
  )


def test_a_paper_config_without_initial_weights_says_how_to_get_them(tmp_path):
  result = run_main(
    "--config=configs/coco.py:tresnet_l_v2",
    f"--workdir={tmp_path}",
    f"--config.data.root={tmp_path}",
  )
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert (
    result.stderr.strip()
    .splitlines()[-1]
    .endswith(
      "config.init_from is empty: the coco2014 recipe starts from an ImageNet tresnet_l_v2; "
      "convert one with `python -m kmcl_jax.convert --src=WEIGHTS.pth --arch=tresnet_l_v2 "
      "--dst=DIR` and pass --config.init_from=DIR, or pass --config.init_from=scratch to "
      "train from random weights on purpose."
    )
  )
