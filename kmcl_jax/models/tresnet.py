"""TResNet-M/L/XL and L-v2 (Ridnik et al., arXiv 2003.13630 and 2104.10972) in Flax, NHWC,
computing what timm's `timm.models.tresnet` computes, so that its checkpoints convert
one to one.

    image (B, H, W, 3) -> space-to-depth /4 -> 3x3 conv (48 -> planes) + BN + LeakyReLU(0.01)
      -> layer1: BasicBlocks      (stride 1, SE)      L-v2: Bottlenecks
      -> layer2: BasicBlocks      (stride 2, SE)      L-v2: Bottlenecks
      -> layer3: Bottlenecks      (stride 2, SE)
      -> layer4: Bottlenecks      (stride 2, no SE)
      -> global average pool -> (B, 8 * planes * 4)

Strided blocks downsample with a stride-1 convolution followed by an anti-aliasing
3x3 binomial blur with stride 2 (reflect padding); their shortcut is a 2x2 average pool
and a 1x1 convolution. A stage's first block whose input width differs from its output
(L-v2's layer1: 64 -> 256 channels) has a 1x1 convolution shortcut without the pool.
L-v2 (timm's `tresnet_v2_l`, the authors' `tresnet_l_v2`) is the same network with
Bottlenecks in every stage, layers (3, 4, 23, 3) and width 1.0 (timm also rounds v2
widths down to a multiple of 8, which leaves its 64 as it is). Module names follow
timm's parameter names (`layer3_0/conv2/bn` is timm's `body.layer3.0.conv2.bn`), which
is what `kmcl_jax.convert` relies on.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

STEM_SLOPE = 1e-2  # timm's stem uses nn.LeakyReLU's default slope
BLOCK_SLOPE = 1e-3  # its blocks use LeakyReLU(negative_slope=1e-3)
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # torch's momentum 0.1


def space_to_depth(x: jax.Array, block: int = 4) -> jax.Array:
  """(B, H, W, C) -> (B, H/block, W/block, block*block*C), channels ordered (dy, dx, c)."""
  b, h, w, c = x.shape
  if h % block or w % block:
    raise ValueError(f"TResNet needs image sides divisible by {block}, got {h}x{w}.")
  x = x.reshape(b, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block, block * block * c)


def _blur_axis(x: jax.Array, axis: int) -> jax.Array:
  """[1 2 1] / 4 along `axis` with reflect padding 1 and stride 2."""
  n = x.shape[axis]
  x = jnp.pad(x, [(1, 1) if a == axis else (0, 0) for a in range(x.ndim)], mode="reflect")
  take = lambda start: jax.lax.slice_in_dim(x, start, start + 2 * ((n + 1) // 2) - 1, 2, axis)
  return (take(0) + 2.0 * take(1) + take(2)) * 0.25


def blur_pool(x: jax.Array) -> jax.Array:
  """Anti-aliased downsampling: reflect pad 1, [1 2 1]^T [1 2 1] / 16 per channel, stride 2.

  Written as two separable strided sums instead of a depthwise convolution: the same
  numbers, and XLA:CPU differentiates slices far faster than grouped convolutions
  (measured on a 2-core CPU; on GPU and TPU compare it with a depthwise convolution
  using `python -m kmcl_jax.benchmarks.backbone`).
  """
  return _blur_axis(_blur_axis(x, 1), 2)


def average_pool_2x2(x: jax.Array) -> jax.Array:
  """torch AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) on NHWC."""
  b, h, w, c = x.shape
  pad = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))
  blocks = lambda v: v.reshape(v.shape[0], (h + 1) // 2, 2, (w + 1) // 2, 2, v.shape[-1])
  total = jnp.sum(blocks(jnp.pad(x, pad)), axis=(2, 4))
  if h % 2 == 0 and w % 2 == 0:
    return total * 0.25
  count = jnp.sum(blocks(jnp.pad(jnp.ones((1, h, w, 1), x.dtype), pad)), axis=(2, 4))
  return total / count


class ConvBN(nn.Module):
  """Conv (no bias) + BatchNorm (+ LeakyReLU) (+ blur pool when strided): timm's ConvNormAct."""

  features: int
  kernel_size: int = 3
  stride: int = 1
  slope: float | None = BLOCK_SLOPE  # None: no activation
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(
      self.features,
      (self.kernel_size, self.kernel_size),
      padding="SAME",
      use_bias=False,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name="conv",
    )(x)
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPSILON,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name="bn",
    )(x)
    if self.slope is not None:
      x = nn.leaky_relu(x, self.slope)
    if self.stride == 2:
      x = blur_pool(x)
    return x


class SqueezeExcite(nn.Module):
  """Channel gating: mean -> 1x1 (bias) -> ReLU -> 1x1 (bias) -> sigmoid -> scale."""

  reduced: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(dense(self.reduced, name="fc1")(s))
    s = nn.sigmoid(dense(x.shape[-1], name="fc2")(s))
    return x * s


class Block(nn.Module):
  """TResNet BasicBlock (expansion 1) or Bottleneck (expansion 4)."""

  planes: int
  stride: int
  bottleneck: bool
  use_se: bool
  downsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(ConvBN, dtype=self.dtype)
    out_channels = self.planes * (4 if self.bottleneck else 1)
    shortcut = x
    if self.downsample:
      if self.stride == 2:
        shortcut = average_pool_2x2(shortcut)
      shortcut = conv(out_channels, 1, slope=None, name="downsample")(shortcut, train)
    if self.bottleneck:
      out = conv(self.planes, 1, name="conv1")(x, train)
      out = conv(self.planes, 3, self.stride, name="conv2")(out, train)
      if self.use_se:
        out = SqueezeExcite(max(out_channels // 8, 64), self.dtype, name="se")(out)
      out = conv(out_channels, 1, slope=None, name="conv3")(out, train)
    else:
      out = conv(self.planes, 3, self.stride, name="conv1")(x, train)
      out = conv(self.planes, 3, slope=None, name="conv2")(out, train)
      if self.use_se:
        out = SqueezeExcite(max(out_channels // 4, 64), self.dtype, name="se")(out)
    return nn.relu(out + shortcut)


class TResNet(nn.Module):
  """TResNet backbone returning globally average-pooled features (B, 32 * planes) float32.

  BatchNorm statistics in training are over the whole input batch: under jit with a
  batch sharded over devices that is the global batch, with no axis name to pass.

  Attributes:
    layers: blocks per stage.
    width: channel width factor (M 1.0, L 1.2, XL 1.3, L-v2 1.0).
    bottleneck_stages: per stage, Bottleneck (expansion 4) rather than BasicBlock blocks
      (M/L/XL: stages 3-4; L-v2: all four).
    dtype: compute dtype (bfloat16 on accelerators); params stay float32.
    remat: rematerialise each block in the backward pass (large images, less memory).
  """

  layers: Sequence[int]
  width: float = 1.0
  bottleneck_stages: Sequence[bool] = (False, False, True, True)
  dtype: Any = jnp.float32
  remat: bool = False

  @property
  def planes(self) -> int:
    return int(64 * self.width)

  @property
  def num_features(self) -> int:
    return self.planes * 8 * (4 if self.bottleneck_stages[-1] else 1)

  def stored_activations(self, image_size: int) -> int:
    """A lower bound on the values per image of `image_size` px that training keeps for
    the backward pass: every convolution's output (the batch norm after it needs it),
    or with remat only every block's output (the next block's input, from which it is
    recomputed). Counted for sides divisible by 32, as `__call__` computes them."""
    side = image_size // 4
    stored = side * side * self.planes  # the stem's convolution
    in_channels = self.planes
    for stage, (blocks, bottleneck) in enumerate(
      zip(self.layers, self.bottleneck_stages, strict=True)
    ):
      planes = self.planes * 2**stage
      out_channels = planes * (4 if bottleneck else 1)
      for index in range(blocks):
        stride = 2 if stage and index == 0 else 1
        side_in, side = side, side // stride
        if self.remat:
          stored += side * side * out_channels
          continue
        if index == 0 and (stride != 1 or in_channels != out_channels):
          stored += side * side * out_channels  # the shortcut's 1x1 convolution
        if bottleneck:  # 1x1, 3x3 (strided after its convolution), 1x1
          stored += side_in * side_in * 2 * planes + side * side * out_channels
        else:  # 3x3 (strided after its convolution), 3x3
          stored += side_in * side_in * planes + side * side * planes
        in_channels = out_channels
    return stored

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = space_to_depth(images.astype(self.dtype))
    x = ConvBN(self.planes, 3, slope=STEM_SLOPE, dtype=self.dtype, name="conv1")(x, train)
    block_cls = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
    in_channels = self.planes
    strides, squeeze_excite = (1, 2, 2, 2), (True, True, True, False)
    stages = zip(self.layers, strides, self.bottleneck_stages, squeeze_excite, strict=True)
    for stage, (blocks, stride, bottleneck, use_se) in enumerate(stages):
      planes = self.planes * 2**stage
      out_channels = planes * (4 if bottleneck else 1)
      for index in range(blocks):
        first = index == 0
        x = block_cls(
          planes,
          stride if first else 1,
          bottleneck,
          use_se,
          downsample=first and (stride != 1 or in_channels != out_channels),
          dtype=self.dtype,
          name=f"layer{stage + 1}_{index}",
        )(x, train)
        in_channels = out_channels
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


ARCHITECTURES: dict[str, dict] = {
  "tresnet_m": {"layers": (3, 4, 11, 3), "width": 1.0},
  "tresnet_l": {"layers": (4, 5, 18, 3), "width": 1.2},
  "tresnet_xl": {"layers": (4, 5, 24, 3), "width": 1.3},
  # The authors' multi-GPU default (ImageNet-21k weights); timm's `tresnet_v2_l`.
  "tresnet_l_v2": {
    "layers": (3, 4, 23, 3),
    "width": 1.0,
    "bottleneck_stages": (True, True, True, True),
  },
  # A test-size TResNet: both kinds of block, strided shortcuts, a fraction of the width.
  "tresnet_tiny": {"layers": (1, 1, 1, 1), "width": 0.25},
}


# The same networks in timm's registry (tests and benchmarks compare against them).
TIMM_NAMES: dict[str, str] = {
  "tresnet_m": "tresnet_m",
  "tresnet_l": "tresnet_l",
  "tresnet_xl": "tresnet_xl",
  "tresnet_l_v2": "tresnet_v2_l",
}


def create_backbone(arch: str, **kwargs) -> TResNet:
  """The backbone registered as `arch` (`ARCHITECTURES`); kwargs override its fields."""
  if arch not in ARCHITECTURES:
    raise ValueError(f"Unknown backbone {arch!r}; expected one of {sorted(ARCHITECTURES)}.")
  return TResNet(**{**ARCHITECTURES[arch], **kwargs})
