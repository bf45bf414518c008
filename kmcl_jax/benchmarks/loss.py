r"""Speed, parity and memory of `kmcl_loss` (forward + backward), optionally vs the authors'.

  python -m kmcl_jax.benchmarks.loss
  python -m kmcl_jax.benchmarks.loss --baseline_dir=/path/to/KMCL   # torch installed

Times the jitted value-and-gradient of `kmcl_loss` with respect to features, logits,
mu and var at (B, K, D) = (64, 20, 128) and (128, 80, 128) for both kernels (median of
`--repeats` runs after a warm-up). With `--baseline_dir` (a checkout of
mahdihosseini/KMCL) it runs their `KMCL_Loss` forward + backward on the same inputs on
the CPU in this process, and prints the relative difference of every term and the speed
ratio. Last, it reports the compiled temporary memory of the step at B = 1024, K = 80,
D = 128 with the default block size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app, flags

from kmcl_jax import losses
from kmcl_jax.benchmarks.loss_programs import (jax_value_and_grad, make_inputs,
                                              peak_temporary_bytes)
from kmcl_jax.benchmarks.timing import median_seconds

_BASELINE_DIR = flags.DEFINE_string(
    "baseline_dir", None, "Checkout of mahdihosseini/KMCL to time side by side (needs torch).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median reported).")
_SIZES = flags.DEFINE_list("sizes", ["64x20x128", "128x80x128"], "BxKxD shapes to time.")
_KERNELS = flags.DEFINE_list("kernels", list(losses.KERNELS), "Kernels to time.")
_MEMORY_SIZE = flags.DEFINE_string("memory_size", "1024x80x128", "BxKxD of the memory report.")

TERMS = ("asl", "reconstruction", "contrastive")


def run_jax(inputs: dict, kernel: str, repeats: int):
  step = jax_value_and_grad(kernel)
  args = [jnp.asarray(inputs[k]) for k in ("features", "logits", "mu", "var", "labels")]
  (_, terms), _ = step(*args)
  seconds = median_seconds(lambda: jax.block_until_ready(step(*args)), repeats)
  return seconds, {k: float(v) for k, v in terms.items()}


def run_baseline(inputs: dict, kernel: str, repeats: int, baseline_dir: str):
  """Their KMCL_Loss forward + backward on the CPU, on the same inputs."""
  from kmcl_jax.benchmarks import baseline

  forward = baseline.loss_terms(baseline_dir, kernel, inputs)

  def forward_backward():
    _, terms = forward()
    sum(terms.values()).backward()
    return {name: term.item() for name, term in terms.items()}

  with baseline.cuda_is_cpu():
    terms = forward_backward()
    seconds = median_seconds(forward_backward, repeats)
  return seconds, terms


def _parse_size(text: str) -> tuple[int, int, int]:
  try:
    batch, classes, dim = (int(v) for v in text.lower().split("x"))
  except ValueError as error:
    raise app.UsageError(f"Sizes are written BxKxD, e.g. 128x80x128; got {text!r}.") from error
  return batch, classes, dim


def main(argv):
  del argv
  print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"median of {_REPEATS.value} runs, forward + backward")
  header = f"{'kernel':<12} {'B':>4} {'K':>3} {'D':>4} {'JAX ms':>9}"
  if _BASELINE_DIR.value:
    import torch
    header += (f" {'torch ms':>10} {'speedup':>8}" +
               "".join(f" {'rel diff ' + t[:5]:>15}" for t in TERMS))
    print(f"baseline: {_BASELINE_DIR.value} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
  print(header)
  for kernel in _KERNELS.value:
    for size in _SIZES.value:
      batch, classes, dim = _parse_size(size)
      inputs = make_inputs(batch, classes, dim, kernel)
      jax_seconds, jax_terms = run_jax(inputs, kernel, _REPEATS.value)
      row = f"{kernel:<12} {batch:>4} {classes:>3} {dim:>4} {jax_seconds * 1e3:>9.1f}"
      if _BASELINE_DIR.value:
        torch_seconds, torch_terms = run_baseline(inputs, kernel, _REPEATS.value,
                                                  _BASELINE_DIR.value)
        row += f" {torch_seconds * 1e3:>10.1f} {torch_seconds / jax_seconds:>7.1f}x"
        for term in TERMS:
          diff = abs(jax_terms[term] - torch_terms[term]) / max(abs(torch_terms[term]), 1e-12)
          row += f" {diff:>15.2e}"
      print(row, flush=True)
  batch, classes, dim = _parse_size(_MEMORY_SIZE.value)
  temp = peak_temporary_bytes(batch, classes, dim)
  block = losses.default_block_size(batch, dim, classes)
  print(f"compiled temporaries, anisotropic B={batch} K={classes} D={dim} "
        f"(default block {block}): {temp / 2**30:.3f} GiB")


if __name__ == "__main__":
  app.run(main)
