"""Runs `train_and_evaluate` in a fresh process with N simulated CPU devices; tests call it.
(Several processes run through launch/multiprocess_local.sh instead.)

  python tests/training_run.py WORKDIR DEVICES OVERRIDES_JSON
"""

import json
import os
import sys

import jax


def main(workdir, devices, overrides):
  jax.config.update("jax_num_cpu_devices", int(devices))
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import demo
  from kmcl_jax.train import train_and_evaluate
  config = demo.get_config("smoke")
  config.update_from_flattened_dict(json.loads(overrides))
  train_and_evaluate(config, workdir)


if __name__ == "__main__":
  main(*sys.argv[1:])
