r"""Where a training step's time goes: the full jitted train step against the backbone's
training pass alone, over a sweep of batch sizes.

  python -m kmcl_jax.benchmarks.step                            # TResNet-M 224 px, bf16
  python -m kmcl_jax.benchmarks.step --arch=tresnet_tiny --image_size=64 --batches=8,16 \
      --dtype=float32
  python -m kmcl_jax.benchmarks.step --profile=/tmp/step_profile   # + jax.profiler traces
  python -m kmcl_jax.benchmarks.step --data=voc-like            # fed by the grain pipeline

Train step: the project's own (`steps.jit_steps` on `state.initial_state`: KMCL loss,
optimiser, EMA, finite check and skip; the state donated), the VOC recipe (K = 20
classes, anisotropic kernel) with --arch, --image_size and --dtype, once per update
layout in --update_layouts (`optim.update_or_skip`: the same operations per leaf or
over a few flat buffers). Backbone: forward + backward of the backbone alone (batch
statistics) with respect to every parameter, as `benchmarks/backbone.py` times it.
Both programs and their timing are in `step_programs` (flag-free).

Each program runs --repeats steps back to back after a warm-up step, with one wait for
the device at the end, as the trainer runs them (the host dispatches step n + 1 while
the device computes step n). Per program and batch size:

- img/s and ms per step (wall time of the timed steps / their number);
- dispatch ms: host time per step until the call returned (the rest ran on the device);
- GFLOP/img: XLA's cost analysis of the compiled program, per image (on a GPU it leaves
  out the convolutions cuDNN runs); dense GFLOP/img: its convolutions and matrix
  products counted from the jaxpr (`compilation.dense_flops`, the same on every platform);
- % peak: achieved dense FLOP/s against the chip's dense bfloat16 peak
  (`PEAK_BF16_FLOPS`; n/a where the device kind is not listed, e.g. the CPU);
- XLA GiB: the compiled program's arguments, outputs and temporaries (less aliased
  donations); device GiB: the device's peak memory in use so far in this process
  (`memory_stats`, GPU and TPU; n/a elsewhere);
- vs backbone: train step img/s / backbone img/s at the same batch.

--data=voc-like: the train step fed by the real grain pipeline (`pipeline.train_dataset`,
host augmentation) over --images generated JPEGs the size of VOC photos (500 x 375,
`inputs.write_photos`), at the first batch size and layout: the time the loop waited
for the next batch (host to device copy included) against the step time, and whether
the step is input-bound (the fed step is slower than the same step on one
device-resident batch by more than a tenth, and the loop waited for data most of that
difference).

--profile=DIR: after timing, a jax.profiler trace of 3 steps of every program (one run
per program and batch under DIR/plugins/profile/; `tensorboard --logdir DIR`).
"""

from __future__ import annotations

import tempfile

import jax
from absl import app, flags

from kmcl_jax import optim
from kmcl_jax.benchmarks.inputs import write_photos
from kmcl_jax.benchmarks.step_programs import (
  CLASSES,
  measure_backbone,
  measure_fed_from_files,
  measure_train_step,
  step_config,
)

_ARCH = flags.DEFINE_string("arch", "tresnet_m", "Backbone.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Image side in pixels.")
_DTYPE = flags.DEFINE_enum(
  "dtype", "bfloat16", ["float32", "bfloat16"], "Compute dtype of the backbone (config.dtype)."
)
_BATCHES = flags.DEFINE_list("batches", ["64", "128", "256"], "Global batch sizes to time.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed steps per program and batch size.")
_UPDATE_LAYOUTS = flags.DEFINE_list(
  "update_layouts",
  list(optim.UPDATE_LAYOUTS),
  "config.update_layout values to time the train step with.",
)
_PROFILE = flags.DEFINE_string("profile", "", "Also write jax.profiler traces here.")
_DATA = flags.DEFINE_enum(
  "data",
  "synthetic",
  ["synthetic", "voc-like"],
  "voc-like: also time the step fed by the grain pipeline.",
)
_IMAGES = flags.DEFINE_integer("images", 512, "JPEG files written for --data=voc-like.")
_WORKERS = flags.DEFINE_integer("workers", 4, "grain worker processes for --data=voc-like.")
_READ_THREADS = flags.DEFINE_integer("read_threads", 8, "grain reader threads (--data=voc-like).")


def _format(value: float | None, spec: str) -> str:
  return "n/a" if value is None else format(value, spec)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  device = jax.devices()[0]
  batches = [int(b) for b in _BATCHES.value]
  print(
    f"{_ARCH.value} {_IMAGE_SIZE.value} px, {_DTYPE.value}, K={CLASSES}; "
    f"{device.device_kind} x{jax.device_count()}, JAX {jax.__version__}; "
    f"{_REPEATS.value} steps back to back per row"
  )
  print(
    f"{'program':<11} {'layout':<8} {'batch':>5} {'img/s':>9} {'ms/step':>9} "
    f"{'dispatch ms':>11} {'GFLOP/img':>9} {'dense':>6} {'% peak':>6} {'XLA GiB':>7} "
    f"{'device GiB':>10} {'vs backbone':>11}"
  )
  for batch in batches:
    rows = [
      measure_backbone(
        _ARCH.value, _DTYPE.value, batch, _IMAGE_SIZE.value, _REPEATS.value, _PROFILE.value
      )
    ]
    for layout in _UPDATE_LAYOUTS.value:
      config = step_config(_ARCH.value, _IMAGE_SIZE.value, _DTYPE.value, batch, layout)
      rows.append(measure_train_step(config, _REPEATS.value, _PROFILE.value))
    backbone_rate = rows[0].images_per_second
    for row in rows:
      fraction = row.peak_fraction(device.device_kind)
      ratio = row.images_per_second / backbone_rate if row.program != "backbone" else None
      print(
        f"{row.program:<11} {row.layout:<8} {row.batch:>5} {row.images_per_second:>9.1f} "
        f"{row.timing.seconds * 1e3:>9.1f} {row.timing.dispatch_seconds * 1e3:>11.2f} "
        f"{_format(row.flops_per_image and row.flops_per_image / 1e9, '.2f'):>9} "
        f"{row.dense_flops / row.batch / 1e9:>6.2f} "
        f"{_format(fraction and 100 * fraction, '.1f'):>6} "
        f"{row.compiled_bytes / 2**30:>7.2f} "
        f"{_format(row.device_peak_bytes and row.device_peak_bytes / 2**30, '.2f'):>10} "
        f"{_format(ratio, '.2f'):>11}",
        flush=True,
      )
  if _DATA.value == "voc-like":
    batch = batches[0]
    config = step_config(
      _ARCH.value, _IMAGE_SIZE.value, _DTYPE.value, batch, _UPDATE_LAYOUTS.value[0]
    )
    with tempfile.TemporaryDirectory() as folder:
      source = write_photos(folder, _IMAGES.value)
      result = measure_fed_from_files(
        config, source, _REPEATS.value, _WORKERS.value, _READ_THREADS.value
      )
    fed, resident = result["fed"], result["resident"]
    print(
      f"\nfed by grain ({_IMAGES.value} JPEGs 500x375, {_WORKERS.value} workers, "
      f"{_READ_THREADS.value} reader threads), batch {batch}, layout {config.update_layout}: "
      f"{fed.seconds * 1e3:.1f} ms/step ({batch / fed.seconds:.1f} img/s), of which "
      f"{fed.wait_seconds * 1e3:.1f} ms waiting for the next batch; one resident batch: "
      f"{resident.seconds * 1e3:.1f} ms/step; input-bound: "
      f"{'yes' if result['input_bound'] else 'no'}"
    )


if __name__ == "__main__":
  app.run(main)
