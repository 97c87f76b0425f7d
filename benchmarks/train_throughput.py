"""Training images per second: RDA (+ASR) against dense SGD, same everything.

One training epoch of ``--steps`` steps (the trainer's own compiled epoch:
on-device gather, augmentation, normalization, forward/backward, optimizer)
is timed for each method on the same model, batch, dtype and data, side by
side in one process. Prints images/s and the ratio RDA / SGD (target >= 0.95).

  python benchmarks/train_throughput.py [--model resnet18] [--batch-size 128]
      [--steps 50] [--repeats 3] [--dtype auto] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

import models
import rda_optax
from train import engine, optim, parallel
from train.config import Config


def measure(method, model_name, batch, steps, repeats, dtype, shape, classes,
            scan, devices=None, sharded_data=False):
  """Images/s of the trainer's compiled epoch; ``devices``: data-parallel
  over the first N devices (``train.parallel``), None for no mesh;
  ``sharded_data``: one row shard of the images per device."""
  cfg = Config(method=method, epochs=1, asr_epochs=1, batch_size=batch,
               l1=1e-4, gamma=1.0)
  n = steps * batch
  rng = np.random.default_rng(0)
  topo = None if devices is None else parallel.topology(devices)
  put = (jax.device_put if topo is None
         else (lambda x: parallel.shard_rows(x, topo, 0)) if sharded_data
         else lambda x: parallel.put_global(x, topo.replicated()))
  images = put(rng.integers(0, 256, (n,) + shape, dtype=np.uint8))
  labels = put(rng.integers(0, classes, n).astype(np.int32))
  kinit = ({"kernel_init": rda_optax.scaled_uniform(10.0)}
           if method == "rda" else {})
  model = models.get(model_name, num_classes=classes, dtype=dtype, **kinit)
  v = model.init(jax.random.key(0), jnp.zeros((1,) + shape))
  tx = engine.wrap_finite(optim.build(cfg, method, steps).tx)
  state = engine.TrainState(v["params"], v["batch_stats"], tx.init(v["params"]),
                            jnp.zeros([], jnp.int32))
  shardings = None
  if topo is not None:
    shardings = jax.tree.map(lambda _: topo.replicated(), state)
    state = jax.tree.map(lambda x, s: parallel.put_global(np.asarray(x), s),
                         state, shardings)
  epoch = engine.make_train_epoch(
      model, tx, steps, batch, np.full(shape[-1], 0.5), np.full(shape[-1], 0.25),
      "crop-flip" if shape[-1] == 3 else "none", 0.0, classes, dtype,
      n // topo.size if sharded_data else n, scan=scan, topo=topo,
      state_shardings=shardings, sharded_data=sharded_data)
  state, m = epoch(state, images, labels, jax.random.key(1))  # compile
  jax.block_until_ready(m)
  times = []
  for r in range(repeats):
    t0 = time.perf_counter()
    state, m = epoch(state, images, labels, jax.random.key(2 + r))
    jax.block_until_ready((state, m))
    times.append(time.perf_counter() - t0)
  return n / statistics.median(times)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default="resnet18")
  ap.add_argument("--batch-size", type=int, default=128)
  ap.add_argument("--steps", type=int, default=None,
                  help="steps per timed epoch (default 100 on GPU, 5 on CPU)")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--dtype", default="auto")
  ap.add_argument("--image-shape", default="32,32,3")
  ap.add_argument("--methods", default="sgd,rda,prox-sgd")
  ap.add_argument("--json")
  args = ap.parse_args(argv)
  gpu = jax.default_backend() != "cpu"
  steps = args.steps or (100 if gpu else 5)
  dtype = (jnp.bfloat16 if gpu else jnp.float32) if args.dtype == "auto" \
      else jnp.dtype(args.dtype)
  shape = tuple(int(s) for s in args.image_shape.split(","))
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} ({dev.platform}); {args.model}, batch "
        f"{args.batch_size}, {jnp.dtype(dtype).name}, {steps} steps/epoch, "
        f"median of {args.repeats}")
  res = {}
  for method in args.methods.split(","):
    res[method] = measure(method, args.model, args.batch_size, steps,
                          args.repeats, dtype, shape, 10, None)
    print(f"{method:<9} {res[method]:>10,.0f} images/s")
  ratio = res["rda"] / res["sgd"]
  print(f"rda / sgd = {ratio:.3f} (target >= 0.95): "
        f"{'OK' if ratio >= 0.95 else 'BELOW TARGET'}")
  if args.json:
    Path(args.json).write_text(json.dumps(dict(
        device=dev.device_kind, model=args.model, batch=args.batch_size,
        dtype=jnp.dtype(dtype).name, images_per_sec=res, ratio=ratio), indent=2))


if __name__ == "__main__":
  main()
