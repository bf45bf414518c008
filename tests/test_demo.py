"""The README's first command: the demo trains to a test mAP above 90."""

import json
import subprocess
import sys

import pytest
from runs import ROOT, finish


@pytest.mark.slow
def test_the_readme_demo_command_reaches_a_test_map_above_90(tmp_path):
  readme = open(f"{ROOT}/README.md").read()
  command = "python -m kmcl_jax.main --config=configs/demo.py --workdir=/tmp/kmcl_demo"
  assert command in readme  # the command this test runs is the one users copy
  finish(
    subprocess.Popen(
      [sys.executable, "-m", "kmcl_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path}"],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    ),
    timeout=1800,
  )
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["map"] >= 90, summary
  assert summary["map_model"] >= 90 and summary["map_ema"] >= 90, summary
  assert summary["skipped_steps"] == 0 and summary["steps"] == 744, summary
