"""Whole runs side by side (`python -m kmcl_jax.compare --run`): that the check passes
when both sides compute the same thing, fails when one side is changed on purpose, and
refuses bad input with one sentence.

CI has no checkout of the authors' repository: there "theirs" is a stand-in written here
from the method's description (ASL-only mode: timm's backbone, their projection and pi
head, L_asl), which runs the whole machinery (their side's recipe, the shared batches,
evaluation of both sides and both EMAs, the verdict, the JSON and the plot). The tests
against their real code run where KMCL_BASELINE_DIR names a checkout.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from data_fixtures import make_voc
from runs import ROOT

REAL_BASELINE = os.environ.get("KMCL_BASELINE_DIR")
needs_real_baseline = pytest.mark.skipif(
  not REAL_BASELINE, reason="KMCL_BASELINE_DIR (a checkout of mahdihosseini/KMCL) is not set"
)

STAND_IN_MODEL = '''
from torch import nn


class KMCL(nn.Module):
    """The KMCL wrapper in ASL-only mode as the method describes it: the backbone's pooled
    features, a 1x1 Conv1d projection to 128, a linear pi head; their parameter names."""

    def __init__(self, model, dim, out_classes, args):
        super().__init__()
        assert args.loss_opt == "ASLOnly" and args.loss_case == "anisotropic"
        self.encoder = model
        self.downsampler = nn.Conv1d(dim, 128, 1)
        self.kmm = nn.Module()
        self.kmm.pi = nn.Linear(128, out_classes)

    def forward(self, x):
        features = self.downsampler(self.encoder(x).unsqueeze(-1)).squeeze(-1)
        return None, {"pi": self.kmm.pi(features), "mu": None, "var": None}
'''

STAND_IN_LOSS = '''
import torch
from torch import nn


class KMCL_Loss(nn.Module):
    """L_asl as the method defines it (a sum; no gradient through the focusing weight),
    the total scaled by ASL_WEIGHT."""

    def __init__(self, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-7,
                 disable_torch_grad_focal_loss=False, loss_case="isotropic", loss_opt="all"):
        super().__init__()
        assert loss_opt == "ASLOnly"
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.temp = 0.17

    def forward(self, features, model_output, y):
        p = torch.sigmoid(model_output["pi"])
        pn = torch.clamp(1 - p + self.clip, max=1)
        likelihood = y * torch.log(p.clamp(min=self.eps)) + (1 - y) * torch.log(
            pn.clamp(min=self.eps))
        with torch.no_grad():
            pt = p * y + pn * (1 - y)
            w = torch.pow(1 - pt, self.gamma_pos * y + self.gamma_neg * (1 - y))
        asl = -(likelihood * w).sum()
        zero = torch.tensor(0.0, device="cuda")  # CUDA-only, as theirs: the CPU shim runs it
        return ASL_WEIGHT * asl, asl, zero, zero
'''


def write_stand_in(directory, asl_weight=1.0):
  """A stand-in checkout: Kmcl_Class.py and src/loss_functions/losses.py."""
  (directory / "src" / "loss_functions").mkdir(parents=True)
  (directory / "Kmcl_Class.py").write_text(textwrap.dedent(STAND_IN_MODEL))
  loss = textwrap.dedent(STAND_IN_LOSS).replace("ASL_WEIGHT", repr(asl_weight))
  (directory / "src" / "loss_functions" / "losses.py").write_text(loss)
  return directory


# Six steps at 32 px (configs/demo.py:smoke), evaluated once at the end.
SMOKE = ["--config=configs/demo.py:smoke", "--config.data.worker_count=0"]
ASL_ONLY = ["--config.model.mode=asl_only"]  # what the stand-in computes


def tiny_voc_flags(root):
  """The smoke run on a VOC layout of 4 training and 3 test images (data_fixtures), batch 4:
  little besides compilation."""
  return [
    "--config.data.name=voc2007",
    f"--config.data.root={make_voc(str(root))}",
    "--config.data.train_split=trainval",
    "--config.data.eval_split=test",
    "--config.batch_size=4",
    "--config.eval_batch_size=4",
    "--config.eval_every_epochs=100",  # 1 step per epoch: evaluate after the last step only
  ]


def compare_run(baseline_dir, json_path, *flags):
  """`python -m kmcl_jax.compare --run` (exit status, output) and its JSON record."""
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "kmcl_jax.compare",
      "--run",
      f"--baseline_dir={baseline_dir}",
      f"--json={json_path}",
      *SMOKE,
      *flags,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  record = json.loads(json_path.read_text()) if json_path.exists() else None
  return result, record


@pytest.mark.slow
def test_a_whole_run_agrees_with_a_stand_in_that_computes_the_same(tmp_path):
  pytest.importorskip("timm")
  baseline = write_stand_in(tmp_path / "baseline")
  result, record = compare_run(
    baseline, tmp_path / "run.json", *tiny_voc_flags(tmp_path / "voc"), *ASL_ONLY
  )
  assert result.returncode == 0, result.stderr[-3000:]
  agreement = record["agreement"]
  assert agreement["agree"] and agreement["first_steps_agree"] and agreement["final_map_agree"]
  assert agreement["first_steps"] == 6 and agreement["first_steps_max_rel_diff"] < 1e-4
  assert [s["step"] for s in record["steps"]] == list(range(1, 7))
  for step in record["steps"]:
    assert set(step) == {"step", "ours", "theirs", "seed_b"}
    assert set(step["theirs"]) == {"loss", "asl", "reconstruction", "contrastive"}
    # ASL-only: the total is the ASL term (balanced to the recipe's batch, 64 / 4).
    assert step["theirs"]["loss"] == pytest.approx(step["theirs"]["asl"], rel=1e-6)
    assert step["theirs"]["contrastive"] == step["ours"]["contrastive"] == 0
  # Seed B starts elsewhere and sees other batches: its first loss differs.
  first = record["steps"][0]
  assert abs(first["seed_b"]["loss"] - first["ours"]["loss"]) > 1e-2 * first["ours"]["loss"]
  (final,) = record["evals"]
  assert final["step"] == 6
  for run in ("ours", "theirs", "seed_b"):
    assert 0 < final[run]["map"] <= 100 and 0 < final[run]["map_ema"] <= 100
  # The same weights and the same batches: the same scores, to float32 rounding.
  assert final["ours"]["map"] == pytest.approx(final["theirs"]["map"], abs=0.05)
  assert final["ours"]["map_ema"] == pytest.approx(final["theirs"]["map_ema"], abs=0.05)
  assert agreement["final_map_diff"] == pytest.approx(
    abs(max(final["ours"].values()) - max(final["theirs"].values()))
  )
  assert min(record["wall_seconds"].values()) > 0
  assert (tmp_path / "run.png").stat().st_size > 10_000
  assert "AGREE:" in result.stdout and "ours, seed B" in result.stdout


@pytest.mark.slow
def test_a_changed_loss_weight_on_their_side_fails_the_first_steps_check(tmp_path):
  """Their total with L_asl weighted 1.5 instead of 1: the losses differ from the first
  step, the first-steps check says so and the program exits non-zero."""
  pytest.importorskip("timm")
  baseline = write_stand_in(tmp_path / "baseline", asl_weight=1.5)
  result, record = compare_run(
    baseline, tmp_path / "run.json", *tiny_voc_flags(tmp_path / "voc"), *ASL_ONLY
  )
  assert result.returncode == 1, result.stderr[-3000:]
  agreement = record["agreement"]
  assert not agreement["agree"] and not agreement["first_steps_agree"]
  # The ASL sum enters ours balanced x16 (64 / 4 images); theirs as 1.5 + 15 times it.
  first = record["steps"][0]
  assert first["theirs"]["loss"] == pytest.approx(16.5 / 16 * first["ours"]["loss"], rel=1e-5)
  assert agreement["first_steps_max_rel_diff"] >= 0.5 / 16.5 * 0.99
  assert "DISAGREE:" in result.stdout and "EXCEEDED" in result.stdout


def test_a_checkout_without_their_files_is_named_in_one_sentence(tmp_path):
  (tmp_path / "Kmcl_Class.py").write_text("")
  result = subprocess.run(
    [sys.executable, "-m", "kmcl_jax.compare", "--run", f"--baseline_dir={tmp_path}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert result.returncode != 0 and result.stdout == ""
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith(f"--baseline_dir='{tmp_path}' has no src/loss_functions/losses.py")
  assert "mahdihosseini/KMCL" in message and message.endswith(").") and ". " not in message


@pytest.mark.parametrize("package", ["torch", "timm"])
def test_missing_torch_or_timm_says_what_to_install(tmp_path, monkeypatch, package):
  from kmcl_jax.compare import theirs

  write_stand_in(tmp_path)
  monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
  with pytest.raises(SystemExit, match=rf"needs {package}: install it with pip install -e"):
    theirs.check_baseline(str(tmp_path))


def test_the_verdict_needs_both_checks():
  """The rule on made-up records: the loss check over the first steps, the final mAP
  against max(2 x seed spread, floor)."""
  from kmcl_jax.compare.run import agreement

  def records(their_loss, their_map, seed_b_map):
    steps = [
      {"step": i, "ours": {"loss": 10.0}, "theirs": {"loss": their_loss if i == 2 else 10.0}}
      for i in range(1, 5)
    ]
    final = {
      "ours": {"map": 90.0, "map_ema": 89.0},
      "theirs": {"map": their_map, "map_ema": 0.0},
      "seed_b": {"map": seed_b_map, "map_ema": 0.0},
    }
    return steps, [final]

  verdict = agreement(*records(10.001, 89.0, 90.2), 3, 1e-3, 0.5)
  assert verdict["first_steps_max_rel_diff"] == pytest.approx(1e-4, rel=1e-3)
  assert verdict["seed_spread"] == pytest.approx(0.2) and verdict["final_map_bound"] == 0.5
  assert verdict["final_map_diff"] == pytest.approx(1.0) and not verdict["final_map_agree"]
  assert not verdict["agree"] and verdict["first_steps_agree"]
  # A larger seed spread widens the bound to twice it.
  verdict = agreement(*records(10.001, 89.0, 89.4), 3, 1e-3, 0.5)
  assert verdict["final_map_bound"] == pytest.approx(1.2) and verdict["agree"]
  # The loss check: over the first steps only; a NaN loss fails it.
  assert not agreement(*records(10.1, 90.0, 90.0), 3, 1e-3, 0.5)["agree"]
  assert agreement(*records(10.1, 90.0, 90.0), 1, 1e-3, 0.5)["agree"]
  assert not agreement(*records(float("nan"), 90.0, 90.0), 3, 1e-3, 0.5)["agree"]
  # In the training precision only the mAP check applies.
  verdict = agreement(*records(10.1, 90.0, 90.0), 3, 1e-3, 0.5, check_losses=False)
  assert verdict["agree"] and verdict["first_steps_agree"] is None


@needs_real_baseline
@pytest.mark.slow
def test_their_code_agrees_on_the_first_steps(tmp_path):
  result, record = compare_run(
    REAL_BASELINE, tmp_path / "run.json", *tiny_voc_flags(tmp_path / "voc")
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert record["agreement"]["first_steps_agree"]
  assert record["agreement"]["first_steps_max_rel_diff"] < 1e-4


@needs_real_baseline
@pytest.mark.slow
def test_their_code_with_a_changed_loss_weight_disagrees(tmp_path):
  """Their losses.py with the contrastive term weighted 1.5 in their total."""
  changed = tmp_path / "KMCL"
  (changed / "src" / "loss_functions").mkdir(parents=True)
  shutil.copy(os.path.join(REAL_BASELINE, "Kmcl_Class.py"), changed / "Kmcl_Class.py")
  source = open(os.path.join(REAL_BASELINE, "src", "loss_functions", "losses.py")).read()
  total = "loss = ASLLoss + NLLLoss + BDLoss\n"
  assert source.count(total) == 1
  (changed / "src" / "loss_functions" / "losses.py").write_text(
    source.replace(total, "loss = ASLLoss + NLLLoss + 1.5 * BDLoss\n")
  )
  result, record = compare_run(changed, tmp_path / "run.json", *tiny_voc_flags(tmp_path / "voc"))
  assert result.returncode == 1, result.stderr[-3000:]
  assert not record["agreement"]["agree"] and not record["agreement"]["first_steps_agree"]
