"""Markdown tables of a folder of CIFAR run directories, as docs/RESULTS.md
shows them: validation top-1 after every epoch, then the runs ranked by
their final validation top-1 with their per-layer sparsity, FLOPs and, for
runs that trained on the slim model, the training img/s before and after
the switch.

  python scripts/cifar_tables.py docs/results/cifar-smallcnn-r3
  python scripts/cifar_tables.py runs/cifar-channel --layers conv0,conv1,hidden,classifier
"""

from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("folder")
  ap.add_argument("--epochs", type=int, default=15)
  ap.add_argument("--layers", default="conv0,conv1,hidden,classifier")
  args = ap.parse_args(argv)
  folder = Path(args.folder)
  if not folder.is_dir():
    print(f"cifar_tables.py: {folder} is not a directory", file=sys.stderr)
    return 2
  runs = sorted(p for p in folder.iterdir() if (p / "config.json").is_file())
  print(curves(runs, args.epochs))
  print()
  print(ranking(runs, args.layers.split(",")))
  return 0


if __name__ == "__main__":
  sys.exit(main())
