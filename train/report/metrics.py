"""Reading run directories back: metrics.jsonl, summary.json, layer names.

A run directory written by the trainer holds ``config.json``, one JSON object
per epoch in ``metrics.jsonl`` and, once the run has finished,
``summary.json``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike


def read_metrics(run_dir: PathLike) -> list[dict[str, Any]]:
  """Reads the per-epoch records of a run.

  Args:
    run_dir: a run directory holding ``metrics.jsonl``.

  Returns:
    One dict per epoch, in file order. A last line that is not valid JSON is
    dropped: a run killed while writing leaves such a line behind, and the
    epochs before it are still worth plotting.

  Raises:
    FileNotFoundError: ``metrics.jsonl`` is missing.
    ValueError: a line other than the last is not a JSON object, since that
      means the file is corrupt rather than cut short.
  """
  path = Path(run_dir) / "metrics.jsonl"
  lines = [(n, line) for n, line in
           enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
           if line.strip()]
  records = []
  for i, (lineno, line) in enumerate(lines):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        break
      raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from e
    if not isinstance(record, dict):
      raise ValueError(f"{path}:{lineno}: expected a JSON object, got "
                       f"{type(record).__name__}")
    records.append(record)
  return records


def _read_json(path: Path) -> dict[str, Any] | None:
  """A JSON object file, or None when it is absent or unreadable."""
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    # Plots are diagnostics: a missing or half-written summary should cost a
    # nicer label, not the whole figure.
    return None
  return data if isinstance(data, dict) else None


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
  return _read_json(run_dir / "summary.json")


def _run_label(run_dir: Path) -> str:
  summary = _read_summary(run_dir)
  if summary and summary.get("method"):
    return str(summary["method"])
  return run_dir.name


_KEY_RE = re.compile(
    r"\['((?:[^'\\]|\\.)*)'\]"   # ['name']
    r'|\["((?:[^"\\]|\\.)*)"\]'  # ["name"]
    r"|\[(-?\d+)\]"              # [0]
    r"|\.(\w+)")                 # .attribute


def short_layer_name(path: str) -> str:
  """A readable name for a parameter path written by ``jax.tree_util.keystr``.

  ``"['params']['layer1_0']['conv1']['kernel']"`` becomes
  ``"layer1_0/conv1/kernel"``: the ``params`` collection is the same for every
  layer, so it only costs space on the axis.

  Args:
    path: the path string; one that is not in keystr form is returned with
      just a leading ``params/`` removed.

  Returns:
    The path components joined with ``/``.
  """
  parts = [next(g for g in m.groups() if g is not None)
           for m in _KEY_RE.finditer(path)]
  if not parts:
    parts = [p for p in path.split("/") if p]
  if len(parts) > 1 and parts[0] == "params":
    parts = parts[1:]
  return "/".join(parts) if parts else path
