"""Size of the compressed sparse export against the dense float32 variables.

Prints, for each variables tree, the dense float32 size (every leaf of
params and batch_stats), the exported file's size with float32 and with
bfloat16 values, and their ratios to dense. Goal at 97% sparsity: at most
6.5% of dense with float32 values, at most 5% with bfloat16.

Trees measured:
- ``--run RUN_DIR`` (optional): the final variables of a finished
  ``python -m train`` run, as ``python -m train export`` writes them.
- ResNet-18 (CIFAR stem, 10 classes) built with ``models.get``: no trained
  ResNet-18 is at hand on a CPU, so its kernels get the per-layer sparsity of
  a real run's last metrics row (``--layers``, default the H200 run in
  docs/results) and, separately, exactly 97% in every kernel; the zeros sit
  at random positions (seeded). The non-zero values are the model's own
  initial values; the 1-D leaves and BatchNorm statistics get random values
  (not the init's 0s and 1s, which would compress unrealistically well).

  python benchmarks/export_size.py [--run RUN_DIR] [--layers METRICS.jsonl]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

import models
import rda_optax
from benchmarks import _args

ROOT = Path(__file__).resolve().parents[1]
H200_RUN = ROOT / "docs/results/h200-2026-11-26/rda-70-30/metrics.jsonl"


def resnet18_variables(per_layer: dict[str, float] | float, seed: int = 0):
  """ResNet-18 variables whose kernels have the given sparsity, zeros at
  random positions; ``per_layer`` maps ``jax.tree_util.keystr`` paths of
  ``params`` to sparsity, or is one sparsity for every kernel."""
  model = models.get("resnet18", num_classes=10)
  variables = jax.jit(model.init)(jax.random.key(seed),
                                  jnp.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    x = np.array(x, np.float32)
    key = jax.tree_util.keystr(path[1:])
    if path[0].key == "params" and x.ndim >= 2:
      s = per_layer if isinstance(per_layer, float) else per_layer[key]
      zeros = int(round(s * x.size))
      flat = x.reshape(-1)
      flat[rng.choice(x.size, zeros, replace=False)] = 0.0
      return flat.reshape(x.shape)
    scale = rng.uniform(0.5, 1.5, x.shape) if "var" in key or "scale" in key else 0
    return (scale + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, jax.device_get(variables))


def run_variables(run_dir: Path):
  from train import export
  return export.final_variables(Path(run_dir), "--run")


def measure(name: str, variables) -> None:
  dense = sum(np.asarray(x).size * 4 for x in jax.tree.leaves(variables))
  kernels = rda_optax.sparsity(variables["params"])
  with tempfile.TemporaryDirectory() as d:
    sizes = {v: rda_optax.save_sparse(Path(d) / v, variables, values=v)
             for v in ("float32", "bfloat16")}
    back = rda_optax.load_sparse(Path(d) / "float32")
  same = all(np.array_equal(np.asarray(a).view(np.uint32), b.view(np.uint32))
             for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(back)))
  print(f"{name}: kernel sparsity {float(kernels):.4f}, dense float32 "
        f"{dense} B, float32 values {sizes['float32']} B = "
        f"{100 * sizes['float32'] / dense:.2f}% of dense (bit-identical on "
        f"reload: {same}), bfloat16 values {sizes['bfloat16']} B = "
        f"{100 * sizes['bfloat16'] / dense:.2f}% of dense")


def read_layers(path: Path) -> dict[str, float]:
  """The last row's per-layer sparsity of a ``metrics.jsonl``, keyed by the
  path under ``params``."""
  rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
  if not rows or not isinstance(rows[-1].get("sparsity_per_layer"), dict):
    raise ValueError("its last row has no sparsity_per_layer")
  return {k.removeprefix("['params']"): float(v)
          for k, v in rows[-1]["sparsity_per_layer"].items()}


def main(argv=None) -> int:
  p = _args.Parser(__file__, description=__doc__.splitlines()[0])
  p.add_argument("--run", type=_args.existing_dir,
                 help="a finished python -m train run directory")
  p.add_argument("--layers", type=_args.existing_file, default=str(H200_RUN),
                 help="metrics.jsonl whose last row's sparsity_per_layer "
                 "sets the ResNet-18 kernels' sparsity")
  args = p.parse_args(argv)
  # Both inputs are read before anything is measured, so a bad one costs
  # one line, not a traceback after the first table.
  try:
    per_layer = read_layers(args.layers)
  except (OSError, ValueError, TypeError, AttributeError) as e:
    p.error(f"argument --layers: {args.layers}: {e}")
  run = None
  if args.run:
    from train._errors import UsageError
    try:
      run = run_variables(args.run)
    except (UsageError, ValueError, OSError) as e:
      p.error(str(e))  # names --run already
  try:
    per_layer_tree = resnet18_variables(per_layer)
  except KeyError as e:
    p.error(f"argument --layers: {args.layers}: no sparsity for the "
            f"ResNet-18 kernel {e} (a metrics.jsonl of another model?)")
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
  if run is not None:
    measure(f"run {args.run}", run)
  layers = os.path.relpath(args.layers, ROOT)
  measure(f"resnet18, per-layer sparsity of {layers}", per_layer_tree)
  measure("resnet18, 97% uniform", resnet18_variables(0.97))
  return 0


if __name__ == "__main__":
  sys.exit(main())
