"""``python -m train export`` and ``python -m train evaluate``: the command
line of the finished-run commands (``train.export``: the sparse file and
its evaluation; ``train.deploy``: the slim jax.export artifact).

  python -m train export RUN_DIR [--out FILE] [--values float32|bfloat16] [--force]
  python -m train export RUN_DIR --slim [--out FILE] [--width-multiple K] [--force]
  python -m train evaluate FILE --run RUN_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from train import deploy
from train import export
from train._errors import UsageError

COMMANDS = ("export", "evaluate")


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):  # one line, exit code 2
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
  p = _Parser(prog="rda-train")
  sub = p.add_subparsers(dest="command", required=True)
  e = sub.add_parser("export", help="write a run's final variables as a "
                     "compressed sparse file (docs/EXPORT.md)")
  e.error = p.error  # type: ignore[method-assign]
  e.add_argument("run_dir", metavar="RUN_DIR")
  e.add_argument("--out", help=f"file to write (default RUN_DIR/{export.DEFAULT_NAME}"
                 "; with --slim RUN_DIR/model.slim.jaxexport, its variables "
                 "beside it as .npz)")
  e.add_argument("--values", choices=("float32", "bfloat16"),
                 help="float32 (the default): exact; bfloat16: non-zeros "
                 "rounded to bfloat16, about half the size")
  e.add_argument("--slim", action="store_true",
                 help="write the slim network (dead channels cut out, "
                 "exactly) as a jax.export artifact that runs with jax and "
                 "numpy alone, plus its variables (docs/EXPORT.md)")
  e.add_argument("--width-multiple", type=_int_at_least_1, metavar="K",
                 help="with --slim: round the slim widths up to a multiple "
                 "of K (default: the run's --width-multiple)")
  e.add_argument("--force", action="store_true",
                 help="replace --out if it exists")
  v = sub.add_parser("evaluate", help="test accuracy of a run's model with "
                     "the variables of an exported file")
  v.error = p.error  # type: ignore[method-assign]
  v.add_argument("file", metavar="FILE")
  v.add_argument("--run", required=True, metavar="RUN_DIR",
                 help="the run whose model, data and test split to use")
  return p


def _int_at_least_1(text: str) -> int:
  try:
    k = int(text)
  except ValueError:
    k = 0
  if k < 1:
    raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
  return k


def main(argv: Sequence[str]) -> int:
  args = parser().parse_args(argv)
  out_path = None if getattr(args, "out", None) is None else Path(args.out)
  try:
    if args.command == "export" and args.slim:
      if args.values is not None:
        raise UsageError("--values is for the sparse file, not --slim")
      print(deploy.describe(deploy.export_slim(
          Path(args.run_dir), out_path, args.width_multiple, args.force)))
    elif args.command == "export":
      if args.width_multiple is not None:
        raise UsageError("--width-multiple needs --slim")
      out, size, dense = export.export(Path(args.run_dir), out_path,
                                args.values or "float32", args.force)
      print(f"wrote {out}: {size} bytes, {100 * size / dense:.2f}% of the "
            f"{dense} bytes of the dense variables")
    else:
      top1, top5 = export.evaluate_file(Path(args.file), Path(args.run))
      print(f"{args.file}: test top-1 {top1:.2f}%, top-5 {top5:.2f}%")
  except UsageError as e:
    print(f"rda-train {args.command}: error: {e}", file=sys.stderr)
    return 2
  return 0
