"""The benchmark programs run, and the shim that runs the authors' CUDA code on the CPU works."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kmcl_jax.benchmarks import loss as loss_benchmark


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
  inputs = loss_benchmark.make_inputs(6, 3, 4, "anisotropic")
  seconds, terms = loss_benchmark.run_baseline(inputs, "anisotropic", 1, str(tmp_path))
  assert seconds > 0
  np.testing.assert_allclose(terms["asl"], np.sum(inputs["logits"] * inputs["labels"]), rtol=1e-5)
  np.testing.assert_allclose(terms["reconstruction"], np.mean(inputs["features"] ** 2), rtol=1e-5)
  np.testing.assert_allclose(terms["contrastive"],
                             inputs["mu"].sum() + inputs["var"].mean(), rtol=1e-5)


def test_missing_baseline_checkout_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="expected a checkout of the authors' repository"):
    loss_benchmark.run_baseline(loss_benchmark.make_inputs(2, 2, 2, "isotropic"), "isotropic", 1,
                                str(tmp_path))


def test_data_benchmark_times_grain_and_torch_loaders():
  out = run_module("kmcl_jax.benchmarks.data", "--images=8", "--batch=4", "--batches=2",
                   "--warmup=1", "--workers=0", "--image_size=32", "--repeats=1")
  rows = [line.split() for line in out.splitlines() if line.strip().startswith("0 ")]
  assert len(rows) == 1 and float(rows[0][1]) > 0 and float(rows[0][2]) > 0
