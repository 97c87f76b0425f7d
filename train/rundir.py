"""Run directories: where a run writes, how it writes (atomically, one line
on a failed write), its lock, and what it reads from other runs."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from train import parallel
from train._errors import UsageError
from train._lock import run_lock
from train.config import Config, finite


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


def path(cfg: Config, method: str, stamp: str) -> Path:
  """Where the run of ``method`` in ``cfg`` writes."""
  name = cfg.run_name or f"{stamp}-{cfg.model}-{cfg.dataset}-{method}"
  if cfg.compare and cfg.run_name:
    name = f"{cfg.run_name}-{method}"
  return Path(cfg.out) / name


@contextlib.contextmanager
def writing(what: str) -> Iterator[None]:
  """A failed write (full disk, read-only) becomes one line naming ``what``;
  an OSError raised by ``write`` itself carries no file name."""
  try:
    yield
  except OSError as e:
    raise UsageError(f"cannot write {what}: {e.strerror or e}") from None


def write_atomic(path: Path, text: str) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  with writing(str(path)):
    tmp.write_text(text)
    os.replace(tmp, path)


def append(path: Path, text: str) -> None:
  with writing(str(path)), path.open("a") as f:
    f.write(text)


def lock(run_dir: Path) -> contextlib.AbstractContextManager:
  """The run directory's lock, taken by the process that writes."""
  # Process 0 speaks for the run; the others of a multi-process run follow
  # it (and may not share its file system).
  return run_lock(run_dir) if parallel.is_main() else contextlib.nullcontext()


def create(run_dir: Path, config: dict[str, Any], sync_name: str) -> None:
  """Makes ``run_dir`` with its ``config.json``; one line if it exists or
  cannot be written. Process 0 writes, the others wait for it."""
  if parallel.is_main():
    if run_dir.exists():
      raise UsageError(f"--out: run directory {run_dir} already exists "
                       "(choose another --run-name, or --resume it)")
    try:
      run_dir.mkdir(parents=True)
      write_atomic(run_dir / "config.json",
                   json.dumps(config, indent=2, sort_keys=True))
    except OSError as e:
      raise UsageError(f"--out: cannot write run directory {run_dir}: "
                       f"{e.strerror or e}") from None
  parallel.sync(sync_name)
