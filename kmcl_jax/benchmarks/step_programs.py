"""The programs `benchmarks/step.py` times, and how: the project's jitted train step and
the backbone's training pass, run back to back with their host time split into
dispatch and waiting for batches, with XLA's FLOPs and memory and the device's peak
(no absl flags here: tests import it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kmcl_jax import config as config_lib
from kmcl_jax import optim
from kmcl_jax.benchmarks.inputs import random_batch
from kmcl_jax.benchmarks.loss_programs import jax_value_and_grad, loss_arguments, make_inputs
from kmcl_jax.compilation import dense_flops, flops
from kmcl_jax.data import pipeline
from kmcl_jax.mesh import create_mesh, replicated, to_global_batch
from kmcl_jax.models import create_backbone
from kmcl_jax.state import create_model, initial_state
from kmcl_jax.steps import jit_steps

CLASSES = 20  # VOC
PROFILED_STEPS = 3
# Dense bfloat16 peak of one chip, FLOP/s, by jax Device.device_kind (vendor figures).
PEAK_BF16_FLOPS = {
  "NVIDIA H100 80GB HBM3": 989e12,  # H100 SXM
  "NVIDIA H200": 989e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,  # v5e
  "TPU v5": 459e12,  # v5p
  "TPU v5p": 459e12,
  "TPU v6 lite": 918e12,  # v6e
}


@dataclasses.dataclass(frozen=True)
class Timing:
  """Wall seconds per step of `steps` steps run back to back (`seconds`), of which the
  host spent `dispatch_seconds` in the step call and `wait_seconds` getting the batch."""

  steps: int
  seconds: float
  dispatch_seconds: float
  wait_seconds: float


@dataclasses.dataclass(frozen=True)
class Measurement:
  """One program at one batch size: its timing, XLA's FLOPs per call (None where the
  backend gives none), the FLOPs of its convolutions and matrix products counted from
  its jaxpr (`compilation.dense_flops`: what the peak fraction is computed from, since
  XLA's count on a GPU leaves out cuDNN's convolutions), compiled memory and the
  device's peak memory (bytes, None where the device reports none)."""

  program: str
  layout: str
  batch: int
  timing: Timing
  flops: float | None
  dense_flops: float
  compiled_bytes: int
  device_peak_bytes: int | None

  @property
  def images_per_second(self) -> float:
    return self.batch / self.timing.seconds

  @property
  def flops_per_image(self) -> float | None:
    return self.flops / self.batch if self.flops else None

  def peak_fraction(self, device_kind: str) -> float | None:
    """Achieved dense FLOP/s / the chip's dense bfloat16 peak (model FLOPs utilisation);
    None where the chip's peak is not listed."""
    peak = PEAK_BF16_FLOPS.get(device_kind)
    return self.dense_flops / self.timing.seconds / peak if peak else None


def step_config(
  arch: str, image_size: int, dtype: str, batch: int, update_layout: str = "auto"
) -> ml_collections.ConfigDict:
  """The VOC recipe (`config.defaults()`) with this backbone, image size, compute dtype,
  global batch and update layout; 1,000 scheduled steps. At another batch than the
  recipe's, the EMA decay and the ASL balance adapt as in training."""
  config = config_lib.defaults()
  config.data.name = "voc-like"
  config.model.backbone, config.data.image_size, config.dtype = arch, image_size, dtype
  config.batch_size, config.update_layout, config.train_steps = batch, update_layout, 1000
  return config


def compiled_bytes(compiled) -> int:
  """Arguments + outputs + temporaries of a compiled program, less donated arguments
  that its outputs reuse: what it needs on the device while it runs."""
  memory = compiled.memory_analysis()
  return int(
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes
  )


def device_peak_bytes() -> int | None:
  """The first local device's peak memory in use so far (None where it reports none)."""
  stats = jax.local_devices()[0].memory_stats()
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def run_steps(
  step: Callable, carry, next_batch: Callable[[], object], steps: int, annotate: str | None = None
):
  """(carry, Timing) of `steps` calls carry = step(carry, next_batch()) back to back, one
  wait for the device at the end; with `annotate`, each step is named in a profile."""
  dispatch = wait = 0.0
  start = time.perf_counter()
  for i in range(steps):
    before_batch = time.perf_counter()
    batch = next_batch()
    before_call = time.perf_counter()
    with (
      jax.profiler.StepTraceAnnotation(annotate, step_num=i)
      if annotate
      else contextlib.nullcontext()
    ):
      carry = step(carry, batch)
    wait += before_call - before_batch
    dispatch += time.perf_counter() - before_call
  jax.block_until_ready(carry)
  seconds = time.perf_counter() - start
  return carry, Timing(
    steps=steps,
    seconds=seconds / steps,
    dispatch_seconds=dispatch / steps,
    wait_seconds=wait / steps,
  )


def train_step_program(config: ml_collections.ConfigDict):
  """(step(carry, batch) -> carry, initial carry, compiled program, mesh, dense FLOPs per
  step) of the config's jitted train step; carry is (state, metrics), the state donated
  to each step."""
  model = create_model(config, CLASSES)
  optimizer = optim.create_optimizer(
    config.optim, config.train_steps, config.batch_size, config.recipe_batch
  )
  mesh = create_mesh()
  state = initial_state(config, model, optimizer, replicated(mesh))
  train_step, _ = jit_steps(config, model, optimizer, mesh, state)
  example = to_global_batch(random_batch(config.batch_size, config.data.image_size, CLASSES), mesh)
  traced = train_step.trace(state, example)
  compiled = traced.lower().compile()

  def step(carry, batch):
    state, _ = carry
    return compiled(state, batch)

  return step, (state, None), compiled, mesh, dense_flops(traced)


def backbone_program(arch: str, dtype: str, batch: int, image_size: int):
  """(step(carry, images) -> carry, initial carry, compiled program, images, dense FLOPs
  per step) of the backbone's training pass: d mean(pooled features) / d parameters,
  batch statistics. carry holds the variables and the last gradients; images are float32
  on the device."""
  model = create_backbone(arch, dtype=jnp.dtype(dtype))
  images = jnp.asarray(
    np.random.default_rng(0).normal(size=(batch, image_size, image_size, 3)).astype(np.float32)
  )
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x[:1]))(images)

  def loss(params, batch_stats, x):
    features, _ = model.apply(
      {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    return jnp.mean(features)

  traced = jax.jit(jax.grad(loss)).trace(variables["params"], variables["batch_stats"], images)
  compiled = traced.lower().compile()

  def step(carry, x):
    variables, _ = carry
    return variables, compiled(variables["params"], variables["batch_stats"], x)

  return step, (variables, None), compiled, images, dense_flops(traced)


def measure_train_step(
  config: ml_collections.ConfigDict, repeats: int, profile: str = ""
) -> Measurement:
  """The config's train step on one device-resident random batch, warm-up excluded."""
  step, carry, compiled, mesh, step_flops = train_step_program(config)
  batch = to_global_batch(random_batch(config.batch_size, config.data.image_size, CLASSES), mesh)
  carry, _ = run_steps(step, carry, lambda: batch, 1)
  carry, timing = run_steps(step, carry, lambda: batch, repeats)
  if profile:
    with jax.profiler.trace(profile):
      run_steps(
        step,
        carry,
        lambda: batch,
        PROFILED_STEPS,
        annotate=f"train_step_{config.update_layout}_{config.batch_size}",
      )
  return Measurement(
    program="train step",
    layout=config.update_layout,
    batch=config.batch_size,
    timing=timing,
    flops=flops(compiled),
    dense_flops=step_flops,
    compiled_bytes=compiled_bytes(compiled),
    device_peak_bytes=device_peak_bytes(),
  )


def measure_backbone(
  arch: str, dtype: str, batch: int, image_size: int, repeats: int, profile: str = ""
) -> Measurement:
  """The backbone's training pass, warm-up excluded."""
  step, carry, compiled, images, step_flops = backbone_program(arch, dtype, batch, image_size)
  carry, _ = run_steps(step, carry, lambda: images, 1)
  carry, timing = run_steps(step, carry, lambda: images, repeats)
  if profile:
    with jax.profiler.trace(profile):
      run_steps(step, carry, lambda: images, PROFILED_STEPS, annotate=f"backbone_{batch}")
  return Measurement(
    program="backbone",
    layout="-",
    batch=batch,
    timing=timing,
    flops=flops(compiled),
    dense_flops=step_flops,
    compiled_bytes=compiled_bytes(compiled),
    device_peak_bytes=device_peak_bytes(),
  )


def measure_fed_train_step(
  config: ml_collections.ConfigDict, host_batches: Iterator[dict], repeats: int
) -> dict:
  """The config's train step fed by `host_batches` (this host's NumPy batches), against
  the same step on one device-resident batch. Returns {"fed": Timing, "resident": Timing,
  "input_bound": bool}: input-bound when the fed step is over a tenth slower and the loop
  waited for batches most of the difference."""
  step, carry, _, mesh, _ = train_step_program(config)

  def next_fed():
    return to_global_batch(next(host_batches), mesh)

  resident = to_global_batch(random_batch(config.batch_size, config.data.image_size, CLASSES), mesh)
  carry, _ = run_steps(step, carry, next_fed, 2)  # compiled already; warms up the readers
  carry, fed = run_steps(step, carry, next_fed, repeats)
  carry, resident_timing = run_steps(step, carry, lambda: resident, repeats)
  slower = fed.seconds - resident_timing.seconds
  return {
    "fed": fed,
    "resident": resident_timing,
    "input_bound": bool(slower > 0.1 * resident_timing.seconds and fed.wait_seconds > 0.5 * slower),
  }


def measure_loss(batch: int, classes: int, dim: int, kernel: str, repeats: int) -> Timing:
  """The KMCL loss's value and gradient (`loss_programs.jax_value_and_grad`, float32) on
  random head outputs of `batch` images, run back to back as the train step is, one wait
  at the end (a wait per call would add the device's round trip to a program this
  small)."""
  inputs = loss_arguments(make_inputs(batch, classes, dim, kernel))
  program = jax_value_and_grad(kernel)

  def step(carry, arguments):
    return program(*arguments)

  carry, _ = run_steps(step, None, lambda: inputs, 1)
  _, timing = run_steps(step, carry, lambda: inputs, repeats)
  return timing


def measure_fed_from_files(
  config: ml_collections.ConfigDict, source, repeats: int, workers: int, read_threads: int
) -> dict:
  """`measure_fed_train_step` fed by the training pipeline over the image files of
  `source`, with `workers` grain worker processes and `read_threads` reader threads; the
  images are augmented where config.data.augment_on says (host: in the pipeline; device:
  in the step)."""
  dataset = pipeline.train_dataset(
    source,
    seed=0,
    global_batch=config.batch_size,
    image_size=config.data.image_size,
    cutout_factor=config.data.cutout,
    augment=config.data.augment,
    process_index=0,
    process_count=1,
    worker_count=workers,
    read_threads=read_threads,
    augment_on=config.data.augment_on,
  )
  host_batches = iter(dataset)
  try:
    return measure_fed_train_step(config, host_batches, repeats)
  finally:
    getattr(host_batches, "close", lambda: None)()
