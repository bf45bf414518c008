"""Runs `train_and_evaluate` in a fresh process with N simulated CPU devices, optionally
as one process of a `jax.distributed` group on 127.0.0.1 (gloo); tests call it.

  python tests/training_run.py WORKDIR DEVICES OVERRIDES_JSON [PORT PROCESS_ID PROCESSES]
"""

import json
import os
import sys

import jax


def main(workdir, devices, overrides, port=None, process_id=None, processes=None):
  jax.config.update("jax_num_cpu_devices", int(devices))
  if port is not None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=int(processes),
                               process_id=int(process_id))
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import demo
  from kmcl_jax.train import train_and_evaluate
  config = demo.get_config("smoke")
  config.update_from_flattened_dict(json.loads(overrides))
  train_and_evaluate(config, workdir)


if __name__ == "__main__":
  main(*sys.argv[1:])
