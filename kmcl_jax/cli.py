"""What the command-line programs (`main`, `compare`) share."""

from __future__ import annotations

import os
import sys


def put_config_package_on_path(argv: list[str], default: str | None = None) -> None:
  """Lets the config file of --config=PATH (or `default` without the flag) `import
  configs.base` from the folder above its own."""
  paths = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
  for path in paths or ([default] if default else []):
    path = path.split(":", 1)[0]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(path))))
