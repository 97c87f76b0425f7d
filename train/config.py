"""The run configuration: defaults < preset < --config file < flags.

Every check on user input lives here (or in the data loaders) and raises
:class:`UsageError` before a run directory exists, so bad input never leaves
a half-written run behind.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Optional

import models
from train._errors import UsageError
from train.presets import PRESETS

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "imagenet2012", "folder")
LR_SCHEDULES = ("constant", "cosine", "onecycle")
# How a target sparsity is spread over the kernels (rda_optax._allocation).
SPARSITY_DISTRIBUTIONS = ("uniform", "erk", "global")
# Decoded images are held in memory as uint8: even 1,000 images of 1024 px
# take 3 GB. Larger sizes are a typo far more often than an intent.
MAX_IMAGE_SIZE = 1024


@dataclasses.dataclass
class Config:
  """All options of a run; ``rda-train --help`` documents each field."""
  model: str = "small_cnn"
  dataset: str = "digits"
  data_dir: Optional[str] = None
  test_dir: Optional[str] = None
  val_fraction: float = 0.1
  method: str = "rda"
  compare: Optional[str] = None
  epochs: int = 30
  asr_epochs: int = 10
  batch_size: int = 128
  eval_batch_size: int = 1000
  gamma: float = 1.0
  l1: float = 1e-4
  l2: float = 0.0
  center: str = "zero"
  gamma_schedule: str = ""
  l1_schedule: str = ""
  debias_epochs: int = 0
  init_scale: Optional[float] = None
  lr: float = 0.1
  lr_schedule: str = "cosine"
  momentum: float = 0.9
  weight_decay: float = 5e-4
  finetune_lr_scale: float = 0.1
  label_smoothing: float = 0.0
  augment: str = "auto"
  dtype: str = "auto"
  target_sparsity: Optional[float] = None
  target_sparsity_from: Optional[str] = None
  prune_scope: str = "layer"
  sparsity_distribution: str = "auto"
  target_ramp: Optional[float] = None
  threshold_samples: Optional[int] = None
  gmp_start_epoch: int = 0
  gmp_end_epoch: int = 0
  gmp_every: int = 100
  rigl_alpha: float = 0.3
  rigl_delta_t: int = 100
  rigl_t_end_fraction: float = 0.75
  structure: str = "none"
  group_l1: Optional[float] = None
  group_weighting: str = "size"
  bn_l1: float = 1e-4
  target_flops: Optional[float] = None
  target_flops_from: Optional[str] = None
  prune_channels: Optional[float] = None
  seed: int = 0
  val_seed: Optional[int] = None
  out: str = "runs"
  run_name: Optional[str] = None
  checkpoint_every: int = 10
  max_bad_steps: int = 10
  image_size: Optional[int] = None
  num_classes: Optional[int] = None
  devices: Optional[int] = None
  fsdp: int = 1
  data_sharding: str = "auto"
  skip_bad_images: bool = False
  cache_dir: Optional[str] = None
  progress: str = "auto"
  preset: Optional[str] = None

  @property
  def total_epochs(self) -> int:
    return self.epochs + self.asr_epochs


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def parse_piecewise(spec: str, name: str) -> list[tuple[int, float]]:
  """``"0:1.0,100:0.2"`` -> ``[(0, 1.0), (100, 0.2)]``: value from epoch on."""
  if not spec:
    return []
  out = []
  for part in spec.split(","):
    try:
      e, v = part.split(":")
      out.append((int(e), float(v)))
    except ValueError:
      raise UsageError(
          f"--{name.replace('_', '-')}: expected EPOCH:VALUE[,EPOCH:VALUE...],"
          f" got {spec!r}") from None
  epochs = [e for e, _ in out]
  if epochs != sorted(set(epochs)) or epochs[0] < 0:
    raise UsageError(f"--{name.replace('_', '-')}: epochs must be increasing "
                     f"and >= 0, got {spec!r}")
  return out


def build(preset: Optional[str], file: Optional[str],
          flags: dict[str, Any]) -> Config:
  """Merges the layers and validates the result."""
  values: dict[str, Any] = {}
  from_file = _read_config_file(file) if file is not None else {}
  # A file may name its preset; --preset on the command line wins.
  file_preset = from_file.pop("preset", None)
  preset = preset if preset is not None else file_preset
  if preset is not None:
    if preset not in PRESETS:
      raise UsageError(f"unknown preset {preset!r}; valid: "
                       f"{', '.join(PRESETS)} (see --list-presets)")
    values.update({k: v for k, v in PRESETS[preset].items() if k != "help"})
    values["preset"] = preset
  values.update(from_file)
  given = {k: v for k, v in flags.items() if v is not None}
  values.update(given)
  cfg = Config(**values)
  validate(cfg)
  _check_target_flags(cfg, set(from_file) | set(given))
  return cfg


def _check_target_flags(cfg: Config, given: set[str]) -> None:
  """The checks that need to know what the user set (a preset's ``l1`` is
  no conflict), so they run on new runs only, not on ``--resume``, whose
  config.json holds every field."""
  _check(not {"target_sparsity", "target_sparsity_from"} <= given,
         "--target-sparsity and --target-sparsity-from: give one of them")
  methods = cfg.compare.split(",") if cfg.compare else [cfg.method]
  if "rda" in methods and given & {"target_sparsity", "target_sparsity_from"}:
    for name in ("l1", "l1_schedule"):
      _check(name not in given, f"--{name.replace('_', '-')} cannot be "
             "combined with a target sparsity for rda (lambda_t is then "
             "chosen to reach the target)")


def _read_config_file(file: str) -> dict[str, Any]:
  path = Path(file)
  try:
    data = json.loads(path.read_text())
  except FileNotFoundError:
    raise UsageError(f"--config: {file} does not exist") from None
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f"--config: cannot read {file}: {e}") from None
  except json.JSONDecodeError as e:
    raise UsageError(f"--config: {file} is not valid JSON: {e}") from None
  if not isinstance(data, dict):
    raise UsageError(f"--config: {file} must hold a JSON object")
  unknown = sorted(set(data) - set(FIELDS))
  if unknown:
    raise UsageError(f"--config: {file}: unknown key(s) {', '.join(unknown)}")
  for k, v in data.items():
    data[k] = _coerce(k, v, f"--config {file}: {k}")
  return data


_OPTIONAL_TYPES = {"Optional[int]": int, "Optional[float]": float,
                   "Optional[str]": str}


def _coerce(name: str, value: Any, where: str) -> Any:
  """Checks a config-file value against the field's type."""
  default = FIELDS[name].default
  if value is None:
    if default is not None:
      # null means "unset" only where unset is a valid state of the field.
      raise UsageError(f"{where}: null is not allowed (default {default!r})")
    return None
  # A field unset by default takes its type from its annotation (a string
  # under postponed evaluation).
  typ = (type(default) if default is not None
         else _OPTIONAL_TYPES[FIELDS[name].type])
  if typ is bool:
    if not isinstance(value, bool):
      raise UsageError(f"{where}: expected true/false, got {value!r}")
  elif typ is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise UsageError(f"{where}: expected an integer, got {value!r}")
  elif typ is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise UsageError(f"{where}: expected a number, got {value!r}")
    value = float(value)
  elif typ is str:
    if not isinstance(value, str):
      raise UsageError(f"{where}: expected a string, got {value!r}")
  return value


def _check(cond: bool, msg: str) -> None:
  if not cond:
    raise UsageError(msg)


def _finite(x: float) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def validate(cfg: Config) -> None:
  """Raises UsageError naming the first bad option."""
  if cfg.run_name is not None:
    # A name, not a path: a run directory always lands inside --out.
    _check(cfg.run_name not in ("", ".", "..") and "/" not in cfg.run_name
           and "\0" not in cfg.run_name,
           f"--run-name must be a plain directory name, got {cfg.run_name!r}")
  _check(cfg.model in models.names(),
         f"--model: unknown model {cfg.model!r}; valid: {', '.join(models.names())}")
  _check(cfg.dataset in DATASETS,
         f"--dataset: unknown data set {cfg.dataset!r}; valid: {', '.join(DATASETS)}")
  # The registry imports this module (its optimizers take a Config).
  from train import methods as methods_lib  # pylint: disable=g-import-not-at-top
  known = methods_lib.names()
  _check(cfg.method in known,
         f"--method: unknown method {cfg.method!r}; valid: {', '.join(known)}")
  # An empty list would silently run --method alone.
  _check(cfg.compare is None or cfg.compare.strip() != "",
         f"--compare: no method given; valid: {', '.join(known)}")
  if cfg.compare:
    methods = cfg.compare.split(",")
    for m in methods:
      _check(m in known, f"--compare: unknown method {m!r}; valid: {', '.join(known)}")
    dup = sorted({m for m in methods if methods.count(m) > 1})
    _check(not dup, f"--compare: {', '.join(dup)} given more than once")
    if (cfg.target_sparsity is None and cfg.target_sparsity_from is None
        and "rda" not in methods):
      for m in methods:
        _check(not methods_lib.get(m).needs_target,
               f"--compare: {m} needs --target-sparsity, "
               "--target-sparsity-from, or rda in --compare")
  _check(cfg.epochs >= 0, f"--epochs must be >= 0, got {cfg.epochs}")
  _check(cfg.asr_epochs >= 0, f"--asr-epochs must be >= 0, got {cfg.asr_epochs}")
  _check(cfg.total_epochs >= 1, "--epochs + --asr-epochs must be >= 1")
  _check(cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}")
  _check(cfg.eval_batch_size >= 1,
         f"--eval-batch-size must be >= 1, got {cfg.eval_batch_size}")
  _check(_finite(cfg.gamma) and cfg.gamma > 0, f"--gamma must be > 0, got {cfg.gamma}")
  _check(_finite(cfg.l1) and cfg.l1 >= 0, f"--l1 must be >= 0, got {cfg.l1}")
  _check(_finite(cfg.l2) and cfg.l2 >= 0, f"--l2 must be >= 0, got {cfg.l2}")
  _check(cfg.center in ("zero", "init"), f"--center must be zero or init, got {cfg.center!r}")
  _check(_finite(cfg.lr) and cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}")
  _check(_finite(cfg.momentum) and 0 <= cfg.momentum < 1,
         f"--momentum must be in [0, 1), got {cfg.momentum}")
  _check(_finite(cfg.weight_decay) and cfg.weight_decay >= 0,
         f"--weight-decay must be >= 0, got {cfg.weight_decay}")
  _check(_finite(cfg.finetune_lr_scale) and cfg.finetune_lr_scale > 0,
         f"--finetune-lr-scale must be > 0, got {cfg.finetune_lr_scale}")
  _check(_finite(cfg.label_smoothing) and 0 <= cfg.label_smoothing < 1,
         f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
  _check(_finite(cfg.val_fraction) and 0 <= cfg.val_fraction < 1,
         f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
  if cfg.init_scale is not None:
    _check(_finite(cfg.init_scale) and cfg.init_scale > 0,
           f"--init-scale must be > 0, got {cfg.init_scale}")
  _check(cfg.lr_schedule in LR_SCHEDULES or ":" in cfg.lr_schedule,
         f"--lr-schedule: expected one of {', '.join(LR_SCHEDULES)} or "
         f"EPOCH:VALUE,..., got {cfg.lr_schedule!r}")
  for name in ("gamma_schedule", "l1_schedule"):
    for _, v in parse_piecewise(getattr(cfg, name), name):
      _check(_finite(v) and (v > 0 if name == "gamma_schedule" else v >= 0),
             f"--{name.replace('_', '-')}: bad value {v}")
  if ":" in cfg.lr_schedule:
    for _, v in parse_piecewise(cfg.lr_schedule, "lr_schedule"):
      _check(_finite(v) and v > 0, f"--lr-schedule: bad value {v}")
  _check(cfg.augment in ("auto", "none", "crop", "crop-flip"),
         f"--augment must be auto, none, crop or crop-flip, got {cfg.augment!r}")
  _check(cfg.dtype in ("auto", "float32", "bfloat16"),
         f"--dtype must be auto, float32 or bfloat16, got {cfg.dtype!r}")
  _check(cfg.prune_scope in ("layer", "global"),
         f"--prune-scope must be layer or global, got {cfg.prune_scope!r}")
  if cfg.target_sparsity is not None:
    _check(_finite(cfg.target_sparsity) and 0 <= cfg.target_sparsity < 1,
           f"--target-sparsity must be in [0, 1), got {cfg.target_sparsity}")
  _check(cfg.sparsity_distribution in ("auto",) + SPARSITY_DISTRIBUTIONS,
         f"--sparsity-distribution must be auto, "
         f"{', '.join(SPARSITY_DISTRIBUTIONS)}, got {cfg.sparsity_distribution!r}")
  _check(cfg.gmp_start_epoch >= 0,
         f"--gmp-start-epoch must be >= 0, got {cfg.gmp_start_epoch}")
  _check(cfg.gmp_end_epoch >= 0,
         f"--gmp-end-epoch must be >= 0 (0: --epochs), got {cfg.gmp_end_epoch}")
  _check(cfg.gmp_every >= 1, f"--gmp-every must be >= 1, got {cfg.gmp_every}")
  _check(_finite(cfg.rigl_alpha) and 0 < cfg.rigl_alpha <= 1,
         f"--rigl-alpha must be in (0, 1], got {cfg.rigl_alpha}")
  _check(cfg.rigl_delta_t >= 1,
         f"--rigl-delta-t must be >= 1, got {cfg.rigl_delta_t}")
  _check(_finite(cfg.rigl_t_end_fraction) and 0 < cfg.rigl_t_end_fraction <= 1,
         f"--rigl-t-end-fraction must be in (0, 1], got {cfg.rigl_t_end_fraction}")
  from train import structure  # pylint: disable=g-import-not-at-top
  structure.check(cfg)
  for m in (cfg.compare.split(",") if cfg.compare else [cfg.method]):
    check = methods_lib.get(m).check
    if check is not None:
      check(cfg)
  has_target = (cfg.target_sparsity is not None
                or cfg.target_sparsity_from is not None)
  if not cfg.compare:
    m = methods_lib.get(cfg.method)
    _check(has_target or not m.needs_target,
           f"--method {cfg.method} needs --target-sparsity or --target-sparsity-from")
    _check(not has_target or m.needs_target or m.takes_target,
           f"--method {cfg.method} cannot train to a target sparsity (its "
           "sparsity comes from --l1 alone); drop --target-sparsity"
           f"{'-from' if cfg.target_sparsity is None else ''}, or use "
           + ", ".join(n for n in known if methods_lib.get(n).needs_target
                       or methods_lib.get(n).takes_target))
  if cfg.target_sparsity is None and cfg.target_sparsity_from is not None:
    target_from_run(cfg.target_sparsity_from)
  if cfg.target_ramp is not None:
    _check(_finite(cfg.target_ramp) and 0 <= cfg.target_ramp <= 1,
           f"--target-ramp must be in [0, 1], got {cfg.target_ramp}")
  if cfg.threshold_samples is not None:
    _check(cfg.threshold_samples >= 1,
           f"--threshold-samples must be >= 1, got {cfg.threshold_samples}")
  _check(0 <= cfg.debias_epochs <= cfg.asr_epochs,
         f"--debias-epochs must be in [0, --asr-epochs = {cfg.asr_epochs}] "
         f"(without ASR's frozen zeros, l1 = 0 would undo the sparsity), "
         f"got {cfg.debias_epochs}")
  _check(cfg.checkpoint_every >= 1,
         f"--checkpoint-every must be >= 1, got {cfg.checkpoint_every}")
  _check(cfg.max_bad_steps >= 1, f"--max-bad-steps must be >= 1, got {cfg.max_bad_steps}")
  _check(cfg.progress in ("auto", "bar", "lines", "none"),
         f"--progress must be auto, bar, lines or none, got {cfg.progress!r}")
  if cfg.dataset == "folder":
    _check(cfg.data_dir is not None, "--dataset folder needs --data-dir")
  if cfg.devices is not None:
    _check(cfg.devices >= 1, f"--devices must be >= 1, got {cfg.devices}")
  _check(cfg.fsdp >= 1, f"--fsdp must be >= 1, got {cfg.fsdp}")
  _check(cfg.data_sharding in ("auto", "replicated", "sharded"),
         f"--data-sharding must be auto, replicated or sharded, got "
         f"{cfg.data_sharding!r}")
  if cfg.num_classes is not None:
    _check(cfg.num_classes >= 2, f"--num-classes must be >= 2, got {cfg.num_classes}")
  if cfg.image_size is not None:
    _check(1 <= cfg.image_size <= MAX_IMAGE_SIZE,
           f"--image-size must be in [1, {MAX_IMAGE_SIZE}], got {cfg.image_size}")
  # numpy's and JAX's generators take unsigned 64-bit and signed 64-bit seeds.
  _check(isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool)
         and 0 <= cfg.seed < 2**63,
         f"--seed must be in [0, 2**63), got {cfg.seed}")
  if cfg.val_seed is not None:
    _check(0 <= cfg.val_seed < 2**63,
           f"--val-seed must be in [0, 2**63), got {cfg.val_seed}")


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
  if not (_finite(s) and 0 <= s < 1):
    raise UsageError(f"{flag}: {Path(run_dir) / 'summary.json'}: sparsity "
                     f"{s!r} not in [0, 1)")
  return float(s)
