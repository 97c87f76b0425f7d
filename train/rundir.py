"""What the trainer reads from other run directories: their summary.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from train._errors import UsageError
from train.config import finite


def summary_value(run_dir: str, flag: str, keys: tuple[str, ...],
                  what: str) -> Any:
  """``summary.json[keys...]`` of the run that ``flag`` names; one line
  naming the flag and the file when it is missing or unreadable."""
  path = Path(run_dir) / "summary.json"
  try:
    value = json.loads(path.read_text())
    for key in keys:
      value = value[key]
  except FileNotFoundError:
    raise UsageError(f"{flag}: {path} does not exist "
                     "(has that run finished?)") from None
  except (OSError, ValueError, KeyError, TypeError):
    raise UsageError(f"{flag}: {path} has no readable {what}") from None
  return value


def target_from_run(run_dir: str) -> float:
  """The sparsity another run reached, from its summary.json."""
  flag = "--target-sparsity-from"
  s = summary_value(run_dir, flag, ("sparsity",), "'sparsity'")
  if not (finite(s) and 0 <= s < 1):
    raise UsageError(f"{flag}: {Path(run_dir) / 'summary.json'}: sparsity "
                     f"{s!r} not in [0, 1)")
  return float(s)
