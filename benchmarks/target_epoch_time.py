"""Seconds per training epoch of ``python -m train --method rda`` on digits: a
fixed ``--l1``, and ``--target-sparsity`` with the exact and the sampled
``lambda_t`` (``--threshold-samples``).

Each variant is the trainer's own compiled epoch (``train.run.build_run``,
the digits-demo preset: small CNN, batch 64, 20 steps); after one epoch to
compile, the variants run in turns, ``--repeats`` rounds, so a load change
on a shared machine hits them alike. Prints the median seconds per epoch
and the ratio to the fixed ``l1``.

  python benchmarks/target_epoch_time.py [--repeats 5] [--samples 16384]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax

from train import inputs  # noqa: E402
from train import checks  # noqa: E402
from train import config as config_lib
from train import run as run_lib
from benchmarks import _args


def main(argv=None) -> int:
  ap = _args.Parser(__file__, description=__doc__.splitlines()[0])
  ap.add_argument("--repeats", type=_args.int_at_least(1), default=5)
  ap.add_argument("--samples", type=_args.int_at_least(1), default=16384)
  ap.add_argument("--target", type=_args.float_in(0.0, 1.0), default=0.95)
  args = ap.parse_args(argv)
  variants = {
      "l1 1e-3": {},
      "target, exact": dict(target_sparsity=args.target, threshold_samples=0),
      f"target, {args.samples} samples": dict(
          target_sparsity=args.target, threshold_samples=args.samples),
  }
  runs = {}
  for name, flags in variants.items():
    cfg = checks.build("digits-demo", None, dict(progress="none", **flags))
    splits = inputs.load_data(cfg)
    r = run_lib.build_run(cfg, "rda", splits,
                          target=flags.get("target_sparsity"))
    state, m = r.train_epoch(r.state, r.images, r.labels, jax.random.key(1))
    jax.block_until_ready((state, m))
    runs[name] = [r, state, []]
  for i in range(args.repeats):
    for name, (r, state, times) in runs.items():
      t0 = time.perf_counter()
      state, m = r.train_epoch(state, r.images, r.labels,
                               jax.random.key(2 + i))
      jax.block_until_ready((state, m))
      times.append(time.perf_counter() - t0)
      runs[name][1] = state
  base = statistics.median(runs["l1 1e-3"][2])
  print(f"device: {jax.devices()[0].device_kind}; digits-demo, "
        f"{runs['l1 1e-3'][0].steps_per_epoch} steps/epoch, median of "
        f"{args.repeats}")
  for name, (_, _, times) in runs.items():
    med = statistics.median(times)
    print(f"{name:<24} {med:8.3f} s/epoch  x{med / base:5.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
