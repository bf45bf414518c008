"""The benchmark programs run, and the shim that runs the authors' CUDA code on the CPU works."""

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from kmcl_jax.benchmarks import baseline, loss_programs


def run_module(*args):
  result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_loss_benchmark_prints_its_table():
  out = run_module(
    "kmcl_jax.benchmarks.loss", "--sizes=8x3x4,5x2x4", "--repeats=1", "--memory_size=32x3x4"
  )
  rows = [
    line.split() for line in out.splitlines() if line.startswith(("anisotropic", "isotropic"))
  ]
  assert [(r[0], r[1]) for r in rows] == [
    ("anisotropic", "8"),
    ("anisotropic", "5"),
    ("isotropic", "8"),
    ("isotropic", "5"),
  ]
  assert all(float(r[4]) > 0 for r in rows)
  assert "compiled temporaries, anisotropic B=32 K=3 D=4" in out


@pytest.mark.slow
def test_backbone_benchmark_runs_the_flax_model():
  out = run_module(
    "kmcl_jax.benchmarks.backbone",
    "--arch=tresnet_tiny",
    "--batch=2",
    "--image_size=32",
    "--repeats=1",
    "--torch=false",
  )
  rates = {
    line.split()[0]: float(line.split()[1])
    for line in out.splitlines()
    if line.startswith(("forward", "train"))
  }
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


def write_fake_baseline(directory):
  module_dir = directory / "src" / "loss_functions"
  module_dir.mkdir(parents=True)
  (module_dir / "losses.py").write_text(textwrap.dedent(FAKE_BASELINE))


def test_baseline_shim_runs_cuda_code_on_the_cpu(tmp_path):
  pytest.importorskip("torch")
  write_fake_baseline(tmp_path)
  inputs = loss_programs.make_inputs(6, 3, 4, "anisotropic")
  with baseline.cuda_is_cpu():
    leaves, terms = baseline.loss_terms(str(tmp_path), "anisotropic", inputs)()
    sum(terms.values()).backward()
  np.testing.assert_allclose(
    terms["asl"].item(), np.sum(inputs["pi"] * inputs["labels"]), rtol=1e-5
  )
  np.testing.assert_allclose(
    terms["reconstruction"].item(), np.mean(inputs["features"] ** 2), rtol=1e-5
  )
  np.testing.assert_allclose(
    terms["contrastive"].item(), inputs["mu"].sum() + inputs["var"].mean(), rtol=1e-5
  )
  np.testing.assert_allclose(leaves[1].grad.numpy(), inputs["labels"])  # d asl / d pi
  np.testing.assert_allclose(leaves[2].grad.numpy(), np.ones_like(inputs["mu"]))


def test_missing_baseline_checkout_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="expected a checkout of the authors' repository"):
    baseline.loss_terms(str(tmp_path), "isotropic", loss_programs.make_inputs(2, 2, 2, "isotropic"))


@pytest.mark.slow
def test_data_benchmark_times_grain_and_torch_loaders():
  out = run_module(
    "kmcl_jax.benchmarks.data",
    "--images=8",
    "--batch=4",
    "--batches=2",
    "--warmup=1",
    "--workers=0",
    "--image_size=32",
    "--repeats=1",
  )
  rows = [line.split() for line in out.splitlines() if line.strip().startswith("0 ")]
  assert len(rows) == 1 and float(rows[0][1]) > 0 and float(rows[0][2]) > 0


def test_compare_without_a_baseline_says_what_it_needs_in_one_sentence():
  result = subprocess.run(
    [sys.executable, "-m", "kmcl_jax.compare"], capture_output=True, text=True
  )
  assert result.returncode != 0 and result.stdout == ""
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith("kmcl_jax.compare needs --baseline_dir=PATH")
  assert "mahdihosseini/KMCL" in message and message.endswith(").") and ". " not in message


@pytest.mark.slow
def test_loss_parity_reports_both_sides_terms_and_gradient_differences(tmp_path):
  """Against a stand-in whose terms are simple sums: their values and gradients are
  known, so every number of the row can be checked."""
  pytest.importorskip("torch")
  import jax
  import jax.numpy as jnp

  from kmcl_jax import losses

  write_fake_baseline(tmp_path)
  inputs = loss_programs.make_inputs(6, 3, 128, "anisotropic")
  result = loss_programs.loss_parity(str(tmp_path), "anisotropic", inputs, repeats=1)
  args = [jnp.asarray(inputs[k]) for k in loss_programs.LOSS_INPUTS]
  _, ours = losses.kmcl_loss(*args, kernel="anisotropic")
  theirs = {
    "asl": np.sum(inputs["pi"] * inputs["labels"]),
    "reconstruction": np.mean(inputs["features"] ** 2),
    "contrastive": inputs["mu"].sum() + inputs["var"].mean(),
  }
  assert list(result["terms"]) == list(losses.TERMS)
  for term, row in result["terms"].items():
    assert row["ours"] == pytest.approx(float(ours[term]), rel=1e-6)
    assert row["theirs"] == pytest.approx(float(theirs[term]), rel=1e-5)
    assert row["value_rel_diff"] == pytest.approx(
      abs(row["ours"] - row["theirs"]) / abs(row["theirs"]), rel=1e-6
    )
  # d(their ASL)/d pi = labels; ours is the real ASL gradient, a different array.
  grad_pi = jax.grad(lambda p: losses.asl_loss(p, args[4]))(args[1])
  want = np.max(np.abs(np.asarray(grad_pi) - inputs["labels"])) / np.max(inputs["labels"])
  assert result["terms"]["asl"]["grad_rel_diff"] == pytest.approx(float(want), rel=1e-5)
  assert result["ours_ms"] > 0 and result["theirs_ms"] > 0
  assert result["speedup"] == pytest.approx(result["theirs_ms"] / result["ours_ms"])


@pytest.mark.slow
def test_the_loss_benchmark_prints_the_parity_compare_reports(tmp_path):
  """One comparison serves both programs: the benchmark's differences are
  `loss_parity`'s, to the digits it prints."""
  pytest.importorskip("torch")
  write_fake_baseline(tmp_path)
  out = run_module(
    "kmcl_jax.benchmarks.loss",
    "--sizes=6x3x128",
    "--repeats=1",
    "--kernels=isotropic",
    f"--baseline_dir={tmp_path}",
    "--memory_size=8x3x4",
  )
  row = next(line.split() for line in out.splitlines() if line.startswith("isotropic"))
  parity = loss_programs.loss_parity(
    str(tmp_path), "isotropic", loss_programs.make_inputs(6, 3, 128, "isotropic"), repeats=1
  )
  printed = [float(v) for v in row[7:11]]
  want = [t["value_rel_diff"] for t in parity["terms"].values()]
  want.append(max(t["grad_rel_diff"] for t in parity["terms"].values()))
  assert printed == pytest.approx(want, rel=1e-2)
  assert min(want) > 0  # the stand-in's terms differ from ours: a printed 0 would be a bug


@pytest.mark.slow
def test_scaling_benchmark_reports_memory_collectives_and_time():
  out = run_module(
    "kmcl_jax.benchmarks.scaling",
    "--simulated_devices=4",
    "--memory_devices=2,4",
    "--memory_batches=16",
    "--classes=3",
    "--dim=4",
    "--time_devices=1,4",
    "--time_batch=8",
    "--repeats=1",
  )
  lines = out.splitlines()
  memory = [
    line.split()
    for line in lines[
      lines.index(next(text for text in lines if text.startswith("devices  batch"))) + 1 :
    ]
    if line.strip() and line.split()[0].isdigit()
  ][:2]
  assert [(row[0], row[1], row[2]) for row in memory] == [("2", "16", "8"), ("4", "16", "4")]
  for row in memory:
    assert float(row[4]) > 0 and float(row[5]) > 0
    assert row[7] == "(0)", row  # no collective of the split loss sits inside a loop
  times = [
    line.split()
    for line in lines[
      lines.index(next(text for text in lines if text.startswith("devices       ms"))) + 1 :
    ]
  ]
  assert [row[0] for row in times] == ["1", "4"] and all(float(row[1]) > 0 for row in times)
  assert float(times[0][2]) == pytest.approx(float(times[1][2]), rel=1e-5)


@pytest.mark.slow
def test_step_benchmark_programs_report_consistent_numbers(tmp_path):
  """The train step (both update layouts) and the backbone pass of the step benchmark,
  tiny and on the CPU, then the step fed by the grain pipeline starved on purpose."""
  import jax
  import jax.numpy as jnp

  from kmcl_jax.benchmarks import inputs, step_programs
  from kmcl_jax.compilation import dense_flops
  from kmcl_jax.data import pipeline
  from kmcl_jax.models.tresnet import create_backbone

  backbone = step_programs.measure_backbone("tresnet_tiny", "float32", 2, 32, repeats=2)
  # XLA's CPU cost analysis counts the convolutions too (and some elementwise work).
  assert backbone.dense_flops == pytest.approx(backbone.flops, rel=0.3)
  # The backbone's training pass is its forward pass and a backward pass of twice its
  # FLOPs (each convolution's input and weight gradients), less the first convolution's
  # input gradient, which nothing needs.
  model = create_backbone("tresnet_tiny", dtype=jnp.float32)
  images = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images[:1]))
  forward = dense_flops(
    jax.jit(lambda v, x: model.apply(v, x, train=False)).trace(variables, images)
  )
  assert 2.5 * forward < backbone.dense_flops <= 3 * forward
  steps = {
    layout: step_programs.measure_train_step(
      step_programs.step_config("tresnet_tiny", 32, "float32", 2, layout), repeats=2
    )
    for layout in ("per_leaf", "flat")
  }
  assert backbone.program == "backbone" and steps["flat"].layout == "flat"
  for row in (backbone, *steps.values()):
    assert row.batch == 2 and row.timing.steps == 2
    assert row.images_per_second == pytest.approx(2 / row.timing.seconds)
    assert 0 < row.timing.dispatch_seconds <= row.timing.seconds
    assert row.flops > 0 and row.flops_per_image == pytest.approx(row.flops / 2)
    assert row.compiled_bytes > 0
    # The CPU: no peak FLOP/s is listed and no memory statistics are kept.
    assert row.peak_fraction(jax.devices()[0].device_kind) is None
    assert row.device_peak_bytes is None
    # A tiny model timed on a CPU uses a sliver of any accelerator's peak, the more of a
    # slower chip's.
    assert 0 < row.peak_fraction("NVIDIA H200") < row.peak_fraction("TPU v4") < 0.01
    if row is not backbone:
      # The step is the backbone's training pass plus the head, the loss and the update,
      # which add products of their own but less than another forward pass.
      assert backbone.dense_flops < row.dense_flops < backbone.dense_flops + forward
      assert row.flops > backbone.flops and row.compiled_bytes > backbone.compiled_bytes
      assert 0 < row.images_per_second / backbone.images_per_second < 2
  assert steps["flat"].dense_flops == steps["per_leaf"].dense_flops

  # Fed by the grain pipeline over JPEG files, slowed to a batch every 0.3 s: far slower
  # than the step, so the loop waits for its input and the step is input-bound.
  config = step_programs.step_config("tresnet_tiny", 32, "float32", 2, "per_leaf")
  source = inputs.write_photos(str(tmp_path), 4)
  dataset = pipeline.train_dataset(
    source,
    seed=0,
    global_batch=2,
    image_size=32,
    cutout_factor=0.5,
    augment="randaugment",
    process_index=0,
    process_count=1,
    worker_count=0,
    read_threads=1,
  )

  def starved():
    for batch in dataset:
      time.sleep(0.3)
      yield batch

  result = step_programs.measure_fed_train_step(config, starved(), repeats=2)
  fed, resident = result["fed"], result["resident"]
  assert fed.steps == resident.steps == 2
  assert fed.wait_seconds >= 0.3 and fed.seconds >= fed.wait_seconds
  assert resident.wait_seconds < 0.3 and result["input_bound"] is True


@pytest.mark.slow
def test_step_benchmark_prints_its_table():
  out = run_module(
    "kmcl_jax.benchmarks.step",
    "--arch=tresnet_tiny",
    "--image_size=32",
    "--batches=2",
    "--dtype=float32",
    "--repeats=1",
    "--update_layouts=per_leaf",
  )
  rows = [line.split() for line in out.splitlines() if line.startswith(("backbone", "train"))]
  assert [r[0] for r in rows] == ["backbone", "train"] and rows[1][2] == "per_leaf"
  assert rows[0][-1] == "n/a" and 0 < float(rows[1][-1])  # vs backbone
  # img/s = batch / (ms per step / 1000), as printed
  for row in rows:
    rate, ms = (
      (float(row[3]), float(row[4])) if row[0] == "backbone" else (float(row[4]), float(row[5]))
    )
    assert rate == pytest.approx(2 / (ms / 1e3), rel=0.02)


STAND_IN_MODEL = '''
import torch.nn as nn

class KMCL(nn.Module):
    """Stands in for the authors' wrapper: linear heads on the encoder's pooled features."""
    def __init__(self, encoder, num_features, num_classes, opt):
        super().__init__()
        self.encoder = encoder
        self.pi = nn.Linear(num_features, num_classes)
        self.mu = nn.Linear(num_features, 2 * num_classes)
        self.var = nn.Linear(num_features, 2 * num_classes)

    def forward(self, x):
        features = self.encoder(x)
        return features, {"pi": self.pi(features), "mu": self.mu(features),
                          "var": nn.functional.softplus(self.var(features)) + 1}
'''


def test_their_step_runs_in_each_precision_and_says_when_it_skipped(tmp_path, monkeypatch):
  """compare's builder of their step, on a stand-in model, loss and encoder: the
  autocast dtype of each precision, and `skipped` true exactly when no weight moved."""
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  import os

  from kmcl_jax import config as config_lib
  from kmcl_jax.compare import theirs

  write_fake_baseline(tmp_path)
  (tmp_path / "Kmcl_Class.py").write_text(textwrap.dedent(STAND_IN_MODEL))

  class Encoder(torch.nn.Module):
    """A convolution and a mean: records the dtype its convolution computed in."""

    num_features = 8

    def __init__(self):
      super().__init__()
      self.conv = torch.nn.Conv2d(3, 8, 3)
      self.dtypes = []

    def forward(self, x):
      y = self.conv(x)
      self.dtypes.append(y.dtype)
      return y.float().mean((2, 3))

  encoders = []
  monkeypatch.setattr(
    timm,
    "create_model",
    lambda name, pretrained, num_classes: encoders.append(Encoder()) or encoders[-1],
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load(os.path.join(root, "configs", "demo.py:smoke"))
  config.model.backbone = "tresnet_m"  # a timm name; the encoder is the stand-in
  images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
  labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
  skipped_by_precision = {}
  for precision, dtype in (
    ("float32", torch.float32),
    ("float16", torch.float16),
    ("bfloat16", torch.bfloat16),
  ):
    training = theirs.their_training(
      str(tmp_path), config, 3, 20, on_gpu=False, precision=precision
    )
    model, step = training.model, training.step
    before = [p.detach().clone() for p in model.parameters()]
    losses, skipped = step(images, labels)
    moved = any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert encoders[-1].dtypes == [dtype], precision
    assert len(losses) == 4 and all(np.isfinite(losses)), precision
    assert skipped == (not moved), precision
    skipped_by_precision[precision] = skipped
  # GradScaler's first scale, 65536, overflows float16 gradients of order one: that step
  # is skipped; without a scaler every step updates.
  assert skipped_by_precision == {"float32": False, "float16": True, "bfloat16": False}
  with pytest.raises(ValueError, match="precision='float8': expected one of"):
    theirs.their_training(str(tmp_path), config, 3, 20, on_gpu=False, precision="float8")


def test_their_step_timing_counts_the_steps_each_form_skipped():
  from kmcl_jax.compare import loss_step

  def fake_step(skips):
    flags = iter(skips)

    def step():
      skipped = next(flags)
      return [float("nan") if skipped else 1.0, 0.0, 0.0, 0.0], skipped

    return step

  # Warm-up until a step is not skipped (3 steps), one untimed call, then 3 timed steps.
  timing = loss_step.time_their_step(
    fake_step([True, True, False, True, True, False, False]), repeats=3, max_warmup=50
  )
  assert (timing["warmup_steps"], timing["skipped_warmup_steps"]) == (3, 2)
  assert (timing["timed_steps"], timing["skipped_timed_steps"]) == (3, 1)
  assert timing["nonfinite_timed_losses"] == 1 and timing["ms"] > 0
  # A scaler that never stops skipping: warm-up ends at max_warmup.
  timing = loss_step.time_their_step(fake_step([True] * 6), repeats=2, max_warmup=3)
  assert (timing["warmup_steps"], timing["skipped_warmup_steps"]) == (3, 3)
  assert (timing["timed_steps"], timing["skipped_timed_steps"]) == (2, 2)
