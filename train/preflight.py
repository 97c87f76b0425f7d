"""Checks of a run that need more than its flags, made before anything is
written.

``config.validate`` checks each option on its own. What is here needs the
machine (the device count), other files (a source run, existing run
directories), or the data's size (steps per epoch), and would otherwise
fail after a run directory exists or after other ``--compare`` methods have
trained for minutes.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Optional, Sequence

from train import parallel
from train._errors import UsageError
from train.config import Config, parse_piecewise

# The step counter and optax's schedules count in int32.
MAX_STEPS = 2**31 - 1


def stamp(cfg: Config, now: Optional[datetime.datetime] = None) -> str:
  """The time part of default run names: launches that differ only in
  ``--seed`` start in the same second, so the seed is part of it."""
  now = now or datetime.datetime.now()
  return f"{now:%Y%m%d-%H%M%S}-seed{cfg.seed}"


def check(cfg: Config, run_dirs: Sequence[Path], main: bool = True) -> None:
  """Everything that can be checked before the data is loaded.

  Args:
    cfg: the validated configuration.
    run_dirs: the run directories about to be made.
    main: this process writes the run directories (process 0).

  Raises:
    UsageError: the first problem, in one line.
  """
  parallel.topology(cfg.devices, cfg.fsdp)  # more devices than the machine
  _check_epochs(cfg)
  if cfg.target_sparsity_from is not None and cfg.target_sparsity is None:
    check_source_run(cfg, cfg.target_sparsity_from)
  if cfg.target_flops_from is not None:
    flag = "--target-flops-from"
    other = check_source_run(cfg, cfg.target_flops_from, flag, "FLOPs ratio")
    # Only a run that removed channels has a FLOPs ratio to match; an
    # element-wise one reports 1.0, and net-slim would prune nothing.
    if other.get("method") != "net-slim" and other.get("structure",
                                                        "none") == "none":
      raise UsageError(
          f"{flag}: {cfg.target_flops_from} trained {other.get('method')!r} "
          "without --structure (no channel removed, FLOPs ratio 1.0); its "
          "FLOPs ratio is no target for this run")
  if main:
    for d in run_dirs:
      if d.exists():
        raise UsageError(f"--out: run directory {d} already exists "
                         "(choose another --run-name, or --resume it)")


def _check_epochs(cfg: Config) -> None:
  _bound(cfg.total_epochs, 1, "--epochs + --asr-epochs")
  for name in ("gamma_schedule", "l1_schedule", "lr_schedule"):
    spec = getattr(cfg, name)
    if ":" in spec:
      for epoch, _ in parse_piecewise(spec, name):
        _bound(epoch, 1, f"--{name.replace('_', '-')}: epoch")


def _bound(epochs: int, steps_per_epoch: int, what: str) -> None:
  if epochs * steps_per_epoch > MAX_STEPS:
    per = f" x {steps_per_epoch} steps per epoch" if steps_per_epoch > 1 else ""
    raise UsageError(f"{what} {epochs}{per} is more than the {MAX_STEPS} "
                     "steps a run can count")


def check_steps(cfg: Config, train_images: int) -> None:
  """Epoch counts against the data's steps per epoch (at most
  ``ceil(images / batch)``), once the data is loaded."""
  spe = math.ceil(train_images / cfg.batch_size)
  _bound(cfg.total_epochs, spe, "--epochs + --asr-epochs")
  for name in ("gamma_schedule", "l1_schedule", "lr_schedule"):
    spec = getattr(cfg, name)
    if ":" in spec:
      for epoch, _ in parse_piecewise(spec, name):
        _bound(epoch, spe, f"--{name.replace('_', '-')}: epoch")


def check_source_run(cfg: Config, source: str,
                     flag: str = "--target-sparsity-from",
                     what: str = "sparsity") -> dict:
  """``--target-sparsity-from`` (``--target-flops-from``) must name a run of
  the same model and data: another network's sparsity (FLOPs ratio) is no
  target for this one. Returns the source run's config.json."""
  path = Path(source) / "config.json"
  try:
    other = json.loads(path.read_text())
  except (OSError, ValueError):
    raise UsageError(f"{flag}: cannot read {path}") from None
  if not isinstance(other, dict):
    raise UsageError(f"{flag}: {path} is not a JSON object")
  for key in ("model", "dataset", "data_dir", "image_size"):
    mine, theirs = getattr(cfg, key), other.get(key)
    if key == "data_dir" and isinstance(theirs, str) and mine is not None:
      # The same folder given by another relative path, or from elsewhere.
      mine, theirs = (Path(p).resolve().name for p in (mine, theirs))
    if mine != theirs:
      raise UsageError(
          f"{flag}: {source} trained {key} {theirs!r}, this "
          f"run {key} {mine!r}; its {what} is no target for this run")
  return other
