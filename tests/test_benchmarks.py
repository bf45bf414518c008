"""The benchmark programs run, and the shim that runs the authors' CUDA code on the CPU works."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kmcl_jax.benchmarks import baseline, loss_programs


def run_module(*args):
  result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_loss_benchmark_prints_its_table():
  out = run_module("kmcl_jax.benchmarks.loss", "--sizes=8x3x4,5x2x4", "--repeats=1",
                   "--memory_size=32x3x4")
  rows = [line.split() for line in out.splitlines() if line.startswith(("anisotropic", "isotropic"))]
  assert [(r[0], r[1]) for r in rows] == [("anisotropic", "8"), ("anisotropic", "5"),
                                          ("isotropic", "8"), ("isotropic", "5")]
  assert all(float(r[4]) > 0 for r in rows)
  assert "compiled temporaries, anisotropic B=32 K=3 D=4" in out


@pytest.mark.slow
def test_backbone_benchmark_runs_the_flax_model():
  out = run_module("kmcl_jax.benchmarks.backbone", "--arch=tresnet_tiny", "--batch=2",
                   "--image_size=32", "--repeats=1", "--torch=false")
  rates = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()
           if line.startswith(("forward", "train"))}
  assert set(rates) == {"forward", "train"} and min(rates.values()) > 0


FAKE_BASELINE = '''
import torch
import torch.nn as nn

class KMCL_Loss(nn.Module):
    """Stands in for the authors' class: CUDA-only calls, simple sums as terms."""
    def __init__(self, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-7,
                 disable_torch_grad_focal_loss=False, loss_case="isotropic", loss_opt="all"):
        super().__init__()
        self.loss_case = loss_case

    def forward(self, features, model_output, y):
        zero = torch.tensor(0.0, device="cuda").cuda()
        asl = (model_output["pi"] * y).sum() + zero
        rec = features.pow(2).mean() + torch.zeros(1).cuda()[0]
        con = model_output["mu"].sum() + model_output["var"].mean()
        return asl + rec + con, asl, rec, con
'''


def test_baseline_shim_runs_cuda_code_on_the_cpu(tmp_path):
  pytest.importorskip("torch")
  module_dir = tmp_path / "src" / "loss_functions"
  module_dir.mkdir(parents=True)
  (module_dir / "losses.py").write_text(textwrap.dedent(FAKE_BASELINE))
  inputs = loss_programs.make_inputs(6, 3, 4, "anisotropic")
  with baseline.cuda_is_cpu():
    leaves, terms = baseline.loss_terms(str(tmp_path), "anisotropic", inputs)()
    sum(terms.values()).backward()
  np.testing.assert_allclose(terms["asl"].item(), np.sum(inputs["logits"] * inputs["labels"]),
                             rtol=1e-5)
  np.testing.assert_allclose(terms["reconstruction"].item(), np.mean(inputs["features"] ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(terms["contrastive"].item(),
                             inputs["mu"].sum() + inputs["var"].mean(), rtol=1e-5)
  np.testing.assert_allclose(leaves[1].grad.numpy(), inputs["labels"])  # d asl / d logits
  np.testing.assert_allclose(leaves[2].grad.numpy(), np.ones_like(inputs["mu"]))


def test_missing_baseline_checkout_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="expected a checkout of the authors' repository"):
    baseline.loss_terms(str(tmp_path), "isotropic", loss_programs.make_inputs(2, 2, 2, "isotropic"))


@pytest.mark.slow
def test_data_benchmark_times_grain_and_torch_loaders():
  out = run_module("kmcl_jax.benchmarks.data", "--images=8", "--batch=4", "--batches=2",
                   "--warmup=1", "--workers=0", "--image_size=32", "--repeats=1")
  rows = [line.split() for line in out.splitlines() if line.strip().startswith("0 ")]
  assert len(rows) == 1 and float(rows[0][1]) > 0 and float(rows[0][2]) > 0


def test_compare_without_a_baseline_says_what_it_needs_in_one_sentence():
  result = subprocess.run([sys.executable, "-m", "kmcl_jax.compare"], capture_output=True,
                          text=True)
  assert result.returncode != 0 and result.stdout == ""
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith("kmcl_jax.compare needs --baseline_dir=PATH")
  assert "mahdihosseini/KMCL" in message and message.endswith(").") and ". " not in message


@pytest.mark.slow
def test_compare_loss_reports_both_sides_terms_and_gradient_differences(tmp_path):
  """Against a stand-in whose terms are simple sums: their values and gradients are
  known, so every number of the row can be checked."""
  torch = pytest.importorskip("torch")
  import jax
  import jax.numpy as jnp

  from kmcl_jax import compare, losses

  module_dir = tmp_path / "src" / "loss_functions"
  module_dir.mkdir(parents=True)
  (module_dir / "losses.py").write_text(textwrap.dedent(FAKE_BASELINE))
  result = compare.compare_loss(str(tmp_path), "anisotropic", 6, 3, on_gpu=False, repeats=1)
  inputs = loss_programs.make_inputs(6, 3, compare.FEATURE_DIM, "anisotropic")
  args = [jnp.asarray(inputs[k]) for k in ("features", "logits", "mu", "var", "labels")]
  _, ours = losses.kmcl_loss(*args, kernel="anisotropic")
  theirs = {"asl": np.sum(inputs["logits"] * inputs["labels"]),
            "reconstruction": np.mean(inputs["features"] ** 2),
            "contrastive": inputs["mu"].sum() + inputs["var"].mean()}
  for term, row in result["terms"].items():
    assert row["ours"] == pytest.approx(float(ours[term]), rel=1e-6)
    assert row["theirs"] == pytest.approx(float(theirs[term]), rel=1e-5)
    assert row["value_rel_diff"] == pytest.approx(
        abs(row["ours"] - row["theirs"]) / abs(row["theirs"]), rel=1e-6)
  # d(their ASL)/d logits = labels; ours is the real ASL gradient, a different array.
  grad_logits = jax.grad(lambda l: losses.asl_loss(l, args[4]))(args[1])
  want = np.max(np.abs(np.asarray(grad_logits) - inputs["labels"])) / np.max(inputs["labels"])
  assert result["terms"]["asl"]["grad_rel_diff"] == pytest.approx(float(want), rel=1e-5)
  assert result["ours_ms"] > 0 and result["theirs_ms"] > 0
  assert result["speedup"] == pytest.approx(result["theirs_ms"] / result["ours_ms"])
  del torch


@pytest.mark.slow
def test_scaling_benchmark_reports_memory_collectives_and_time():
  out = run_module("kmcl_jax.benchmarks.scaling", "--simulated_devices=4",
                   "--memory_devices=2,4", "--memory_batches=16", "--classes=3", "--dim=4",
                   "--time_devices=1,4", "--time_batch=8", "--repeats=1")
  lines = out.splitlines()
  memory = [line.split() for line in lines[lines.index(next(l for l in lines if l.startswith(
      "devices  batch"))) + 1:] if line.strip() and line.split()[0].isdigit()][:2]
  assert [(row[0], row[1], row[2]) for row in memory] == [("2", "16", "8"), ("4", "16", "4")]
  for row in memory:
    assert float(row[4]) > 0 and float(row[5]) > 0
    assert row[7] == "(0)", row  # no collective of the split loss sits inside a loop
  times = [line.split() for line in lines[lines.index(next(l for l in lines if l.startswith(
      "devices       ms"))) + 1:]]
  assert [row[0] for row in times] == ["1", "4"] and all(float(row[1]) > 0 for row in times)
  assert float(times[0][2]) == pytest.approx(float(times[1][2]), rel=1e-5)
