"""The goals the accelerator check judges: what each asks, its threshold, and its value
from the parts' records."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Goal:
  """What a goal asks, its threshold, and whether the value must be at least (True) or at
  most (False) the threshold."""

  what: str
  threshold: float
  at_least: bool


GOALS = {
  "step_vs_backbone": Goal("train step img/s / backbone img/s, largest batch", 0.85, True),
  "peak_percent": Goal("train step, % of the bf16 peak, largest batch", 20.0, True),
  "loss_share_percent": Goal("loss forward + backward, % of the train step", 5.0, False),
  "input_slowdown_percent": Goal(
    "fed step's time over the resident batch's, % (augment_on=device)", 10.0, False
  ),
  "demo_seconds_to_map_90": Goal("demo: seconds from launch to mAP >= 90", 60.0, False),
}


def goal_values(parts: dict) -> dict[str, float | None]:
  """The measured value of each goal (None where its part did not produce it)."""
  values = dict.fromkeys(GOALS)
  steps = parts.get("step", {}).get("records", [])
  if steps:
    largest = max(r["batch"] for r in steps)
    at = [r for r in steps if r["batch"] == largest]
    train = [r for r in at if r["program"] == "train step"]
    loss = [r for r in at if r["program"] == "loss"]
    if train:
      fastest = max(train, key=lambda r: r["images_per_second"])
      values["step_vs_backbone"] = fastest["vs_backbone"]
      values["peak_percent"] = fastest["peak_percent"]
      if loss:
        values["loss_share_percent"] = 100 * loss[0]["ms"] / fastest["ms"]
  device_fed = [r for r in parts.get("input", {}).get("records", []) if r["augment_on"] == "device"]
  if device_fed:
    fed = device_fed[0]
    values["input_slowdown_percent"] = 100 * (fed["fed_ms"] / fed["resident_ms"] - 1)
  demo = parts.get("demo", {}).get("records", [])
  if demo:
    values["demo_seconds_to_map_90"] = demo[0]["seconds_to_map_90"]
  return values


def judge(values: dict[str, float | None]) -> dict[str, bool | None]:
  """Each goal met (True), missed (False) or not measured (None)."""
  verdicts = {}
  for name, value in values.items():
    goal = GOALS[name]
    verdicts[name] = None if value is None else (value >= goal.threshold) == goal.at_least
  return verdicts
