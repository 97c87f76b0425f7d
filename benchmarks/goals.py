"""Issue 5's goals, checked on finished runs: gap to dense, prune-finetune.

Reads every run directory under RUNS (``config.json`` + ``summary.json``),
groups the runs by model and total epochs (the budget), and for each sparse
run (``rda``, ``prox-sgd``) reports:

- the gap to dense SGD of the same model and budget (the mean top-1 of the
  ``sgd`` runs among RUNS, one per seed, or ``--dense-top1`` when the dense
  run was measured elsewhere);
- goal 2: sparsity >= ``--min-sparsity`` and a gap <= ``--max-gap`` points;
- goal 3: top-1 above the ``prune-finetune`` run of the same model and
  budget pruned to the same sparsity (within 0.001).

Validation top-1 is the measure (the test split is held out); a run without a
validation split uses its test top-1 and says so. Writes ``goals.md`` and,
per group, a comparison plot of the curves into RUNS.

  python benchmarks/goals.py runs/issue5
  python benchmarks/goals.py runs/issue5 --dense-top1 91.34
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import report  # noqa: E402

_SPARSE = ("rda", "prox-sgd")
# Two prune-finetune runs "match" when their kernel sparsities agree this
# closely: the pruner hits its target to a handful of weights.
_SAME_SPARSITY = 1e-3


def _load(run_dir: Path) -> dict | None:
  try:
    config = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    method, model = config["method"], config["model"]
    budget = config["epochs"] + config["asr_epochs"]
    top1, split = summary.get("val_top1"), "val"
    if top1 is None:
      top1, split = summary.get("test_top1"), "test"
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return None  # unfinished, or not an rda-train run
  return dict(run=run_dir.name, dir=run_dir, method=method,
              model=model, budget=budget, top1=top1, split=split,
              sparsity=summary.get("sparsity") or 0.0,
              debias=config.get("debias_epochs") or 0)


def check(runs: list[dict], dense_top1: float | None = None,
          min_sparsity: float = 0.95, max_gap: float = 1.0) -> list[dict]:
  """Adds gap, goal-2 and goal-3 fields to every sparse run; returns all."""
  for r in runs:
    if r["method"] not in _SPARSE:
      continue
    peers = [p for p in runs
             if (p["model"], p["budget"]) == (r["model"], r["budget"])]
    # Over seeds, the dense reference is the mean of every dense run of the
    # same model and budget, not whichever was listed first.
    dense = [p["top1"] for p in peers
             if p["method"] == "sgd" and p["top1"] is not None]
    ref = sum(dense) / len(dense) if dense else dense_top1
    if ref is not None and r["top1"] is not None:
      r["dense"] = ref
      r["gap"] = ref - r["top1"]
      r["goal2"] = "yes" if (r["sparsity"] >= min_sparsity
                             and r["gap"] <= max_gap) else "no"
    pruned = [p for p in peers if p["method"] == "prune-finetune"
              and abs(p["sparsity"] - r["sparsity"]) <= _SAME_SPARSITY]
    if pruned and r["top1"] is not None:
      r["prune_ft"] = pruned[0]["top1"]
      r["goal3"] = "yes" if r["top1"] > pruned[0]["top1"] else "no"
  return runs


_COLUMNS = [("run", "run", "s"), ("model", "model", "s"),
            ("budget", "epochs", "d"), ("split", "split", "s"),
            ("top1", "top-1 %", ".2f"), ("sparsity", "sparsity", ".4f"),
            ("dense", "dense %", ".2f"), ("gap", "gap", ".2f"),
            ("goal2", "goal 2", "s"), ("prune_ft", "prune-ft %", ".2f"),
            ("goal3", "goal 3", "s")]


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("runs", help="a directory of run directories")
  ap.add_argument("--dense-top1", type=float, default=None,
                  help="dense SGD top-1 to compare with when RUNS holds no "
                  "sgd run of the same model and budget")
  ap.add_argument("--min-sparsity", type=float, default=0.95)
  ap.add_argument("--max-gap", type=float, default=1.0)
  ap.add_argument("--no-plots", action="store_true")
  args = ap.parse_args(argv)
  root = Path(args.runs)
  dirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
  runs = [r for r in map(_load, dirs) if r is not None]
  if not runs:
    print(f"goals.py: no finished run (config.json + summary.json) under "
          f"{root}", file=sys.stderr)
    return 2
  check(runs, args.dense_top1, args.min_sparsity, args.max_gap)
  print(report.format_table(runs, _COLUMNS))
  md = (f"Goal 2: sparsity >= {args.min_sparsity:g} and top-1 within "
        f"{args.max_gap:g} points of dense SGD at the same epochs. Goal 3: "
        "above prune-finetune at the same sparsity and epochs.\n\n"
        + report.markdown_table(runs, _COLUMNS) + "\n")
  (root / "goals.md").write_text(md)
  if not args.no_plots:
    groups: dict[tuple, list[Path]] = {}
    for r in runs:
      groups.setdefault((r["model"], r["budget"]), []).append(r["dir"])
    for (model, budget), members in groups.items():
      report.plot_compare(members, root / f"compare-{model}-{budget}.png",
                          title=f"{model}, {budget} epochs")
  print(f"wrote {root / 'goals.md'}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
