"""Markdown tables of a folder of CIFAR run directories, as docs/RESULTS.md
shows them: validation top-1 after every epoch, then the runs ranked by
their final validation top-1 with their per-layer sparsity, FLOPs and, for
runs that trained on the slim model, the training img/s before and after
the switch; then, for every row run with more than one seed (run names
ending in -sN), the mean and spread over the seeds. --plot FILE draws the
seed-mean validation curves of those rows.

  python scripts/cifar_tables.py docs/results/cifar-smallcnn-r3
  python scripts/cifar_tables.py docs/results/cifar-smallcnn-r3 --plot curves.png
  python scripts/cifar_tables.py runs/cifar-channel --layers conv0,conv1,hidden,classifier
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path


def _rows(run: Path) -> list[dict]:
  path = run / "metrics.jsonl"
  if not path.is_file():
    return []
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def _summary(run: Path) -> dict | None:
  path = run / "summary.json"
  return json.loads(path.read_text()) if path.is_file() else None


def curves(runs: list[Path], epochs: int) -> str:
  head = "| run | status | " + " | ".join(f"e{i}" for i in range(1, epochs + 1))
  lines = [head + " | sparsity at last epoch |",
           "|---" * (epochs + 3) + "|"]
  for run in runs:
    rows = _rows(run)
    if not rows:
      continue
    status = "done" if _summary(run) else f"stopped after {rows[-1]['epoch']}"
    vals = [f"{r['val_top1']:.1f}" for r in rows] + [""] * (epochs - len(rows))
    lines.append(f"| {run.name} | {status} | " + " | ".join(vals)
                 + f" | {rows[-1]['sparsity']:.4f} |")
  return "\n".join(lines)


def ranking(runs: list[Path], layers: list[str]) -> str:
  done = [(run, _summary(run), _rows(run)) for run in runs]
  done = [(r, s, rows) for r, s, rows in done if s is not None and rows]
  done.sort(key=lambda x: -x[1]["val_top1"])
  lines = ["| run | val top-1 | sparsity | kernel sparsity "
           + " / ".join(layers) + " | FLOPs ratio | img/s before / after "
           "the switch |", "|---|---|---|---|---|---|"]
  for run, s, rows in done:
    per = rows[-1]["sparsity_per_layer"]
    sp = " / ".join(f"{per.get(f'[{l!r}][' + repr('kernel') + ']', float('nan')):.3f}"
                    for l in layers)
    t = s.get("train_slim")
    speed = (f"{t['images_per_sec_before']:.0f} / "
             f"{t['images_per_sec_after']:.0f}" if t else "")
    lines.append(f"| {run.name} | {s['val_top1']:.2f} | {s['sparsity']:.4f} "
                 f"| {sp} | {s['flops']['ratio']:.3f} | {speed} |")
  return "\n".join(lines)


def _by_row(runs: list[Path]) -> dict[str, list[Path]]:
  """Finished runs grouped by their name without the -sN seed suffix."""
  groups: dict[str, list[Path]] = {}
  for run in runs:
    m = re.fullmatch(r"(.+)-s(\d+)", run.name)
    if m and _summary(run) is not None:
      groups.setdefault(m.group(1), []).append(run)
  return groups


def seeds(runs: list[Path]) -> str:
  lines = ["| row | seeds | val top-1 per seed | mean | spread (max - min) "
           "| sparsity (mean) |", "|---|---|---|---|---|---|"]
  groups = [(k, v) for k, v in _by_row(runs).items() if len(v) > 1]
  groups.sort(key=lambda kv: -statistics.mean(
      _summary(r)["val_top1"] for r in kv[1]))
  for key, rs in groups:
    accs = [_summary(r)["val_top1"] for r in rs]
    sps = [_summary(r)["sparsity"] for r in rs]
    names = ", ".join(r.name.rsplit("-s", 1)[1] for r in rs)
    lines.append(f"| {key} | {names} | "
                 + " / ".join(f"{a:.2f}" for a in accs)
                 + f" | {statistics.mean(accs):.2f} | {max(accs) - min(accs):.2f}"
                 f" | {statistics.mean(sps):.4f} |")
  return "\n".join(lines)


def plot(runs: list[Path], path: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for key, rs in sorted(_by_row(runs).items()):
    if len(rs) < 2:
      continue
    curves_ = [[r["val_top1"] for r in _rows(run)] for run in rs]
    n = min(len(c) for c in curves_)
    mean = [statistics.mean(c[i] for c in curves_) for i in range(n)]
    ax.plot(range(1, n + 1), mean, marker="o", ms=3,
            label=f"{key} ({len(rs)} seeds)")
  ax.set_xlabel("epoch")
  ax.set_ylabel("validation top-1 (%), mean over seeds")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("folder")
  ap.add_argument("--epochs", type=int, default=15)
  ap.add_argument("--layers", default="conv0,conv1,hidden,classifier")
  ap.add_argument("--plot", type=Path, default=None, metavar="FILE",
                  help="also draw the seed-mean curves of rows with >1 seed")
  args = ap.parse_args(argv)
  folder = Path(args.folder)
  if not folder.is_dir():
    print(f"cifar_tables.py: {folder} is not a directory", file=sys.stderr)
    return 2
  runs = sorted(p for p in folder.iterdir() if (p / "config.json").is_file())
  print(curves(runs, args.epochs))
  print()
  print(ranking(runs, args.layers.split(",")))
  table = seeds(runs)
  if table.count("\n") > 1:
    print()
    print(table)
  if args.plot is not None:
    plot(runs, args.plot)
  return 0


if __name__ == "__main__":
  sys.exit(main())
