r"""Speed, parity and memory of `kmcl_loss` (forward + backward), optionally vs the authors'.

  python -m kmcl_jax.benchmarks.loss
  python -m kmcl_jax.benchmarks.loss --baseline_dir=/path/to/KMCL   # torch installed

Times the jitted value-and-gradient of `kmcl_loss` with respect to features, pi,
mu and var at (B, K, D) = (64, 20, 128) and (128, 80, 128) for both kernels (median of
`--repeats` runs after a warm-up). With `--baseline_dir` (a checkout of
mahdihosseini/KMCL) it runs their `KMCL_Loss` forward + backward on the same inputs on
the CPU in this process (`loss_programs.loss_parity`, the comparison `kmcl_jax.compare`
reports), and prints the relative difference of every term's value, the largest of
their gradients' and the speed ratio. Last, it reports the compiled temporary memory of
the step at B = 1024, K = 80, D = 128 with the default block size.
"""

from __future__ import annotations

import jax
from absl import app, flags

from kmcl_jax import losses
from kmcl_jax.benchmarks.loss_programs import (
  loss_parity,
  make_inputs,
  peak_temporary_bytes,
  time_loss,
)

_BASELINE_DIR = flags.DEFINE_string(
  "baseline_dir", None, "Checkout of mahdihosseini/KMCL to time side by side (needs torch)."
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median reported).")
_SIZES = flags.DEFINE_list("sizes", ["64x20x128", "128x80x128"], "BxKxD shapes to time.")
_KERNELS = flags.DEFINE_list("kernels", list(losses.KERNELS), "Kernels to time.")
_MEMORY_SIZE = flags.DEFINE_string("memory_size", "1024x80x128", "BxKxD of the memory report.")


def _parse_size(text: str) -> tuple[int, int, int]:
  try:
    batch, classes, dim = (int(v) for v in text.lower().split("x"))
  except ValueError as error:
    raise app.UsageError(f"Sizes are written BxKxD, e.g. 128x80x128; got {text!r}.") from error
  return batch, classes, dim


def main(argv):
  del argv
  print(
    f"JAX {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}, "
    f"median of {_REPEATS.value} runs, forward + backward"
  )
  header = f"{'kernel':<12} {'B':>4} {'K':>3} {'D':>4} {'JAX ms':>9}"
  if _BASELINE_DIR.value:
    import torch

    header += (
      f" {'torch ms':>10} {'speedup':>8}"
      + "".join(f" {'rel diff ' + t[:5]:>15}" for t in losses.TERMS)
      + f" {'grad diff':>10}"
    )
    print(
      f"baseline: {_BASELINE_DIR.value} (torch {torch.__version__}, "
      f"{torch.get_num_threads()} threads, CPU)"
    )
  print(header)
  for kernel in _KERNELS.value:
    for size in _SIZES.value:
      batch, classes, dim = _parse_size(size)
      inputs = make_inputs(batch, classes, dim, kernel)
      row = f"{kernel:<12} {batch:>4} {classes:>3} {dim:>4}"
      if _BASELINE_DIR.value:
        parity = loss_parity(_BASELINE_DIR.value, kernel, inputs, _REPEATS.value)
        terms = parity["terms"].values()
        row += (
          f" {parity['ours_ms']:>9.1f} {parity['theirs_ms']:>10.1f} "
          f"{parity['speedup']:>7.1f}x"
          + "".join(f" {t['value_rel_diff']:>15.2e}" for t in terms)
          + f" {max(t['grad_rel_diff'] for t in terms):>10.2e}"
        )
      else:
        row += f" {time_loss(inputs, kernel, _REPEATS.value)[0] * 1e3:>9.1f}"
      print(row, flush=True)
  batch, classes, dim = _parse_size(_MEMORY_SIZE.value)
  temp = peak_temporary_bytes(batch, classes, dim)
  block = losses.default_block_size(batch, dim, classes)
  print(
    f"compiled temporaries, anisotropic B={batch} K={classes} D={dim} "
    f"(default block {block}): {temp / 2**30:.3f} GiB"
  )


if __name__ == "__main__":
  app.run(main)
