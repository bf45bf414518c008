"""What a metrics.jsonl record costs on a gs:// workdir: `reporting.MetricsLog` on the
GCS emulator of the tests (tests/gcs_emulator.py), appending --records train-sized
records one by one, then closing. Not a test: it prints the numbers docs/benchmarks.md
quotes (run it at an older commit for the "before" column).

  python tests/metrics_log_cost_run.py --records=2000

Prints the mean milliseconds of an append over the first and the last 100 records, the
bytes the last append wrote, and the seconds `close` took.
"""

import argparse
import time

from gcs_emulator import Emulator

from kmcl_jax.reporting import MetricsLog, to_json


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--records", type=int, default=2000)
  records = parser.parse_args().records
  emulator = Emulator()
  try:
    workdir = emulator.workdir("metrics-cost")
    record = {
      "epoch": 0.0,
      "split": "train",
      **{f"metric_{i}": 0.123456789 * i for i in range(20)},
    }
    log = MetricsLog(workdir, step=0)
    seconds = []
    for step in range(1, records + 1):
      start = time.perf_counter()
      log.append({"step": step, **record})
      seconds.append(time.perf_counter() - start)
    written = max(
      emulator.bucket.list_blobs(prefix=emulator.blob(workdir, "").name),
      key=lambda blob: blob.updated,
    )
    start = time.perf_counter()
    log.close()
    closing = time.perf_counter() - start
    print(
      f"{records} records of {len(to_json({'step': records, **record}))} bytes: append "
      f"{1e3 * sum(seconds[:100]) / 100:.1f} ms (first 100), "
      f"{1e3 * sum(seconds[-100:]) / 100:.1f} ms (last 100); the last append wrote "
      f"{written.size:,} bytes ({written.name.rsplit('/', 2)[-2:]}); close {closing:.2f} s"
    )
  finally:
    emulator.stop()


if __name__ == "__main__":
  main()
