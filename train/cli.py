"""``rda-train``: the command line of the trainer."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Optional, Sequence

import jax

from train import config as config_lib
from train import data as data_lib
from train import export
from train import methods
from train import parallel
from train import report
from train import run as run_lib
from train._errors import UsageError
from train.presets import PRESETS

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

rda-train export RUN_DIR [--out FILE] [--values float32|bfloat16] [--force]
  writes the run's final variables as a compressed sparse file
rda-train evaluate FILE --run RUN_DIR
  test accuracy of the run's model with the variables of that file"""


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):  # one line, exit code 2
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
  p = _Parser(prog="rda-train", description=_DESCRIPTION,
              formatter_class=argparse.RawDescriptionHelpFormatter,
              argument_default=None)
  g = p.add_argument_group("what to run")
  g.add_argument("--preset", help="a named configuration (see --list-presets)")
  g.add_argument("--list-presets", action="store_true",
                 help="print the presets and exit")
  g.add_argument("--config", help="JSON file of options (keys as the flags, "
                 "with '_' for '-'), between the preset and the flags")
  g.add_argument("--model", help="resnet18, resnet18_imagenet, vgg16bn, "
                 "vgg19bn or small_cnn (default small_cnn)")
  g.add_argument("--method", help="; ".join(
      f"{m.name}: {m.help}" for m in methods.REGISTRY.values())
                 + " (default rda)")
  g.add_argument("--compare", help="comma-separated methods to run side by "
                 "side with the same settings, e.g. rda,sgd")
  g.add_argument("--resume", metavar="RUN_DIR",
                 help="continue that run from its latest checkpoint")
  g = p.add_argument_group("data")
  g.add_argument("--dataset", help="digits (scikit-learn, offline), mnist, "
                 "cifar10, cifar100, imagenet2012 (TensorFlow Datasets) or "
                 "folder (--data-dir is an image folder or tarball laid out "
                 "[split/]class/image); default digits")
  g.add_argument("--data-dir", help="tfds data_dir (imagenet2012: its manual "
                 "download directory) or the image folder / tarball")
  g.add_argument("--test-dir", help="test images, same layout as a folder "
                 "source; replaces the data set's own test split")
  g.add_argument("--val-fraction", type=float, help="share of the training "
                 "data held out for validation (default 0.1)")
  g.add_argument("--num-classes", type=int, help="expected number of "
                 "classes; a run stops if the data has another (default: "
                 "whatever the data has)")
  g.add_argument("--image-size", type=int, help="centre-crop and resize "
                 "images to this size (imagenet2012 default 64)")
  g.add_argument("--augment", help="auto (crop-flip for 32x32+ RGB, else "
                 "none), none, crop or crop-flip (pad-4 random crop, flip)")
  g.add_argument("--skip-bad-images", action="store_true", default=None,
                 help="skip unreadable images of a folder source and count "
                 "them, instead of stopping")
  g.add_argument("--cache-dir", help="where decoded image folders are cached "
                 "(default $RDA_OPTAX_CACHE or ~/.cache/rda-optax)")
  g = p.add_argument_group("phases and batch")
  g.add_argument("--epochs", type=int, help="epochs of the first phase "
                 "(RDA / prox-SGD / dense training); sgd runs epochs + "
                 "asr-epochs in one phase so budgets match (default 30)")
  g.add_argument("--asr-epochs", type=int, help="epochs of the second phase: "
                 "adaptive sparse retraining, or fine-tuning (default 10)")
  g.add_argument("--batch-size", type=int, help="training batch (default 128)")
  g.add_argument("--eval-batch-size", type=int, help="evaluation batch "
                 "(default 1000)")
  g = p.add_argument_group("RDA")
  g.add_argument("--gamma", type=float, help="gamma of beta_t = gamma "
                 "sqrt(t), an inverse step size (default 1.0)")
  g.add_argument("--l1", type=float, help="l1 strength lambda; also "
                 "prox-SGD's (default 1e-4)")
  g.add_argument("--l2", type=float, help="optional l2/2 ||w||^2 in RDA's "
                 "subproblem (default 0)")
  g.add_argument("--center", help="RDA's proximal centre of the kernels: "
                 "zero (the paper's) or init")
  g.add_argument("--gamma-schedule", help="piecewise-constant gamma, "
                 "EPOCH:VALUE,... (section 5.2), e.g. 0:1,100:0.2")
  g.add_argument("--l1-schedule", help="piecewise-constant l1, "
                 "EPOCH:VALUE,..., e.g. 0:1e-4,150:5e-5")
  g.add_argument("--debias-epochs", type=int, help="run the last N ASR "
                 "epochs with l1 = 0 (rda, prox-sgd): the frozen zeros keep "
                 "the sparsity and the kept weights lose the l1 shrinkage "
                 "(default 0, the paper's ASR)")
  g.add_argument("--init-scale", type=float, help="s of the scaled uniform "
                 "init (29); default: the preset's (digits-demo: 2, for "
                 "every method), without one 2 for rda and the framework's "
                 "own init for the other methods")
  g = p.add_argument_group("SGD, prox-SGD and the pruning methods")
  g.add_argument("--lr", type=float, help="peak learning rate (default 0.1)")
  g.add_argument("--lr-schedule", help="constant, cosine, onecycle or "
                 "EPOCH:VALUE,... (default cosine)")
  g.add_argument("--momentum", type=float, help="momentum (default 0.9)")
  g.add_argument("--weight-decay", type=float, help="l2 weight decay of the "
                 "kernels for sgd and prune-finetune (default 5e-4)")
  g.add_argument("--target-sparsity", type=float, help="prune-finetune, "
                 "gmp, rigl: fraction of kernel weights to prune (in "
                 "--compare, default: the sparsity the rda run reached); "
                 "rda: chooses l1 at each step to reach it (not with --l1 "
                 "or --l1-schedule); refused by prox-sgd and sgd")
  g.add_argument("--target-sparsity-from", metavar="RUN_DIR",
                 help="as --target-sparsity, at the sparsity that run "
                 "reached")
  g.add_argument("--target-ramp", type=float, help="rda with a target: the "
                 "target rises on a cubic ramp from 0 over this fraction of "
                 "--epochs, is held to the end of --epochs, and ASR then "
                 "runs at l1 = 0, keeping it exactly (default 0.5)")
  g.add_argument("--threshold-samples", type=int, help="rda with a target: "
                 "estimate lambda_t from this many sampled weights (per "
                 "layer unless global) instead of the exact order statistic "
                 "(the default); cheaper on CPU for large models, off the "
                 "target by about sqrt(s(1-s)/N)")
  g.add_argument("--prune-scope", help="prune-finetune: layer (each kernel "
                 "to the target; default, Han et al.'s per-layer pruning at "
                 "one rate) or global (one magnitude threshold over all "
                 "kernels)")
  g.add_argument("--finetune-lr-scale", type=float, help="fine-tuning peak "
                 "lr = lr x this (default 0.1)")
  g.add_argument("--sparsity-distribution", help="rda, gmp, rigl: how the target "
                 "is spread over the kernels: uniform (every kernel at the "
                 "target), erk (Erdos-Renyi-Kernel) or global (one magnitude "
                 "threshold; not rigl); default auto: the method's: global "
                 "for rda (one l1), erk for gmp and rigl (at 0.99 on "
                 "digits, uniform leaves the first conv 3 weights)")
  g = p.add_argument_group("GMP (Zhu & Gupta 2017), RigL (Evci et al. 2020)")
  g.add_argument("--gmp-start-epoch", type=int, help="gmp: the epoch the "
                 "cubic sparsity schedule starts at (default 0)")
  g.add_argument("--gmp-end-epoch", type=int, help="gmp: the epoch it "
                 "reaches the target at; the rest trains at the final mask "
                 "(default 0: at --epochs, so --asr-epochs fine-tune)")
  g.add_argument("--gmp-every", type=int, help="gmp: prune every N steps "
                 "(default 100)")
  g.add_argument("--rigl-alpha", type=float, help="rigl: fraction of the "
                 "kept weights dropped and regrown at the first update, "
                 "cosine-decayed (default 0.3)")
  g.add_argument("--rigl-delta-t", type=int, help="rigl: steps between mask "
                 "updates (default 100)")
  g.add_argument("--rigl-t-end-fraction", type=float, help="rigl: mask "
                 "updates stop after this fraction of the steps (default 0.75)")
  g = p.add_argument_group("channel sparsity: group RDA, network slimming")
  g.add_argument("--structure", help="rda, prox-sgd: none (element-wise l1, "
                 "the paper's; default), channel (group lasso over each "
                 "output channel with its BatchNorm, l1 = 0) or sparse-group "
                 "(--l1 and the group term); the run ends with the slim model "
                 "in slim.msgpack")
  g.add_argument("--group-l1", type=float, help="--structure: group "
                 "strength, lambda_g = group_l1 sqrt(|g|) (default 1.5e-3; "
                 "0.06 with --group-weighting uniform)")
  g.add_argument("--group-weighting", help="--structure: size (lambda_g = "
                 "group_l1 sqrt(|g|), the default) or uniform (lambda_g = "
                 "group_l1 for every channel, so that wide layers are not "
                 "the first to die)")
  g.add_argument("--bn-l1", type=float, help="net-slim: l1 on the "
                 "BatchNorm scales during --epochs (default 1e-4)")
  g.add_argument("--target-flops", type=float, help="net-slim: prune "
                 "channels until the slim model has at most this fraction "
                 "of the dense FLOPs")
  g.add_argument("--target-flops-from", metavar="RUN_DIR", help="net-slim: "
                 "the FLOPs fraction that run's slim model reached")
  g.add_argument("--prune-channels", type=float, help="net-slim: prune this "
                 "fraction of the channels instead of a FLOPs target")
  g = p.add_argument_group("devices and hosts (docs/SCALING.md)")
  g.add_argument("--devices", type=int, help="use the first N devices "
                 "(default: every visible device, data-parallel)")
  g.add_argument("--fsdp", type=int, help="split parameters and optimizer "
                 "state over N devices (a second mesh axis; default 1: "
                 "replicated)")
  g.add_argument("--data-sharding", help="replicated (every device holds "
                 "the training images; batches independent of the device "
                 "count), sharded (each device holds 1/N of them and samples "
                 "its part of each batch locally) or auto (sharded with "
                 "several processes; the default)")
  g.add_argument("--coordinator", help="HOST:PORT of process 0, for a "
                 "multi-process run (or JAX_COORDINATOR_ADDRESS)")
  g.add_argument("--num-processes", type=int, help="processes in the run "
                 "(or JAX_NUM_PROCESSES)")
  g.add_argument("--process-id", type=int, help="this process's index "
                 "(or JAX_PROCESS_ID)")
  g = p.add_argument_group("everything else")
  g.add_argument("--label-smoothing", type=float, help="default 0")
  g.add_argument("--dtype", help="compute dtype: auto (bfloat16 on GPU/TPU, "
                 "float32 on CPU), float32 or bfloat16; params stay float32")
  g.add_argument("--seed", type=int, help="seed of init, shuffling, "
                 "augmentation and (without --val-seed) the validation "
                 "split (default 0)")
  g.add_argument("--val-seed", type=int, help="seed of the validation split "
                 "alone, so that runs of several --seed values are scored on "
                 "the same images (default: --seed)")
  g.add_argument("--out", help="parent directory of run directories "
                 "(default runs)")
  g.add_argument("--run-name", help="run directory name (default: time, "
                 "model, data set, method)")
  g.add_argument("--checkpoint-every", type=int, help="save a checkpoint "
                 "every N epochs, and at the end (default 10)")
  g.add_argument("--max-bad-steps", type=int, help="stop after this many "
                 "consecutive steps with non-finite gradients (default 10)")
  g.add_argument("--progress", help="auto (a bar on a terminal, lines "
                 "otherwise), bar, lines or none")
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
  if words and words[0] in export.COMMANDS:
    return export.main(words)
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
      cfg = config_lib.build(preset, args.config, flags)
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
