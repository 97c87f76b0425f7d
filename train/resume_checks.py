"""What ``--resume`` checks in a run directory before it trusts it.

A run directory can be damaged between runs: ``config.json`` edited into a
list or given a wrong type, ``metrics.jsonl`` cut or garbled, a checkpoint
file lost (``train.checkpoint.Checkpoints.restore_newest_intact``). Each
case here is one ``UsageError`` line naming the file, raised before any
file of the run is rewritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from train import checks
from train import config as config_lib
from train import report
from train._errors import UsageError


def load_config(run_dir: Path, overrides: dict[str, Any]) -> config_lib.Config:
  """The run's configuration, checked as a ``--config`` file is.

  Args:
    run_dir: the run directory.
    overrides: the flags that may change on resume (None means unset).

  Raises:
    UsageError: config.json is missing, not JSON, not an object, has an
      unknown key, a value of the wrong type, or an invalid value.
  """
  path = run_dir / "config.json"
  if not path.is_file():
    raise UsageError(f"--resume: {path} does not exist (not a run directory)")
  try:
    raw = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UsageError(f"--resume: cannot read {path}: {e}") from None
  if not isinstance(raw, dict):
    raise UsageError(f"--resume: {path} must hold a JSON object, not "
                     f"{type(raw).__name__}")
  unknown = sorted(set(raw) - set(config_lib.FIELDS))
  if unknown:
    raise UsageError(f"--resume: {path} is not a config of this version: "
                     f"unknown key(s) {', '.join(unknown)}")
  for k, v in raw.items():
    raw[k] = config_lib.coerce(k, v, f"--resume: {path}: {k}")
  raw.update({k: v for k, v in overrides.items() if v is not None})
  try:
    cfg = config_lib.Config(**raw)
  except TypeError as e:
    raise UsageError(f"--resume: {path} is not a config of this version: "
                     f"{e}") from None
  checks.validate(cfg)
  return cfg


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
  """metrics.jsonl's rows; a missing file has none.

  Raises:
    UsageError: a line other than the last is not a JSON object (a last
      line cut by a kill is dropped), or a row has no integer ``epoch``, or
      the epochs do not run 1, 2, 3, ...
  """
  path = run_dir / "metrics.jsonl"
  if not path.exists():
    return []  # A run killed before its first epoch has none yet.
  try:
    rows = report.read_metrics(run_dir)
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f"--resume: cannot read {path}: {e}") from None
  except ValueError as e:
    raise UsageError(f"--resume: {e}; the log is corrupt, so the run cannot "
                     "be continued consistently") from None
  for i, row in enumerate(rows, start=1):
    epoch = row.get("epoch")
    if isinstance(epoch, bool) or epoch != i:
      raise UsageError(f"--resume: {path}: row {i} has epoch {epoch!r}, "
                       f"expected {i}; the log is corrupt")
  return rows


def rows_up_to(run_dir: Path, epoch: int) -> list[dict[str, Any]]:
  """The rows of epochs 1..``epoch``, which the checkpoint of ``epoch``
  continues from; later rows belong to epochs about to be replayed.

  Raises:
    UsageError: the log is corrupt (``read_rows``) or lost rows before
      ``epoch``: continuing would leave those epochs out of the log and take
      the summary from the wrong epoch.
  """
  rows = read_rows(run_dir)
  if len(rows) < epoch:
    have = f"epochs 1-{len(rows)}" if rows else "no epochs"
    raise UsageError(
        f"--resume: {run_dir / 'metrics.jsonl'} holds {have} but the "
        f"checkpoint is of epoch {epoch}: the log lost lines, so the run "
        "cannot be continued consistently; start it again")
  return rows[:epoch]


def finished(run_dir: Path, cfg: config_lib.Config) -> Optional[dict[str, Any]]:
  """The summary of a run that has already trained all its epochs, or None.

  A run is finished once summary.json exists for its number of epochs and
  its final checkpoint is on disk (raising ``epochs`` in config.json, or
  losing the final checkpoint, makes it continue from the newest one).
  """
  if not (run_dir / "checkpoints" / str(cfg.total_epochs)).is_dir():
    return None
  path = run_dir / "summary.json"
  try:
    summary = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  if not isinstance(summary, dict) or summary.get("epochs") != cfg.total_epochs:
    return None
  return summary
