"""Runs the authors' PyTorch code (a checkout of mahdihosseini/KMCL) on a GPU or the CPU.

Their loss and model call `.cuda()` and build tensors on device "cuda". Their files are
left as they are: for the CPU, a module is loaded from the checkout with its `torch`
global replaced by a view that places new tensors on the CPU, and `Tensor.cuda` and
`Module.cuda` are the identity while their code runs (`cuda_is_cpu`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import types


def _cpu_torch(torch) -> types.SimpleNamespace:
  """`torch`, except that `torch.tensor(..., device="cuda")` lands on the CPU."""

  def tensor(*args, **kwargs):
    kwargs.pop("device", None)
    return torch.tensor(*args, **kwargs)

  view = types.SimpleNamespace(
    **{name: getattr(torch, name) for name in dir(torch) if not name.startswith("__")}
  )
  view.tensor = tensor
  return view


@contextlib.contextmanager
def cuda_is_cpu():
  """While active, `Tensor.cuda()` and `Module.cuda()` return the object itself."""
  import torch

  originals = torch.Tensor.cuda, torch.nn.Module.cuda
  torch.Tensor.cuda = torch.nn.Module.cuda = lambda self, *args, **kwargs: self
  try:
    yield
  finally:
    torch.Tensor.cuda, torch.nn.Module.cuda = originals


def device_context(on_gpu: bool):
  """Where their code runs: as written on a GPU, `cuda_is_cpu()` on the CPU."""
  return contextlib.nullcontext() if on_gpu else cuda_is_cpu()


def load_module(baseline_dir: str, relative_path: str, name: str, on_gpu: bool = False):
  """Imports one file of the authors' checkout, to run on the GPU or the CPU."""
  import torch

  path = os.path.join(baseline_dir, relative_path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"--baseline_dir={baseline_dir!r} has no {relative_path}; expected a checkout of "
      "the authors' repository mahdihosseini/KMCL."
    )
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not on_gpu:
    module.torch = _cpu_torch(torch)
  return module


def kmcl_loss_class(baseline_dir: str, on_gpu: bool = False):
  """The authors' `KMCL_Loss` class from `src/loss_functions/losses.py`."""
  return load_module(
    baseline_dir, "src/loss_functions/losses.py", "kmcl_baseline_losses", on_gpu
  ).KMCL_Loss


def kmcl_model_class(baseline_dir: str, on_gpu: bool = False):
  """The authors' `KMCL` wrapper (encoder -> Conv1d projection -> `KMM` head) from
  `Kmcl_Class.py`."""
  return load_module(baseline_dir, "Kmcl_Class.py", "kmcl_baseline_model", on_gpu).KMCL


def loss_terms(baseline_dir: str, kernel: str, inputs: dict, on_gpu: bool = False):
  """forward() -> (leaves, terms): their `KMCL_Loss` on fresh leaf tensors of `inputs`.

  inputs: NumPy "features" (B, D), "pi" (B, K), "mu"/"var" (B, D, K) or (B, K),
  "labels" (B, K). leaves: [features, pi, mu, var] tensors that require grad; terms:
  {"asl", "reconstruction", "contrastive"} scalar tensors. Call it inside
  `device_context(on_gpu)`.
  """
  import torch

  criterion = kmcl_loss_class(baseline_dir, on_gpu)(
    gamma_neg=4,
    gamma_pos=0,
    clip=0.05,
    disable_torch_grad_focal_loss=True,
    loss_case=kernel,
    loss_opt="all",
  )
  device = "cuda" if on_gpu else "cpu"
  labels = torch.tensor(inputs["labels"], device=device)
  batch = inputs["labels"].shape[0]

  def forward():
    leaves = [
      torch.tensor(inputs[k], device=device, requires_grad=True)
      for k in ("features", "pi", "mu", "var")
    ]
    features, pi, mu, var = leaves
    # Their head emits mu and var flat, (B, D K) with k fastest, as `reshape` lays out (B, D, K).
    output = {"pi": pi, "mu": mu.reshape(batch, -1), "var": var.reshape(batch, -1)}
    _, asl, reconstruction, contrastive = criterion(features, output, labels)
    return leaves, {"asl": asl, "reconstruction": reconstruction, "contrastive": contrastive}

  return forward
