"""The run configuration: one table of options, and how a run's is merged.

Every option of a run is a field of :class:`Config`, declared once with
:func:`option`: its type and default (the annotation and the value), its
``--help`` group and text, and the checks that need no other option (a range
or a set of choices). The parser (``train.cli``), ``config.json``, the
``--config`` file reader and :func:`check_fields` all read this table.
Checks across options or against the method registry are ``train.checks``'s.
Layers: defaults < preset < ``--config`` file < flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Union

import models
import rda_optax
from train._errors import UsageError
from train.data import DATASETS
from train.presets import PRESETS

LR_SCHEDULES = ("constant", "cosine", "onecycle")
# How a target sparsity is spread over the kernels (rda_optax._allocation).
SPARSITY_DISTRIBUTIONS = ("uniform", "erk", "global", "magnitude")
# Decoded images are held in memory as uint8: even 1,000 images of 1024 px
# take 3 GB. Larger sizes are a typo far more often than an intent.
MAX_IMAGE_SIZE = 1024
# numpy's and JAX's generators take unsigned and signed 64-bit seeds.
_SEEDS = (0, 2**63, "2**63")

# The --help groups, in the order they print.
RUN, DATA, PHASES, RDA, SGD, GMP, CHANNEL, DEVICES, OTHER = (
    "what to run", "data", "phases and batch",
    "RDA and the proximal family (rmda, grda, prox-adam)",
    "SGD, prox-SGD and the pruning methods",
    "GMP (Zhu & Gupta 2017), RigL (Evci et al. 2020)",
    "channel sparsity: group RDA, network slimming",
    "devices and hosts (docs/SCALING.md)", "everything else")
GROUPS = (RUN, DATA, PHASES, RDA, SGD, GMP, CHANNEL, DEVICES, OTHER)

Choices = Union[tuple[str, ...], Callable[[], tuple[str, ...]]]


def option(default: Any, group: str, help: str, *,  # pylint: disable=redefined-builtin
           choices: Optional[Choices] = None,
           lo: Optional[float] = None, hi: Optional[float] = None,
           lo_open: bool = False, hi_open: bool = True,
           hi_text: Optional[str] = None, flag: bool = True,
           metavar: Optional[str] = None) -> Any:
  """A field of :class:`Config`, with what ``--help`` and the checks read.

  ``help`` gets " (default X)" appended unless it names its default itself
  or the default is None. ``lo``/``hi`` bound the value (``lo`` alone: a
  lower bound); ``choices`` is a tuple or a function of none returning one
  (a registry). ``flag=False``: recorded in config.json, set another way.
  """
  return dataclasses.field(default=default, metadata=dict(
      group=group, help=help, choices=choices, lo=lo, hi=hi, lo_open=lo_open,
      hi_open=hi_open, hi_text=hi_text, flag=flag, metavar=metavar))


@dataclasses.dataclass
class Config:
  """All options of a run; ``python -m train --help`` lists each field."""
  model: str = option("small_cnn", RUN, "resnet18, resnet18_imagenet, "
                      "vgg16bn, vgg19bn or small_cnn", choices=models.names)
  dataset: str = option(
      "digits", DATA, "digits (scikit-learn, offline), mnist, cifar10, "
      "cifar100, imagenet2012 (TensorFlow Datasets) or folder (--data-dir is "
      "an image folder or tarball laid out [split/]class/image)",
      choices=DATASETS)
  data_dir: Optional[str] = option(
      None, DATA, "tfds data_dir (imagenet2012: its manual download "
      "directory) or the image folder / tarball")
  test_dir: Optional[str] = option(
      None, DATA, "test images, same layout as a folder source; replaces the "
      "data set's own test split")
  val_fraction: float = option(
      0.1, DATA, "share of the training data held out for validation",
      lo=0, hi=1)
  method: str = option("rda", RUN, "{methods} (default rda)")
  compare: Optional[str] = option(
      None, RUN, "comma-separated methods to run side by side with the same "
      "settings, e.g. rda,sgd")
  epochs: int = option(
      30, PHASES, "epochs of the first phase (RDA / prox-SGD / dense "
      "training); sgd runs epochs + asr-epochs in one phase so budgets match",
      lo=0)
  asr_epochs: int = option(
      10, PHASES, "epochs of the second phase: adaptive sparse retraining, "
      "or fine-tuning", lo=0)
  batch_size: int = option(128, PHASES, "training batch", lo=1)
  eval_batch_size: int = option(1000, PHASES, "evaluation batch", lo=1)
  gamma: float = option(1.0, RDA, "gamma of beta_t = gamma sqrt(t), an "
                        "inverse step size", lo=0, lo_open=True)
  l1: float = option(1e-4, RDA, "l1 strength lambda; also prox-SGD's", lo=0)
  l2: float = option(0.0, RDA, "optional l2/2 ||w||^2 in RDA's subproblem",
                     lo=0)
  center: str = option("zero", RDA, "RDA's proximal centre of the kernels: "
                       "zero (the paper's) or init", choices=("zero", "init"))
  gamma_schedule: str = option(
      "", RDA, "piecewise-constant gamma, EPOCH:VALUE,... (section 5.2), e.g. "
      "0:1,100:0.2")
  l1_schedule: str = option(
      "", RDA, "piecewise-constant l1, EPOCH:VALUE,..., e.g. "
      "0:1e-4,150:5e-5")
  debias_epochs: int = option(
      0, RDA, "run the last N ASR epochs with l1 = 0 (rda, prox-sgd): the "
      "frozen zeros keep the sparsity and the kept weights lose the l1 "
      "shrinkage (default 0, the paper's ASR)")
  rmda_momentum: float = option(
      0.1, RDA, "rmda: the weight c of the new prox point in W <- (1 - c) W "
      "+ c W~ (1: no momentum; the authors' default)", lo=0, hi=1,
      lo_open=True, hi_open=False)
  rmda_momentum_ramp: float = option(
      0.0, RDA, "rmda: c rises linearly from --rmda-momentum to 1 over this "
      "fraction of --epochs, ending at the last step before ASR, so the "
      "params reach the prox point's exact zeros gradually (default 0: c "
      "jumps to 1 at that last step)", lo=0, hi=1, hi_open=False)
  grda_mu: float = option(
      0.51, RDA, "grda: the threshold grows as n^mu (Chao et al.: mu in "
      "(0.5, 1); their CIFAR-10 runs 0.51)", lo=0, lo_open=True)
  init_scale: Optional[float] = option(
      None, RDA, "s of the scaled uniform init (29); default: the preset's "
      "(digits-demo: 2, for every method), without one 2 for rda and the "
      "framework's own init for the other methods", lo=0, lo_open=True)
  lr: float = option(0.1, SGD, "peak learning rate", lo=0, lo_open=True)
  lr_schedule: str = option("cosine", SGD, "constant, cosine, onecycle or "
                            "EPOCH:VALUE,...")
  momentum: float = option(0.9, SGD, "momentum", lo=0, hi=1)
  weight_decay: float = option(
      5e-4, SGD, "l2 weight decay of the kernels for sgd and prune-finetune",
      lo=0)
  finetune_lr_scale: float = option(
      0.1, SGD, "fine-tuning peak lr = lr x this", lo=0, lo_open=True)
  label_smoothing: float = option(0.0, OTHER, "label smoothing", lo=0, hi=1)
  augment: str = option(
      "auto", DATA, "auto (crop-flip for 32x32+ RGB, else none), none, crop "
      "or crop-flip (pad-4 random crop, flip)",
      choices=("auto", "none", "crop", "crop-flip"))
  dtype: str = option(
      "auto", OTHER, "compute dtype: auto (bfloat16 on GPU/TPU, float32 on "
      "CPU), float32 or bfloat16; params stay float32",
      choices=("auto", "float32", "bfloat16"))
  target_sparsity: Optional[float] = option(
      None, SGD, "prune-finetune, gmp, rigl: fraction of kernel weights to "
      "prune (in --compare, default: the sparsity the rda run reached); rda: "
      "chooses l1 at each step to reach it (not with --l1 or --l1-schedule); "
      "refused by prox-sgd and sgd", lo=0, hi=1)
  target_sparsity_from: Optional[str] = option(
      None, SGD, "as --target-sparsity, at the sparsity that run reached",
      metavar="RUN_DIR")
  prune_scope: str = option(
      "layer", SGD, "prune-finetune: layer (each kernel to the target; "
      "Han et al.'s per-layer pruning at one rate) or global (one magnitude "
      "threshold over all kernels)", choices=("layer", "global"))
  sparsity_distribution: str = option(
      "auto", SGD, "rda, rmda, grda, prox-adam, gmp, rigl: how the target is "
      "spread over the kernels: uniform (every kernel at the target), erk "
      "(Erdos-Renyi-Kernel), global (one threshold: on the weights for gmp, "
      "one l1 on the dual variable for rda and the proximal family; not "
      "rigl) or magnitude (rda, rmda, grda, prox-adam with a target: each "
      "step, the per-kernel counts of one magnitude threshold on the "
      "current weights, as global gmp chooses them, then one l1 per "
      "kernel); "
      "auto: the method's: global for rda (one l1), erk for gmp and rigl (at "
      "0.99 on digits, uniform leaves the first conv 3 weights)",
      choices=("auto",) + SPARSITY_DISTRIBUTIONS)
  target_ramp: Optional[float] = option(
      None, SGD, "rda with a target: the target rises on a cubic ramp from 0 "
      "over this fraction of --epochs, is held to the end of --epochs, and "
      "ASR then runs at l1 = 0, keeping it exactly (default 0.5); with "
      "--target-flops and --structure, the kept FLOPs fall from 1 to the "
      "target over the same ramp",
      lo=0, hi=1, hi_open=False)
  threshold_samples: Optional[int] = option(
      None, SGD, "rda with a target: estimate lambda_t from this many "
      "sampled weights (per layer unless global) instead of the exact order "
      "statistic (the default); cheaper on CPU for large models, off the "
      "target by about sqrt(s(1-s)/N)", lo=1)
  gmp_start_epoch: int = option(
      0, GMP, "gmp: the epoch the cubic sparsity schedule starts at", lo=0)
  gmp_end_epoch: int = option(
      0, GMP, "gmp: the epoch it reaches the target at; the rest trains at "
      "the final mask (default 0: at --epochs, so --asr-epochs fine-tune)",
      lo=0)
  gmp_every: int = option(100, GMP, "gmp: prune every N steps", lo=1)
  rigl_alpha: float = option(
      0.3, GMP, "rigl: fraction of the kept weights dropped and regrown at "
      "the first update, cosine-decayed", lo=0, hi=1, lo_open=True,
      hi_open=False)
  rigl_delta_t: int = option(100, GMP, "rigl: steps between mask updates",
                             lo=1)
  rigl_t_end_fraction: float = option(
      0.75, GMP, "rigl: mask updates stop after this fraction of the steps",
      lo=0, hi=1, lo_open=True, hi_open=False)
  structure: str = option(
      "none", CHANNEL, "rda, prox-sgd: none (element-wise l1, the paper's; "
      "default), channel (group lasso over each output channel with its "
      "BatchNorm, l1 = 0) or sparse-group (--l1 and the group term); the run "
      "ends with the slim model in slim.msgpack",
      choices=("none", "channel", "sparse-group"))
  group_l1: Optional[float] = option(
      None, CHANNEL, "--structure: group strength, lambda_g = group_l1 "
      "sqrt(|g|) (default 1.5e-3; 0.06 with --group-weighting uniform)",
      lo=0, lo_open=True)
  group_weighting: str = option(
      "auto", CHANNEL, "--structure: size (lambda_g = group_l1 sqrt(|g|)), "
      "uniform (lambda_g = group_l1 for every channel, so that wide layers "
      "are not the first to die) or auto (the default: uniform with "
      "--target-flops, whose ranking under size would spend the whole "
      "budget on the convs; size otherwise)",
      choices=("auto",) + rda_optax.GROUP_WEIGHTINGS)
  slim_training: bool = option(
      True, CHANNEL, "--structure, net-slim: at the switch to the second "
      "phase, cut the dead channels out (exact) and train the remaining "
      "epochs on the slim model, its optimizer state cut to match; "
      "--no-slim-training keeps the full width, the dead channels frozen "
      "at 0 (default on)")
  bn_l1: float = option(
      1e-4, CHANNEL, "net-slim: l1 on the BatchNorm scales during --epochs",
      lo=0)
  target_flops: Optional[float] = option(
      None, CHANNEL, "net-slim: prune channels until the slim model has at "
      "most this fraction of the dense FLOPs; rda, rmda, grda, prox-adam "
      "with --structure: choose the group strength each step so that the "
      "surviving channels cost at most this fraction of the FLOPs (not with "
      "--group-l1)", lo=0, hi=1, lo_open=True,
      hi_open=False)
  target_flops_from: Optional[str] = option(
      None, CHANNEL, "net-slim: the FLOPs fraction that run's slim model "
      "reached", metavar="RUN_DIR")
  prune_channels: Optional[float] = option(
      None, CHANNEL, "net-slim: prune this fraction of the channels instead "
      "of a FLOPs target", lo=0, hi=1)
  # One field (main's slim training added it with default 1; the measured
  # default is 16): slim training, the written slim model and export --slim
  # all use it. With a FLOPs target, rounding up would break the target, so
  # the widths are fitted to it at the switch (structure.fit_widths).
  width_multiple: int = option(
      16, CHANNEL, "when slimming (slim training, the slim model written, "
      "export --slim): every width is a multiple of this (or the layer's "
      "full width): odd widths such as 22 or 45 ran slower than the dense "
      "model on a CPU, multiples of 16 faster (docs/RESULTS.md). With a "
      "FLOPs target (net-slim, or --target-flops with --structure) the "
      "widths are fitted at the switch so that they still cost at most the "
      "target, the lowest-scored live channels cut beyond it; otherwise the "
      "live channels are rounded up by keeping some dead ones (exact "
      "zeros). 1 keeps exactly the alive channels", lo=1)
  seed: int = option(
      0, OTHER, "seed of init, shuffling, augmentation and (without "
      "--val-seed) the validation split", lo=_SEEDS[0], hi=_SEEDS[1],
      hi_text=_SEEDS[2])
  val_seed: Optional[int] = option(
      None, OTHER, "seed of the validation split alone, so that runs of "
      "several --seed values are scored on the same images (default: "
      "--seed)", lo=_SEEDS[0], hi=_SEEDS[1], hi_text=_SEEDS[2])
  out: str = option("runs", OTHER, "parent directory of run directories")
  run_name: Optional[str] = option(
      None, OTHER, "run directory name (default: time, model, data set, "
      "method)")
  checkpoint_every: int = option(
      10, OTHER, "save a checkpoint every N epochs, and at the end", lo=1)
  max_bad_steps: int = option(
      10, OTHER, "stop after this many consecutive steps with non-finite "
      "gradients", lo=1)
  image_size: Optional[int] = option(
      None, DATA, "centre-crop and resize images to this size (imagenet2012 "
      "default 64)", lo=1, hi=MAX_IMAGE_SIZE, hi_open=False)
  num_classes: Optional[int] = option(
      None, DATA, "expected number of classes; a run stops if the data has "
      "another (default: whatever the data has)", lo=2)
  devices: Optional[int] = option(
      None, DEVICES, "use the first N devices (default: every visible "
      "device, data-parallel)", lo=1)
  fsdp: int = option(
      1, DEVICES, "split parameters and optimizer state over N devices (a "
      "second mesh axis; default 1: replicated)", lo=1)
  data_sharding: str = option(
      "auto", DEVICES, "replicated (every device holds the training images; "
      "batches independent of the device count), sharded (each device holds "
      "1/N of them and samples its part of each batch locally) or auto "
      "(sharded with several processes; the default)",
      choices=("auto", "replicated", "sharded"))
  skip_bad_images: bool = option(
      False, DATA, "skip unreadable images of a folder source and count "
      "them, instead of stopping")
  cache_dir: Optional[str] = option(
      None, DATA, "where decoded image folders are cached (default "
      "$RDA_OPTAX_CACHE or ~/.cache/rda-optax)")
  progress: str = option(
      "auto", OTHER, "auto (a bar on a terminal, lines otherwise), bar, lines "
      "or none", choices=("auto", "bar", "lines", "none"))
  preset: Optional[str] = option(None, RUN, "", flag=False)

  @property
  def total_epochs(self) -> int:
    return self.epochs + self.asr_epochs

  @property
  def methods(self) -> list[str]:
    """The methods this configuration runs: ``--compare``'s, or ``--method``."""
    return self.compare.split(",") if self.compare else [self.method]


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def flag(name: str) -> str:
  """``target_sparsity`` -> ``--target-sparsity``."""
  return "--" + name.replace("_", "-")


def field_type(name: str) -> type:
  """The type of a field's values (``Optional[X]`` -> X)."""
  default = FIELDS[name].default
  if default is not None:
    return type(default)
  # Postponed evaluation: the annotation is a string.
  return {"Optional[int]": int, "Optional[float]": float,
          "Optional[str]": str}[FIELDS[name].type]


def help_text(name: str) -> str:
  """``--help`` of a field: its text, and its default unless the text
  names one or there is none."""
  meta, default = FIELDS[name].metadata, FIELDS[name].default
  text = meta["help"]
  if default is None or isinstance(default, bool) or "default" in text:
    return text
  return f"{text} (default {default if default != '' else 'none'})"


def choices(name: str) -> Optional[tuple[str, ...]]:
  c = FIELDS[name].metadata["choices"]
  return c() if callable(c) else c


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
          f"{flag(name)}: expected EPOCH:VALUE[,EPOCH:VALUE...], got "
          f"{spec!r}") from None
  epochs = [e for e, _ in out]
  if epochs != sorted(set(epochs)) or epochs[0] < 0:
    raise UsageError(f"{flag(name)}: epochs must be increasing and >= 0, got "
                     f"{spec!r}")
  return out


def merge(preset: Optional[str], file: Optional[str],
          flags: dict[str, Any]) -> tuple[Config, set[str]]:
  """The layers merged, and the names the user set (file or flags)."""
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
  return Config(**values), set(from_file) | set(given)


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
    data[k] = coerce(k, v, f"--config {file}: {k}")
  return data


def coerce(name: str, value: Any, where: str) -> Any:
  """Checks a config-file value against the field's type."""
  default = FIELDS[name].default
  if value is None:
    if default is not None:
      # null means "unset" only where unset is a valid state of the field.
      raise UsageError(f"{where}: null is not allowed (default {default!r})")
    return None
  typ = field_type(name)
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


def check(cond: bool, msg: str) -> None:
  if not cond:
    raise UsageError(msg)


def finite(x: Any) -> bool:
  return (isinstance(x, (int, float)) and not isinstance(x, bool)
          and math.isfinite(x))


def check_fields(cfg: Config) -> None:
  """The table's own checks, each option alone: choices and ranges."""
  for name, f in FIELDS.items():
    value, meta = getattr(cfg, name), f.metadata
    if value is None:
      continue
    valid = choices(name)
    if valid is not None:
      what = {"model": "model", "dataset": "data set"}.get(name)
      if what:  # registries: name the thing
        check(value in valid, f"{flag(name)}: unknown {what} {value!r}; "
              f"valid: {', '.join(valid)}")
      else:
        check(value in valid, f"{flag(name)} must be "
              f"{', '.join(valid[:-1])} or {valid[-1]}, got {value!r}")
    if meta["lo"] is not None:
      check(finite(value) and _in_range(value, meta),
            f"{flag(name)} must be {_range_text(meta)}, got {value}")


def _in_range(v: float, meta: dict) -> bool:
  lo, hi = meta["lo"], meta["hi"]
  if v < lo or (meta["lo_open"] and v == lo):
    return False
  return hi is None or v < hi or (not meta["hi_open"] and v == hi)


def _range_text(meta: dict) -> str:
  lo, hi = meta["lo"], meta["hi"]
  if hi is None:
    return f"{'>' if meta['lo_open'] else '>='} {lo}"
  return (f"in {'(' if meta['lo_open'] else '['}{lo}, "
          f"{meta['hi_text'] or hi}{')' if meta['hi_open'] else ']'}")
