"""Training images/s against device count: data parallelism on jax.sharding.

For N = 1, 2, 4, ... up to the visible devices, times the trainer's compiled
epoch (RDA + ASR) with the global batch split over N devices, and prints
images/s and the scaling efficiency ``(ips_N / ips_1) / N`` at a fixed
per-device batch (weak scaling: global batch = N x --per-device-batch), for
the replicated and the sharded data layout side by side (``--data-sharding``
of the trainer).

On CPU, simulate devices with
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/scaling.py
(they share the machine's cores, so efficiency there measures overhead, not
speed-up). A single-GPU machine shows only the 1-device point.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp

from benchmarks import _args
from benchmarks.train_throughput import add_common, measure
from train import methods as methods_lib


def main(argv=None):
  ap = _args.Parser(__file__, description=__doc__.splitlines()[0])
  add_common(ap, model="small_cnn", shape="8,8,1")
  ap.add_argument("--per-device-batch", type=_args.int_at_least(1),
                  default=32)
  ap.add_argument("--steps", type=_args.int_at_least(1), default=20)
  ap.add_argument("--method", type=_args.one_of(methods_lib.names(),
                                                "method"), default="rda")
  ap.add_argument("--layouts", type=_args.names_from(
      ("replicated", "sharded"), "layout"), default="replicated,sharded")
  args = ap.parse_args(argv)
  gpu = jax.default_backend() != "cpu"
  dtype = jnp.bfloat16 if gpu else jnp.float32
  shape = args.image_shape
  total = jax.device_count()
  counts = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= total]
  dev = jax.devices()[0]
  print(f"{total} x {dev.device_kind} ({dev.platform}); {args.model} "
        f"{','.join(map(str, shape))}, {args.method}, "
        f"{args.per_device_batch} images per device per step, {args.steps} "
        "steps")
  rows = []
  for layout in args.layouts:
    base = None
    for n in counts:
      ips = measure(args.method, args.model, n * args.per_device_batch,
                    args.steps, args.repeats, dtype, shape, 10, None,
                    devices=n, sharded_data=layout == "sharded")
      base = base or ips
      rows.append(dict(layout=layout, devices=n, images_per_sec=ips,
                       efficiency=ips / base / n))
      print(f"{layout:>10} {n:>4} devices {ips:>12,.0f} images/s  "
            f"efficiency {rows[-1]['efficiency']:.2f}")
  if args.json:
    Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
  main()
