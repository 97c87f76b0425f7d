"""Training images per second: RDA (+ASR) against dense SGD, same everything.

One training epoch of ``--steps`` steps (the trainer's own compiled epoch:
on-device gather, augmentation, normalization, forward/backward, optimizer)
is timed for each method on the same model, batch, dtype and data, side by
side in one process. Prints images/s and the ratio RDA / SGD (target >= 0.95).

  python benchmarks/train_throughput.py [--model resnet18] [--batch-size 128]
      [--steps 50] [--repeats 3] [--dtype auto] [--json F]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from train import data as data_lib
from train import methods as methods_lib
from train import run as run_lib
from train.config import Config
from benchmarks import _args


def measure(method, model_name, batch, steps, repeats, dtype, shape, classes,
            scan, devices=None, sharded_data=False, init_scale=10.0):
  """Images/s of the trainer's compiled epoch, set up as ``python -m train`` sets
  it up (``train.run.build_run``) on ``steps`` batches of random images.

  ``devices``: data-parallel over the first N devices (default: all);
  ``sharded_data``: one row shard of the images per device; ``init_scale``:
  s of the scaled uniform init, Table 3's 10 for ResNet-18 on CIFAR-10 (the
  step costs the same whatever the init).
  """
  cfg = Config(model=model_name, method=method, epochs=1, asr_epochs=1,
               batch_size=batch, l1=1e-4, gamma=1.0, init_scale=init_scale,
               dtype=jnp.dtype(dtype).name, devices=devices, val_fraction=0.0,
               data_sharding="sharded" if sharded_data else "replicated",
               augment="crop-flip" if shape[-1] == 3 else "none")
  rng = np.random.default_rng(0)
  n = steps * batch
  train = data_lib.Arrays(rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
                          rng.integers(0, classes, n).astype(np.int32))
  splits = data_lib.Splits(train, None, None, classes,
                           [str(c) for c in range(classes)], "random", [])
  r = run_lib.build_run(cfg, method, splits, scan=scan)
  state, m = r.train_epoch(r.state, r.images, r.labels, jax.random.key(1))
  jax.block_until_ready(m)  # compiled
  times = []
  for i in range(repeats):
    t0 = time.perf_counter()
    state, m = r.train_epoch(state, r.images, r.labels, jax.random.key(2 + i))
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - t0)
  return n / statistics.median(times)


def add_common(ap, *, model: str, shape: str) -> None:
  """The flags this script shares with scaling.py, checked alike."""
  import models
  ap.add_argument("--model", type=_args.one_of(models.names(), "model"),
                  default=model)
  ap.add_argument("--image-shape", type=_args.image_shape, default=shape)
  ap.add_argument("--repeats", type=_args.int_at_least(1), default=3)
  ap.add_argument("--json", type=_args.output_file)


def main(argv=None):
  ap = _args.Parser(__file__, description=__doc__.splitlines()[0])
  add_common(ap, model="resnet18", shape="32,32,3")
  ap.add_argument("--batch-size", type=_args.int_at_least(1), default=128)
  ap.add_argument("--steps", type=_args.int_at_least(1), default=None,
                  help="steps per timed epoch (default 100 on GPU, 5 on CPU)")
  ap.add_argument("--dtype", type=_args.float_dtype, default="auto")
  ap.add_argument("--methods", type=_args.names_from(methods_lib.names(),
                                                     "method"),
                  default="sgd,rda,prox-sgd")
  args = ap.parse_args(argv)
  gpu = jax.default_backend() != "cpu"
  steps = args.steps or (100 if gpu else 5)
  dtype = (jnp.bfloat16 if gpu else jnp.float32) if args.dtype == "auto" \
      else jnp.dtype(args.dtype)
  shape = args.image_shape
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} ({dev.platform}); {args.model}, batch "
        f"{args.batch_size}, {jnp.dtype(dtype).name}, {steps} steps/epoch, "
        f"median of {args.repeats}")
  res = {}
  for method in args.methods:
    res[method] = measure(method, args.model, args.batch_size, steps,
                          args.repeats, dtype, shape, 10, None)
    print(f"{method:<9} {res[method]:>10,.0f} images/s")
  ratio = res["rda"] / res["sgd"] if {"rda", "sgd"} <= set(res) else None
  if ratio is not None:
    print(f"rda / sgd = {ratio:.3f} (target >= 0.95): "
          f"{'OK' if ratio >= 0.95 else 'BELOW TARGET'}")
  if args.json:
    Path(args.json).write_text(json.dumps(dict(
        device=dev.device_kind, model=args.model, batch=args.batch_size,
        dtype=jnp.dtype(dtype).name, images_per_sec=res, ratio=ratio), indent=2))


if __name__ == "__main__":
  main()
