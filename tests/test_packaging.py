"""setup.cfg's lower bounds and .ci/oldest.txt (what CI installs at the old end) agree."""

import configparser
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
  from packaging.requirements import Requirement
  from packaging.utils import canonicalize_name
  from packaging.version import Version
except ImportError:  # a small parser for the simple forms setup.cfg uses
  Requirement = None

  def canonicalize_name(name):
    return re.sub(r"[-_.]+", "-", name).lower()

  def Version(text):  # noqa: N802 - stands in for packaging.version.Version
    parts = [int(part) for part in text.strip().split(".")]
    while parts and parts[-1] == 0:
      parts.pop()
    return tuple(parts)


def parse(line):
  """(canonical name, [(operator, version), ...]) of a requirement line."""
  if Requirement is not None:
    requirement = Requirement(line)
    return (
      canonicalize_name(requirement.name),
      [(spec.operator, spec.version) for spec in requirement.specifier],
    )
  match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(;.*)?", line)
  assert match, f"cannot parse requirement {line!r}"
  specs = [
    re.fullmatch(r"\s*(==|>=|<=|!=|~=|<|>)\s*(\S+)\s*", spec).groups()
    for spec in match.group(3).split(",")
    if spec.strip()
  ]
  return canonicalize_name(match.group(1)), specs


def runtime_requirements():
  config = configparser.ConfigParser()
  config.read(os.path.join(ROOT, "setup.cfg"))
  lines = config["options"]["install_requires"].splitlines()
  return [parse(line) for line in lines if line.strip()]


def oldest_pins():
  pins = {}
  with open(os.path.join(ROOT, ".ci", "oldest.txt")) as f:
    for line in f:
      line = line.split("#", 1)[0].strip()
      if line:
        name, specs = parse(line)
        assert len(specs) == 1 and specs[0][0] == "==", (
          f".ci/oldest.txt: {line!r} is not name==version"
        )
        assert name not in pins, f".ci/oldest.txt pins {name} twice"
        pins[name] = specs[0][1]
  return pins


def test_oldest_constraints_pin_every_runtime_lower_bound_exactly():
  requirements, pins = runtime_requirements(), oldest_pins()
  assert requirements and "jax" in dict(requirements)
  for name, specs in requirements:
    lower = [version for operator, version in specs if operator == ">="]
    assert len(lower) == 1, f"setup.cfg: {name} needs exactly one lower bound (>=), has {specs}"
    assert name in pins, f".ci/oldest.txt does not pin {name} (setup.cfg: {name}>={lower[0]})"
    assert Version(pins[name]) == Version(lower[0]), (
      f".ci/oldest.txt pins {name}=={pins[name]}, setup.cfg's lower bound is {lower[0]}"
    )
  # jaxlib is jax's own dependency, pinned to match; nothing else is pinned.
  assert "jaxlib" in pins and Version(pins["jaxlib"]) == Version(pins["jax"])
  extra = set(pins) - {name for name, _ in requirements} - {"jaxlib"}
  assert not extra, f".ci/oldest.txt pins {sorted(extra)}, which are not runtime requirements"
