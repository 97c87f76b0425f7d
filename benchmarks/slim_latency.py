"""Parameters, FLOPs and CPU inference latency of a slimmed model vs dense.

Builds a VGG-16bn (CIFAR form, 32x32 inputs) with random weights and random
BatchNorm statistics, kills a given fraction of the channels of every layer
at random (BatchNorm scale and bias set to 0, as group RDA with
``rda_optax.channel_groups`` leaves them), slims it with ``models.slim`` and
times both models side by side in one run: jitted eval-mode forward passes at
batch 1 and batch 64, dense and slim interleaved, median of the repeats.

This shows the mechanics of slimming (what removing channels buys on this
CPU); it is NOT a trained result: which channels a trained model loses, and
at what accuracy, is for the trainer. ``--run-dir`` times a trained one
instead: the final variables of an ``python -m train --structure`` (or
``net-slim``) run against the slim model written into it.

``--multiple 8 16`` adds each slim model again with its widths rounded up to
those multiples (the trainer's ``--width-multiple``), timed in the same
interleaved loop; ``--widths 16/48/128`` adds a slim model at given widths
(one per channel unit, ``models.channel_units`` order: the widths a trained
run fits to its FLOPs target, ``train.structure.fit_widths``), its first
channels kept; ``--model small_cnn`` times the small CNN instead of VGG.

  python benchmarks/slim_latency.py [--model vgg16bn|small_cnn]
      [--fractions 0.5 0.75] [--multiple 8 16] [--widths 16/48/128]
      [--repeats 7] [--side 32]
  python benchmarks/slim_latency.py --run-dir RUN_DIR [--side 32]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

import models
from train import export, structure
from benchmarks import _args
from train._errors import UsageError



def random_variables(model, rng, shape):
  """Random kernels (fan-in scaled) and BatchNorm statistics, no compile."""
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  abstract = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.key(0), x)
  p = traverse_util.flatten_dict(abstract["params"], sep="/")
  st = traverse_util.flatten_dict(abstract["batch_stats"], sep="/")
  for k, a in p.items():
    fan_in = np.prod(a.shape[:-1]) if len(a.shape) > 1 else 1
    p[k] = rng.normal(size=a.shape) / np.sqrt(fan_in)
  for k, a in st.items():
    st[k] = (rng.uniform(0.5, 2.0, a.shape) if k.endswith("var")
             else rng.normal(0, 0.5, a.shape))
  return {"params": traverse_util.unflatten_dict(p, sep="/"),
          "batch_stats": traverse_util.unflatten_dict(st, sep="/")}


def kill_channels(variables, fraction, rng):
  """Sets BatchNorm scale and bias to 0 on ``fraction`` of each layer."""
  p = traverse_util.flatten_dict(variables["params"], sep="/")
  for path in [k for k in p if k.endswith("/scale")]:
    bn = path[:-len("/scale")]
    n = p[path].shape[0]
    gone = rng.choice(n, int(round(fraction * n)), replace=False)
    for name in ("scale", "bias"):
      a = np.array(p[f"{bn}/{name}"])
      a[gone] = 0.0
      p[f"{bn}/{name}"] = a
  return {"params": traverse_util.unflatten_dict(p, sep="/"),
          "batch_stats": variables["batch_stats"]}


def kill_to_widths(model, variables, widths):
  """Sets BatchNorm scale and bias to 0 beyond the first ``widths[i]``
  channels of unit ``i``, so that ``models.slim`` gives those widths."""
  units = models.channel_units(model)
  if len(widths) != len(units):
    raise ValueError(f"--widths {'/'.join(map(str, widths))}: "
                     f"{type(model).__name__} has {len(units)} channel units")
  p = {k: np.array(v) for k, v in traverse_util.flatten_dict(
      variables["params"], sep="/").items()}
  for u, w in zip(units, widths):
    for n in u.norms:
      p[f"{n}/scale"][w:] = p[f"{n}/bias"][w:] = 0.0
  return {"params": traverse_util.unflatten_dict(p, sep="/"),
          "batch_stats": variables["batch_stats"]}


def _width_list(text):
  try:
    w = tuple(int(x) for x in text.split("/"))
  except ValueError:
    w = ()
  if not w or min(w) < 1:
    raise argparse.ArgumentTypeError(
        f"must be widths >= 1 joined by '/' (16/48/128), got {text!r}")
  return w


def as_f32(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)


def time_call(fn, x, min_seconds=0.2):
  """Seconds per call: loops until ``min_seconds`` have passed."""
  n, t0 = 0, time.perf_counter()
  while True:
    fn(x).block_until_ready()
    n += 1
    dt = time.perf_counter() - t0
    if dt >= min_seconds:
      return dt / n


def main(argv=None):
  ap = _args.Parser(__file__, description=__doc__.split("\n")[0])
  ap.add_argument("--fractions", type=_args.float_in(0.0, 1.0, hi_open=True),
                  nargs="+", default=[0.5, 0.75],
                  help="fraction of each layer's channels removed")
  ap.add_argument("--batch-sizes", type=_args.int_at_least(1), nargs="+",
                  default=[1, 64])
  ap.add_argument("--repeats", type=_args.int_at_least(1), default=7)
  ap.add_argument("--seed", type=_args.int_at_least(0), default=0)
  ap.add_argument("--side", type=_args.int_at_least(1), default=32,
                  help="input height = width (CIFAR: 32)")
  ap.add_argument("--run-dir", help="a finished run with a slim model: "
                  "time it against the run's own dense variables")
  ap.add_argument("--multiple", type=_args.int_at_least(1), nargs="+",
                  default=[],
                  help="also time each slim model with its widths rounded "
                  "up to a multiple of each of these, side by side "
                  "(models.slim(..., multiple=); the trainer's "
                  "--width-multiple)")
  ap.add_argument("--widths", type=_width_list, nargs="+", default=[],
                  help="also time a slim model at these widths, one per "
                  "channel unit joined by '/' (small_cnn: conv0/conv1/"
                  "hidden), its first channels kept (not with --run-dir)")
  ap.add_argument("--model", choices=("vgg16bn", "small_cnn"),
                  default="vgg16bn", help="the random-weight model (not "
                  "with --run-dir)")
  args = ap.parse_args(argv)
  rng = np.random.default_rng(args.seed)
  killed = {}  # the dense model with the channels killed: slim's reference
  if args.run_dir:
    try:
      variants, shape, what = trained(Path(args.run_dir), args.side)
    except (UsageError, ValueError, OSError) as e:
      print(f"slim_latency.py: --run-dir {args.run_dir}: {e}",
            file=sys.stderr)
      return 2
    killed["slim"] = variants["dense"][1]  # dead channels are exact zeros
  else:
    shape = (args.side, args.side, 3)
    dense = models.get(args.model)
    v_dense = random_variables(dense, rng, shape)
    variants = {"dense": (dense, as_f32(v_dense))}
    for f in args.fractions:
      name = f"slim {f:.0%}"
      killed[name] = as_f32(kill_channels(v_dense, f, rng))
      m, v = models.slim(dense, killed[name])
      variants[name] = (m, as_f32(v))
    for w in args.widths:
      name = "/".join(map(str, w))
      try:
        killed[name] = as_f32(kill_to_widths(dense, v_dense, w))
      except ValueError as e:
        print(f"slim_latency.py: {e}", file=sys.stderr)
        return 2
      m, v = models.slim(dense, killed[name])
      variants[name] = (m, as_f32(v))
    what = f"{args.model}, random weights (not trained)"
  add_multiples(variants, killed, args.multiple)
  print(f"{what}, {shape[0]}x{shape[1]}x{shape[2]} inputs; jax "
        f"{jax.__version__}, {jax.devices()[0].platform}, float32, median "
        f"of {args.repeats}")
  # Variables are arguments, not constants baked into the program, as in
  # any served model.
  applies = {k: jax.jit(functools.partial(m.apply, train=False))
             for k, (m, _) in variants.items()}
  fns = {k: functools.partial(applies[k], v) for k, (_, v) in variants.items()}
  xs = {b: jnp.asarray(rng.normal(size=(b, *shape)), jnp.float32)
        for b in args.batch_sizes}
  load0 = _loadavg()
  times = {k: {b: [] for b in xs} for k in fns}
  for fn in fns.values():
    for x in xs.values():
      fn(x).block_until_ready()  # compile
  for _ in range(args.repeats):
    for b, x in xs.items():
      for k, fn in fns.items():  # interleaved: load drifts hit all alike
        times[k][b].append(time_call(fn, x))
  load1 = _loadavg()

  base = variants["dense"]
  p0, f0 = models.param_count(base[1]["params"]), models.flops(base[0], shape)
  head = (f"{'model':<16} {'params':>10} {'x':>6} {'MFLOPs':>8} {'x':>6}"
          + "".join(f" {'ms@' + str(b):>9} {'x':>6}" for b in xs)
          + f" {'max|dlogit|':>11}")
  print(head)
  med0 = {b: statistics.median(times["dense"][b]) for b in xs}
  for k, (m, v) in variants.items():
    p, fl = models.param_count(v["params"]), models.flops(m, shape)
    row = f"{k:<16} {p:>10,} {p0 / p:>6.2f} {fl / 1e6:>8.1f} {f0 / fl:>6.2f}"
    for b in xs:
      med = statistics.median(times[k][b])
      row += f" {med * 1e3:>9.2f} {med0[b] / med:>6.2f}"
    diff = 0.0
    if k != "dense":  # against the dense model with the same dead channels
      x = xs[args.batch_sizes[0]]
      ref = applies["dense"](killed[k], x)
      diff = float(np.abs(np.asarray(fns[k](x)) - np.asarray(ref)).max())
    print(row + f" {diff:>11.1e}  widths {_widths(m)}")
  print("x: dense / this model (parameters, FLOPs, latency). max|dlogit|: "
        "slim vs the dense model with the same channels dead, float32 "
        "(summation order only).")
  print(f"load average (1 min) before/after timing: {load0} / {load1}")
  return 0


def add_multiples(variants, killed, multiples):
  """Each slim variant again at widths rounded up to each multiple (named
  ``NAME/k``): the same dead channels, so the same logits."""
  dense = variants["dense"][0]
  for name in list(killed):
    for k in multiples:
      m, v = models.slim(dense, killed[name], multiple=k)
      variants[f"{name}/{k}"] = (m, as_f32(v))
      killed[f"{name}/{k}"] = killed[name]


def _widths(model):
  w = model.widths
  return "default" if w is None else "/".join(
      str(x if isinstance(x, int) else x[0]) for x in w)


def trained(run_dir: Path, side: int):
  """The run's final variables (dense) and its slim model, as variants."""
  small, sv = structure.load_slim(run_dir)
  dense_vars = export.final_variables(run_dir, "--run-dir")
  # The run's model at its default widths (load_slim built it from the
  # run's config).
  dense = small.clone(widths=None)
  want = jax.tree.map(np.shape, dense_vars["params"])
  for c in (3, 1):  # the input channels the run's params were built for
    shape = (side, side, c)
    got = jax.eval_shape(dense.init, jax.random.key(0),
                         jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    if jax.tree.map(lambda a: a.shape, got["params"]) == want:
      break
  else:
    raise ValueError(f"its params do not fit {type(dense).__name__} on "
                     f"{side}x{side} inputs with 1 or 3 channels (--side?)")
  what = f"{type(dense).__name__} of {run_dir} (trained)"
  return ({"dense": (dense, as_f32(dense_vars)), "slim": (small, as_f32(sv))},
          shape, what)


def _loadavg():
  try:
    return Path("/proc/loadavg").read_text().split()[0]
  except OSError:
    return "n/a"


if __name__ == "__main__":
  sys.exit(main())
