"""What the train step's update compiles to and costs on this machine, side by side in
one process: "before" (tests/step_oracle.py: the update as the step made it before
`optim.update_or_skip`) and `optim.update_or_skip` with each layout ("per_leaf",
"flat"). Not a test: it prints the numbers the update layouts were measured with.

  python tests/update_cost_run.py --arch=tresnet_tiny --batch=8 --image_size=64
  python tests/update_cost_run.py --arch=tresnet_m --batch=2 --image_size=224 --repeats=3

For the update alone (the function of state, gradients, BatchNorm statistics and loss)
and for the whole jitted train step (`steps.jit_steps`, the state donated): the compiled
program's size (characters of its HLO text, instructions and fusions in its entry
computation, which on the CPU each run as one kernel), the compile seconds, and the
median wall time of a call over --repeats calls, the two forms alternating.
"""

import argparse
import contextlib
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's kmcl_jax, not an installed one

from step_oracle import per_leaf_update, per_leaf_updates  # noqa: E402

from kmcl_jax import config as config_lib  # noqa: E402
from kmcl_jax import optim  # noqa: E402
from kmcl_jax.benchmarks.inputs import random_batch  # noqa: E402
from kmcl_jax.mesh import create_mesh, replicated, to_global_batch  # noqa: E402
from kmcl_jax.state import create_model, initial_state  # noqa: E402
from kmcl_jax.steps import jit_steps  # noqa: E402

FORMS = ("before", "per_leaf", "flat")


def entry_counts(hlo_text: str) -> tuple[int, int]:
  """(instructions, fusions) of the entry computation of compiled HLO text."""
  entry = hlo_text[hlo_text.index("\nENTRY") :].split("\n}\n", 1)[0]
  lines = [line for line in entry.splitlines()[1:] if " = " in line]
  return len(lines), sum(1 for line in lines if re.search(r" fusion\(", line))


def compiled_with_seconds(jitted, *args):
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def alternating_medians(calls: dict, repeats: int) -> dict:
  """{name: median seconds} of `repeats` calls of each (after one untimed call each),
  alternating between them so that drifting machine load hits all alike."""
  times = {name: [] for name in calls}
  for call in calls.values():
    call()
  for _ in range(repeats):
    for name, call in calls.items():
      start = time.perf_counter()
      call()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--arch", default="tresnet_tiny")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--parts", default="update,step")
  args = parser.parse_args()
  config = config_lib.load(os.path.join(ROOT, "configs", "demo.py"))
  config.model.backbone, config.batch_size = args.arch, args.batch
  config.data.image_size, config.dtype = args.image_size, "float32"
  classes = 20
  model = create_model(config, classes)
  optimizer = optim.create_optimizer(config.optim, 1000)
  mesh = create_mesh()
  state = initial_state(config, model, optimizer, replicated(mesh))
  print(
    f"{args.arch} {args.image_size} px batch {args.batch}, {jax.devices()[0].device_kind}, "
    f"JAX {jax.__version__}; state leaves {len(jax.tree.leaves(state))}, parameters "
    f"{sum(leaf.size for leaf in jax.tree.leaves(state.params)):,}; median of "
    f"{args.repeats}"
  )
  print(
    f"{'part':<7} {'form':<9} {'HLO chars':>11} {'instructions':>12} {'fusions':>8} "
    f"{'compile s':>9} {'ms':>9}"
  )
  if "update" in args.parts:
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), state.params)
    stats = jax.tree.map(lambda s: s + 1.0, state.batch_stats)
    loss = jnp.float32(1.0)
    programs = {}
    for name in FORMS:
      update = per_leaf_update if name == "before" else optim.update_or_skip
      programs[name] = compiled_with_seconds(
        jax.jit(
          lambda s, g, b, loss, update=update, name=name: update(
            optimizer, s, g, b, loss, config.ema_decay, None if name == "before" else name
          )
        ),
        state,
        grads,
        stats,
        loss,
      )
    times = alternating_medians(
      {
        name: lambda c=c: jax.block_until_ready(c(state, grads, stats, loss))
        for name, (c, _) in programs.items()
      },
      args.repeats,
    )
    print_rows("update", programs, times)
  if "step" in args.parts:
    batch = to_global_batch(random_batch(args.batch, args.image_size, classes), mesh)
    programs, states = {}, {}
    for name in FORMS:
      states[name] = initial_state(config, model, optimizer, replicated(mesh))
      config.update_layout = "per_leaf" if name == "before" else name
      with per_leaf_updates() if name == "before" else contextlib.nullcontext():
        programs[name] = compiled_with_seconds(
          jit_steps(config, model, optimizer, mesh, states[name])[0], states[name], batch
        )

    def run(name):
      states[name], metrics = programs[name][0](states[name], batch)
      jax.block_until_ready(metrics)

    times = alternating_medians({name: lambda n=name: run(n) for name in programs}, args.repeats)
    print_rows("step", programs, times)


def print_rows(part, programs, times):
  """One table row per form: HLO size, entry instructions and fusions, compile s, ms."""
  for name, (compiled, seconds) in programs.items():
    text = compiled.as_text()
    instructions, fusions = entry_counts(text)
    print(
      f"{part:<7} {name:<9} {len(text):>11,} {instructions:>12,} "
      f"{fusions:>8,} {seconds:>9.1f} {times[name] * 1e3:>9.2f}",
      flush=True,
    )


if __name__ == "__main__":
  main()
