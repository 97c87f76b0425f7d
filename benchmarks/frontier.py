"""The sparsity-accuracy frontier: RDA against its baselines, over seeds.

Sweeps one option (``--vary``, default ``l1``) over ``--values`` for each
method in ``--methods`` and each seed, running ``python -m train`` in-process with
the remaining flags, and writes to ``--out``:

- ``points.json``: one row per (method, value): mean and std over seeds of
  test/val top-1 and sparsity, plus every run directory;
- ``frontier.png``: top-1 against sparsity, one curve per method;
- ``frontier.md``: the same as a markdown table, with the command.

Methods: every method of ``python -m train``; those with a target sparsity
(``prune-finetune``, ``gmp``, ``rigl``) prune to the sparsity that the RDA
run of the same value and seed reached, at the same total epochs, unless
``--target-sparsity`` is passed through (rda then trains to it too, so it
cannot be swept with ``--vary l1``; ``--methods rda --vary target_sparsity``
sweeps RDA's target). Also ``prune-finetune-global``
(the same with ``--prune-scope global``) and ``rda-noasr`` (RDA for all
epochs, no ASR phase: the paper's Table 4 ablation).

  python benchmarks/frontier.py --out runs/frontier-digits \\
      --methods rda,prox-sgd,prune-finetune,sgd --values 1e-4,3e-4,1e-3,3e-3 \\
      --seeds 0,1,2,3,4 -- --epochs 30 --asr-epochs 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _args  # noqa: E402
from train import checks  # noqa: E402
from train import cli, report  # noqa: E402
from train import methods as methods_lib  # noqa: E402


def _summary(run_dir: Path) -> dict:
  return json.loads((run_dir / "summary.json").read_text())


def _stats(xs):
  xs = [x for x in xs if x is not None]
  if not xs:
    return None, None
  return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main(argv=None) -> int:
  ap = _args.Parser(__file__, description=__doc__.splitlines()[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog="Flags after -- go to every python -m train run.")
  ap.add_argument("--out", required=True)
  ap.add_argument("--methods", type=_args.names_from(
      methods_lib.names() + tuple(_TRAINER_METHOD), "method"),
                  default="rda,prox-sgd,prune-finetune,sgd")
  ap.add_argument("--vary", default="l1", help="the python -m train option swept, "
                  "e.g. l1 or init_scale")
  ap.add_argument("--values", default="1e-4,3e-4,1e-3,3e-3")
  ap.add_argument("--seeds", type=_args.int_list(0), default="0,1,2,3,4")
  args, extra = ap.parse_known_args(argv)
  extra = [a for a in extra if a != "--"]
  out = Path(args.out)
  runs = out / "runs"
  methods = args.methods
  values = args.values.split(",")
  seeds = [int(s) for s in args.seeds]
  flag = "--" + args.vary.replace("_", "-")
  results: dict[tuple[str, str], list[dict]] = {}
  # RDA first: the methods with a target sparsity (prune-finetune, gmp,
  # rigl) train to the sparsity RDA reached.
  order = sorted(methods, key=_needs_target)
  for method in order:
    # Dense SGD ignores l1: one point per seed, not one per value.
    vals = values if not (method == "sgd" and args.vary == "l1") else ["-"]
    for value in vals:
      for seed in seeds:
        name = f"{method}-{args.vary}{value}-seed{seed}"
        run_dir = runs / name
        m = _TRAINER_METHOD.get(method, method)
        a = ["--out", str(runs), "--run-name", name, "--method", m,
             "--seed", str(seed), "--progress", "none", *extra]
        if value != "-":
          a += [flag, value]
        if method == "rda-noasr":
          a += _noasr(extra)
        if method == "prune-finetune-global":
          a += ["--prune-scope", "global"]
        if _needs_target(method) and "--target-sparsity" not in (
            extra + [flag]):
          a += ["--target-sparsity-from",
                str(runs / f"rda-{args.vary}{value}-seed{seed}")]
        if (run_dir / "summary.json").exists():
          stale = config_mismatch(run_dir, a)
          if stale:
            print(f"frontier: {run_dir} was trained with another "
                  f"configuration ({stale}); remove it or choose another "
                  "--out", file=sys.stderr)
            return 2
        else:
          print(f"frontier: {name}", file=sys.stderr, flush=True)
          code = cli.main(a)
          if code != 0:
            print(f"frontier: {name} failed with exit code {code}",
                  file=sys.stderr)
            return code
        results.setdefault((method, value), []).append(_summary(run_dir))

  points = []
  for (method, value), ss in results.items():
    t1, t1s = _stats([s["test_top1"] for s in ss])
    v1, v1s = _stats([s["val_top1"] for s in ss])
    sp, sps = _stats([s["sparsity"] for s in ss])
    points.append(dict(method=method, value=value, seeds=len(ss),
                       top1=t1, top1_std=t1s, val_top1=v1, val_top1_std=v1s,
                       sparsity=sp, sparsity_std=sps))
  out.mkdir(parents=True, exist_ok=True)
  command = "python benchmarks/frontier.py " + shlex.join(
      sys.argv[1:] if argv is None else argv)
  (out / "points.json").write_text(json.dumps(
      dict(command=command, vary=args.vary, points=points), indent=2))
  report.plot_frontier(points, out / "frontier.png",
                       title=f"top-1 against sparsity ({len(seeds)} seeds)")
  cols = [("method", "method", "s"), ("value", args.vary, "s"),
          ("top1", "test top-1 %", ".2f"), ("top1_std", "+-", ".2f"),
          ("val_top1", "val top-1 %", ".2f"), ("sparsity", "sparsity", ".4f"),
          ("sparsity_std", "+-", ".4f"), ("seeds", "seeds", "d")]
  md = f"`{command}`\n\n" + report.markdown_table(points, cols) + "\n"
  (out / "frontier.md").write_text(md)
  print(report.format_table(points, cols))
  print(f"wrote {out / 'points.json'}, {out / 'frontier.png'}, "
        f"{out / 'frontier.md'}", file=sys.stderr)
  return 0


# Options that say where or how a run ran, not what it computed.
_NOT_COMPARED = ("out", "run_name", "progress", "devices", "fsdp",
                 "data_sharding", "cache_dir", "compare", "target_sparsity")


def config_mismatch(run_dir: Path, argv: list[str]) -> str | None:
  """None when ``run_dir/config.json`` is the configuration ``python -m train
  argv`` would run (up to where it runs); else the first option that
  differs, as ``--name: stored vs wanted``. A run directory reused by a
  sweep must be the run the sweep asks for, not a stale one."""
  args = cli.parser().parse_args(argv)
  flags = {k: v for k, v in vars(args).items() if k not in cli._NOT_CONFIG}
  preset = args.preset
  if (preset is None and args.config is None and args.model is None
      and args.dataset is None):
    preset = "digits-demo"  # as python -m train itself does
  want = dataclasses.asdict(checks.build(preset, args.config, flags))
  try:
    have = json.loads((run_dir / "config.json").read_text())
  except (OSError, ValueError):
    return "no readable config.json"
  for k, v in want.items():
    if k not in _NOT_COMPARED and have.get(k) != v:
      return f"--{k.replace('_', '-')}: {have.get(k)!r} vs {v!r}"
  return None


# Frontier methods that are another method of python -m train with extra flags.
_TRAINER_METHOD = {"rda-noasr": "rda", "prune-finetune-global": "prune-finetune"}


def _needs_target(method: str) -> bool:
  return methods_lib.get(_TRAINER_METHOD.get(method, method)).needs_target


def _noasr(extra: list[str]) -> list[str]:
  """--epochs E+A --asr-epochs 0 from the passed-through flags.

  Debiasing needs ASR's frozen zeros, so a passed --debias-epochs becomes 0.
  """
  def get(name, default):
    return int(extra[extra.index(name) + 1]) if name in extra else default
  e, a = get("--epochs", 30), get("--asr-epochs", 10)
  return ["--epochs", str(e + a), "--asr-epochs", "0", "--debias-epochs", "0"]


if __name__ == "__main__":
  sys.exit(main())
