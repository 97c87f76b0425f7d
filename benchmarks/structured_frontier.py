"""Accuracy against FLOPs: group RDA vs network slimming vs dense, over seeds.

For each ``--group-l1`` value and seed, one ``python -m train --compare
rda,net-slim,sgd --structure channel`` run (in-process): RDA with the
channel group lasso, network slimming pruned to the FLOPs that RDA run
reached (same seed, same epochs), and dense SGD. Writes to ``--out``:

- ``points.json``: every run's method, value, seed, FLOPs ratio, widths and
  val/test top-1 (the slim model's, which equals the unslimmed one's);
- ``structured.md``: mean and std over seeds per (method, value), with the
  command.

  python benchmarks/structured_frontier.py --out runs/structured-digits \\
      --values 1.5e-3,2e-3 --seeds 0,1,2,3,4 -- --epochs 15 --asr-epochs 5
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _args  # noqa: E402
from train import cli  # noqa: E402

METHODS = ("rda", "net-slim", "sgd")


def _ms(xs):
  xs = [x for x in xs if x is not None]
  if not xs:
    return "n/a"
  sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
  return f"{statistics.fmean(xs):.3f} ± {sd:.3f}"


def main(argv=None) -> int:
  ap = _args.Parser(__file__, description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--values", type=_args.float_list(0.0),
                  default="1.5e-3,2e-3")
  ap.add_argument("--seeds", type=_args.int_list(0), default="0,1,2,3,4")
  args, extra = ap.parse_known_args(argv)
  if extra and extra[0] == "--":
    extra = extra[1:]
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  points = []
  for value in args.values:
    for seed in args.seeds:
      name = f"g{value}-s{seed}"
      code = cli.main(["--out", str(out / "runs"), "--run-name", name,
                       "--compare", ",".join(METHODS), "--structure",
                       "channel", "--group-l1", value, "--seed", seed,
                       "--progress", "none", *extra])
      if code != 0:
        print(f"{name}: python -m train exited {code}", file=sys.stderr)
        return code
      for m in METHODS:
        s = json.loads((out / "runs" / f"{name}-{m}" / "summary.json")
                       .read_text())
        points.append(dict(
            method=m, group_l1=float(value), seed=int(seed),
            flops_ratio=s["flops"]["ratio"], widths=(s.get("slim") or {})
            .get("widths"), test_top1=s["test_top1"], val_top1=s["val_top1"],
            slim_test_top1=(s.get("slim") or {}).get("test_top1"),
            wall_s=s["wall_s"]))
      (out / "points.json").write_text(json.dumps(points, indent=1))
  cmd = "python benchmarks/structured_frontier.py " + shlex.join(
      argv if argv is not None else sys.argv[1:])
  lines = [f"`{cmd}`", "",
           "| method | group_l1 of the rda run | FLOPs (slim / dense) | "
           "test top-1 % | val top-1 % | seeds |",
           "|---|---|---|---|---|---|"]
  for value in args.values:
    for m in METHODS:
      ps = [p for p in points if p["method"] == m
            and p["group_l1"] == float(value)]
      lines.append(
          f"| {m} | {value} | {_ms([p['flops_ratio'] for p in ps])} | "
          f"{_ms([p['test_top1'] for p in ps])} | "
          f"{_ms([p['val_top1'] for p in ps])} | {len(ps)} |")
  (out / "structured.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
