"""Runs the authors' PyTorch code (a checkout of mahdihosseini/KMCL) on the CPU.

Their loss calls `.cuda()` and builds tensors on device "cuda". Their files are left as
they are: the module is loaded from the checkout with its `torch` global replaced by a
view that places new tensors on the CPU, and `Tensor.cuda` is the identity while
their code runs.
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

  view = types.SimpleNamespace(**{name: getattr(torch, name) for name in dir(torch)
                                  if not name.startswith("__")})
  view.tensor = tensor
  return view


@contextlib.contextmanager
def cuda_is_cpu():
  """While active, `Tensor.cuda()` returns the tensor itself."""
  import torch

  original = torch.Tensor.cuda
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  try:
    yield
  finally:
    torch.Tensor.cuda = original


def load_module(baseline_dir: str, relative_path: str, name: str):
  """Imports one file of the authors' checkout, running on the CPU."""
  import torch

  path = os.path.join(baseline_dir, relative_path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"--baseline_dir={baseline_dir!r} has no {relative_path}; expected a checkout of "
        "the authors' repository mahdihosseini/KMCL.")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.torch = _cpu_torch(torch)
  return module


def kmcl_loss_class(baseline_dir: str):
  """The authors' `KMCL_Loss` class from `src/loss_functions/losses.py`."""
  return load_module(baseline_dir, "src/loss_functions/losses.py", "kmcl_baseline_losses").KMCL_Loss
