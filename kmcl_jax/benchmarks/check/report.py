"""check.md: the accelerator check's results as markdown tables (the row for
docs/benchmarks.md first)."""

from __future__ import annotations

from kmcl_jax.benchmarks.check.goals import GOALS


def _format(value, spec: str) -> str:
  return "n/a" if value is None else format(value, spec)


def render(check: dict) -> str:
  """check.md: the row for docs/benchmarks.md, the goals, then each part's table."""
  goals, parts = check["goals"], check["parts"]
  mark = {True: "met", False: "MISSED", None: "not measured"}
  lines = [
    f"# Accelerator check, {check['date']}",
    "",
    f"{check['device']} ({check['platform']}), JAX {check['jax']}, Python {check['python']}"
    f"{', --quick' if check['quick'] else ''}; {check['seconds']:.0f} s in all.",
    "",
    "The row for docs/benchmarks.md:",
    "",
    "| date | device | JAX | step / backbone | % bf16 peak | loss % of step "
    "| input slowdown % | demo s to mAP 90 |",
    "|---|---|---|---|---|---|---|---|",
    f"| {check['date'][:10]} | {check['device']} | {check['jax']} | "
    + " | ".join(
      _format(goals[name]["value"], ".2f" if name == "step_vs_backbone" else ".1f")
      for name in GOALS
    )
    + " |",
    "",
    "| goal | wanted | measured | verdict |",
    "|---|---|---|---|",
  ]
  for goal in goals.values():
    wanted = f"{'>=' if goal['at_least'] else '<='} {goal['threshold']:g}"
    lines.append(
      f"| {goal['what']} | {wanted} | {_format(goal['value'], '.3g')} | {mark[goal['met']]} |"
    )
  lines += ["", "| part | status | seconds | limit |", "|---|---|---|---|"]
  for name, part in parts.items():
    lines.append(f"| {name} | {part['status']} | {part['seconds']} | {part['limit']:.0f} |")
  steps = parts.get("step", {}).get("records", [])
  if steps:
    lines += [
      "",
      "| program | layout | batch | img/s | ms | dispatch ms | XLA GFLOP/img | dense GFLOP/img "
      "| % peak | XLA GiB | device GiB | vs backbone |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in steps:
      lines.append(
        f"| {r['program']} | {r['layout']} | {r['batch']} | "
        f"{_format(r.get('images_per_second'), '.1f')} | {r['ms']:.2f} | "
        f"{_format(r.get('dispatch_ms'), '.2f')} | {_format(r.get('gflop_per_image'), '.2f')} | "
        f"{_format(r.get('dense_gflop_per_image'), '.2f')} | "
        f"{_format(r.get('peak_percent'), '.1f')} | {_format(r.get('xla_gib'), '.2f')} | "
        f"{_format(r.get('device_gib'), '.2f')} | {_format(r.get('vs_backbone'), '.2f')} |"
      )
  for name in ("program", "demo"):
    for r in parts.get(name, {}).get("records", []):
      summary = r["summary"] or {}
      lines += [
        "",
        f"{name}: exit {r['exit_status']}, {r['wall_seconds']:.0f} s, evaluations at steps "
        f"{r['evaluations']}, test mAP {_format(summary.get('map'), '.2f')} (model) "
        f"{_format(summary.get('map_ema'), '.2f')} (EMA), "
        f"{_format(r['images_per_second'], '.0f')} img/s, train step compiled in "
        f"{_format(r['train_step_compile_seconds'], '.1f')} s"
        + (
          f", mAP 90 after {_format(r['seconds_to_map_90'], '.0f')} s"
          if name == "demo"
          else f", best checkpoint(s) {r['best_checkpoints']}"
        ),
        f"`{r['command']}`",
      ]
  for r in parts.get("compare", {}).get("records", []):
    if r["ok"]:
      theirs = ", ".join(
        f"{p}: {t['images_per_s']:.0f} img/s ({t['speedup']:.2f}x, {t['skipped_timed_steps']} "
        "skipped)"
        for p, t in r["theirs"].items()
      )
      lines += [
        "",
        f"compare ({r['device']}): loss max rel. diff {r['loss_max_rel_diff']:.1e}, loss "
        f"speed-up {r['loss_speedup']:.1f}x; first steps' loss rel. diff "
        f"{r['step_max_rel_diff']:.1e}; our step {r['ours_images_per_second']:.0f} img/s; "
        f"theirs {theirs}",
      ]
    else:
      lines += ["", f"compare: exit {r['exit_status']}: {r['log_tail'][-500:]}"]
  inputs = parts.get("input", {}).get("records", [])
  if inputs:
    lines += [
      "",
      "| augment_on | layout | batch | workers | fed ms | waiting ms | resident ms | fed img/s "
      "| input-bound |",
      "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in inputs:
      lines.append(
        f"| {r['augment_on']} | {r['layout']} | {r['batch']} | {r['workers']} | "
        f"{r['fed_ms']:.1f} | {r['wait_ms']:.1f} | {r['resident_ms']:.1f} | "
        f"{r['fed_images_per_second']:.0f} | {'yes' if r['input_bound'] else 'no'} |"
      )
  for r in parts.get("profile", {}).get("records", []):
    lines += [
      "",
      f"profile: {r['steps']} train steps at batch {r['batch']} ({r['layout']}), "
      f"{r['ms_per_step']:.1f} ms per step; device busy "
      + (
        "n/a (no accelerator)"
        if r["device_busy_percent"] is None
        else f"{r['device_busy_percent']:.1f}% of the wall time"
      ),
      "",
      "| process | thread | busy ms | busy % | events | top events (ms, count) |",
      "|---|---|---|---|---|---|",
    ]
    for t in r["threads"]:
      top = "; ".join(f"{name[:60]} {ms:.1f} ({n})" for name, ms, n in t["top"][:5])
      lines.append(
        f"| {t['process']} | {t['thread']} | {t['busy_ms']:.1f} | {t['busy_percent']:.1f} | "
        f"{t['events']} | {top} |"
      )
  return "\n".join(lines) + "\n"
