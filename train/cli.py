"""``python -m train``: the command line of the trainer."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Optional, Sequence

import jax

from train import checks
from train import config as config_lib
from train import data as data_lib
from train import commands
from train import methods
from train import parallel
from train import report
from train import run as run_lib
from train._errors import UsageError
from train.presets import PRESETS

# The trainer is rda-train (its messages say so); it runs from a checkout,
# not from an installed package.
_USAGE = "python -m train [options]   (from the root of a checkout)"

_DESCRIPTION = """\
Train sparse CNNs with l1-regularized dual averaging (RDA) and adaptive sparse
retraining (ASR), He et al. 2020, or with the paper's baselines.

With no arguments: the small CNN on scikit-learn's digits, RDA + ASR,
prox-SGD + ASR, dense SGD and gradual magnitude pruning (GMP) at the sparsity
RDA reached, side by side (about a minute on 2 CPU cores), a table on stdout
and a comparison plot under runs/. Without
--preset, --config, --model or --dataset, the digits-demo preset applies
(batch 64, lr 0.05, l1 1e-3, init scale 2 for every method); naming any of
them, even --model small_cnn, turns it off. A run's first line and its
config.json ("preset") name the preset in force.

Precedence: built-in defaults < --preset < --config FILE.json < flags.

python -m train export RUN_DIR [--out FILE] [--values float32|bfloat16] [--force]
  writes the run's final variables as a compressed sparse file
python -m train evaluate FILE --run RUN_DIR
  test accuracy of the run's model with the variables of that file"""


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):  # one line, exit code 2
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
  """The options of ``train.config.Config`` as flags, in their help groups,
  and the flags that only say how this process starts."""
  p = _Parser(prog="rda-train", usage=_USAGE, description=_DESCRIPTION,
              formatter_class=argparse.RawDescriptionHelpFormatter,
              argument_default=None)
  groups = {}
  for group in config_lib.GROUPS:
    groups[group] = p.add_argument_group(group)
  g = groups[config_lib.RUN]
  g.add_argument("--preset", help="a named configuration (see --list-presets)")
  g.add_argument("--list-presets", action="store_true",
                 help="print the presets and exit")
  g.add_argument("--config", help="JSON file of options (keys as the flags, "
                 "with '_' for '-'), between the preset and the flags")
  g.add_argument("--resume", metavar="RUN_DIR",
                 help="continue that run from its latest checkpoint")
  methods_help = "; ".join(f"{m.name}: {m.help}"
                           for m in methods.REGISTRY.values())
  for name, field in config_lib.FIELDS.items():
    meta = field.metadata
    if not meta["flag"]:
      continue
    text = config_lib.help_text(name).replace("{methods}", methods_help)
    g = groups[meta["group"]]
    typ = config_lib.field_type(name)
    if typ is bool:
      # An option that is on by default is turned off by --no-NAME.
      on = field.default is True
      g.add_argument(config_lib.flag(name), default=None, help=text,
                     action=argparse.BooleanOptionalAction if on
                     else "store_true")
    else:
      g.add_argument(config_lib.flag(name), type=typ, help=text,
                     metavar=meta["metavar"])
  g = groups[config_lib.DEVICES]
  g.add_argument("--coordinator", help="HOST:PORT of process 0, for a "
                 "multi-process run (or JAX_COORDINATOR_ADDRESS)")
  g.add_argument("--num-processes", type=int, help="processes in the run "
                 "(or JAX_NUM_PROCESSES)")
  g.add_argument("--process-id", type=int, help="this process's index "
                 "(or JAX_PROCESS_ID)")
  return p


# Flags that say how this process starts, never part of a run's
# configuration: the multi-process ones differ from process to process and
# are never stored in config.json.
_LAUNCH = ("list_presets", "resume", "coordinator", "num_processes",
           "process_id")
# The layers a configuration is built from are not stored either.
_NOT_CONFIG = _LAUNCH + ("config", "preset")
# What may change when a run is resumed: where it runs, not what it computes.
_RESUME_FLAGS = ("devices", "fsdp", "data_sharding", "progress")


@contextlib.contextmanager
def _data_warnings_as_lines():
  """The data's warnings (skipped images, a class left without training
  images) as one ``rda-train: warning:`` line each: Python's own format adds
  the file, line number and source line of the trainer that raised it."""
  default = warnings.formatwarning

  def one_line(message, category, filename, lineno, line=None):
    if issubclass(category, data_lib.DataWarning):
      return f"rda-train: warning: {message}\n"
    return default(message, category, filename, lineno, line)

  warnings.formatwarning = one_line
  try:
    yield
  finally:
    warnings.formatwarning = default


def main(argv: Optional[Sequence[str]] = None) -> int:
  with _data_warnings_as_lines():
    return _main(argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
  words = sys.argv[1:] if argv is None else list(argv)
  if words and words[0] in commands.COMMANDS:
    return commands.main(words)
  args = parser().parse_args(argv)
  try:
    if args.list_presets:
      w = max(map(len, PRESETS))
      for name, p in PRESETS.items():
        print(f"{name:<{w}}  {p['help']}")
      return 0
    parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    if args.resume:
      given = [k for k, v in vars(args).items()
               if v is not None and k not in _RESUME_FLAGS + _LAUNCH]
      if given:
        raise UsageError(
            f"--resume continues the run as {args.resume}/config.json "
            f"describes; --{given[0].replace('_', '-')} cannot change it "
            f"(edit that file; only --devices, --fsdp, --data-sharding and "
            f"--progress apply)")
      # Where it runs may change on resume: a checkpoint written on 8
      # devices continues on 1.
      summaries = run_lib.resume(args.resume, devices=args.devices,
                                 fsdp=args.fsdp,
                                 data_sharding=args.data_sharding,
                                 progress=args.progress)
    else:
      flags = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
      preset = args.preset
      if (preset is None and args.config is None and args.model is None
          and args.dataset is None):
        # Settings tuned for the embedded data set, not CIFAR's defaults.
        preset = "digits-demo"
      no_args = len(sys.argv[1:] if argv is None else argv) == 0
      if no_args:
        # The embedded default: a side-by-side comparison on digits.
        flags["compare"] = methods.demo()
      cfg = checks.build(preset, args.config, flags)
      summaries = run_lib.run(cfg)
  except UsageError as e:
    print(f"rda-train: error: {e}", file=sys.stderr)
    return 2
  except run_lib.Stopped as e:
    print(f"rda-train: {e}", file=sys.stderr)
    return e.code
  except OSError as e:
    # Full disk, read-only or vanished output while writing logs or plots.
    where = f"{e.filename}: " if e.filename else ""
    print(f"rda-train: error: {where}{e.strerror or e}", file=sys.stderr)
    return 2
  cols = [("method", "method", "s"), ("test_top1", "test top-1 %", ".2f"),
          ("test_top5", "top-5 %", ".2f"), ("val_top1", "val top-1 %", ".2f"),
          ("sparsity", "sparsity", ".4f"), ("epochs", "epochs", "d"),
          ("wall_s", "wall s", ".1f")]
  if jax.process_index() == 0:
    print(report.format_table(summaries, cols))
  return 0


if __name__ == "__main__":
  sys.exit(main())
