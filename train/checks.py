"""A run's configuration, built and checked as a whole.

``train.config`` holds the option table and checks each option alone; what
needs several options, the method registry or the channel-group rules is
here, above both, so the layers import one way: config <- methods <- checks.
Everything raises :class:`UsageError` before a run directory exists, so bad
input never leaves a half-written run behind.
"""

from __future__ import annotations

from typing import Any, Optional

from train import methods as methods_lib
from train import rundir
from train import structure
from train.config import (Config, LR_SCHEDULES, check, check_fields, finite,
                          flag, merge, parse_piecewise)


def build(preset: Optional[str], file: Optional[str],
          flags: dict[str, Any]) -> Config:
  """Merges the layers (defaults < preset < file < flags) and validates."""
  cfg, given = merge(preset, file, flags)
  validate(cfg)
  _check_target_flags(cfg, given)
  return cfg


def _check_target_flags(cfg: Config, given: set[str]) -> None:
  """The checks that need to know what the user set (a preset's ``l1`` is
  no conflict), so they run on new runs only, not on ``--resume``, whose
  config.json holds every field."""
  check(not {"target_sparsity", "target_sparsity_from"} <= given,
        "--target-sparsity and --target-sparsity-from: give one of them")
  takes = [m for m in cfg.methods if methods_lib.get(m).takes_target]
  if takes and given & {"target_sparsity", "target_sparsity_from"}:
    for name in ("l1", "l1_schedule"):
      check(name not in given, f"{flag(name)} cannot be combined with a "
            f"target sparsity for {takes[0]} (lambda_t is then chosen to "
            "reach the target)")


def validate(cfg: Config) -> None:
  """Raises UsageError naming the first bad option."""
  if cfg.run_name is not None:
    # A name, not a path: a run directory always lands inside --out.
    check(cfg.run_name not in ("", ".", "..") and "/" not in cfg.run_name
          and "\0" not in cfg.run_name,
          f"--run-name must be a plain directory name, got {cfg.run_name!r}")
  check_fields(cfg)
  _check_methods(cfg)
  check(cfg.total_epochs >= 1, "--epochs + --asr-epochs must be >= 1")
  check(cfg.lr_schedule in LR_SCHEDULES or ":" in cfg.lr_schedule,
        f"--lr-schedule: expected one of {', '.join(LR_SCHEDULES)} or "
        f"EPOCH:VALUE,..., got {cfg.lr_schedule!r}")
  for name in ("gamma_schedule", "l1_schedule"):
    for _, v in parse_piecewise(getattr(cfg, name), name):
      check(finite(v) and (v > 0 if name == "gamma_schedule" else v >= 0),
            f"{flag(name)}: bad value {v}")
  if ":" in cfg.lr_schedule:
    for _, v in parse_piecewise(cfg.lr_schedule, "lr_schedule"):
      check(finite(v) and v > 0, f"--lr-schedule: bad value {v}")
  structure.check(cfg)
  for m in cfg.methods:
    method_check = methods_lib.get(m).check
    if method_check is not None:
      method_check(cfg)
  if cfg.target_sparsity is None and cfg.target_sparsity_from is not None:
    rundir.target_from_run(cfg.target_sparsity_from)
  check(0 <= cfg.debias_epochs <= cfg.asr_epochs,
        f"--debias-epochs must be in [0, --asr-epochs = {cfg.asr_epochs}] "
        f"(without ASR's frozen zeros, l1 = 0 would undo the sparsity), "
        f"got {cfg.debias_epochs}")
  if cfg.dataset == "folder":
    check(cfg.data_dir is not None, "--dataset folder needs --data-dir")


def _check_methods(cfg: Config) -> None:
  """``--method`` and ``--compare`` against the registry, and the target
  each method needs or refuses."""
  known = methods_lib.names()
  check(cfg.method in known,
        f"--method: unknown method {cfg.method!r}; valid: {', '.join(known)}")
  # An empty list would silently run --method alone.
  check(cfg.compare is None or cfg.compare.strip() != "",
        f"--compare: no method given; valid: {', '.join(known)}")
  has_target = (cfg.target_sparsity is not None
                or cfg.target_sparsity_from is not None)
  if cfg.compare:
    methods = cfg.methods
    for m in methods:
      check(m in known,
            f"--compare: unknown method {m!r}; valid: {', '.join(known)}")
    dup = sorted({m for m in methods if methods.count(m) > 1})
    check(not dup, f"--compare: {', '.join(dup)} given more than once")
    if not has_target and "rda" not in methods:
      for m in methods:
        check(not methods_lib.get(m).needs_target,
              f"--compare: {m} needs --target-sparsity, "
              "--target-sparsity-from, or rda in --compare")
    return
  m = methods_lib.get(cfg.method)
  check(has_target or not m.needs_target,
        f"--method {cfg.method} needs --target-sparsity or "
        "--target-sparsity-from")
  with_target = [n for n in known if methods_lib.get(n).needs_target
                 or methods_lib.get(n).takes_target]
  check(not has_target or m.needs_target or m.takes_target,
        f"--method {cfg.method} cannot train to a target sparsity (its "
        "sparsity comes from --l1 alone); drop --target-sparsity"
        f"{'-from' if cfg.target_sparsity is None else ''}, or use "
        + ", ".join(with_target))
