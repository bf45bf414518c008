"""timm as the oracle of the TResNet and converter tests: randomised models, their
features, and the tolerance both test modules compare features with."""

import numpy as np
import timm
import torch
from timm.models.tresnet import TResNet

# Small images keep CI fast. 64 px is the smallest side at which every stage downsamples
# and every 3x3 tap meets data: layer 4 runs at 2 x 2 (at 32 px it would run at 1 x 1,
# where a 3x3 convolution reads only its centre tap).
IMAGE = 64


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """`model` in eval mode with every weight and BN statistic random (in place).

  Random BN statistics and scales matter: timm initialises residual BN scales to 0,
  which would hide most of the network from the comparison.
  """
  model.eval()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if not tensor.is_floating_point():
        continue
      if name.endswith(("bn.weight", "running_var")):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
      elif name.endswith(("bn.bias", "running_mean")):
        tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
      elif name.endswith("weight"):
        fan_in = tensor[0].numel()
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * (1.0 / fan_in) ** 0.5)
  return model


def randomised_timm(arch: str, seed: int = 0) -> torch.nn.Module:
  """timm's `arch` without classifier, eval mode, every weight and BN statistic random."""
  torch.manual_seed(seed)
  return randomise(timm.create_model(arch, pretrained=False, num_classes=0), seed)


def randomised_tiny_timm(seed: int = 0) -> torch.nn.Module:
  """timm's TResNet class with kmcl_jax's `tresnet_tiny` settings (one block per stage,
  width 0.25), randomised like `randomised_timm`: a checkpoint that converts in a blink."""
  torch.manual_seed(seed)
  tiny = TResNet(layers=[1, 1, 1, 1], width_factor=0.25, num_classes=0)
  return randomise(tiny, seed)


def numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
  """The model's state dict as NumPy arrays."""
  return {k: v.numpy() for k, v in model.state_dict().items()}


def images(batch: int = 2, seed: int = 1, size: int = IMAGE) -> np.ndarray:
  """Standard-normal NHWC float32 images (batch, size, size, 3)."""
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def timm_features(model: torch.nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
  """timm's pooled features (B, C) of NHWC images."""
  with torch.no_grad():
    return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2))).numpy()


def max_difference_over_scale(ours, reference) -> float:
  """max |ours - reference| / max |reference|."""
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


def assert_features_match(ours, reference):
  """Equal within 1e-4 of the reference's largest magnitude."""
  difference = max_difference_over_scale(ours, reference)
  assert difference <= 1e-4, f"max abs diff {difference:.3e} of the reference's scale"
