"""How far the cheaper thresholds of ``rda(..., target_sparsity=...)`` let the
sparsity drift from the target, in a real training loop.

Trains the small CNN on scikit-learn's digits (batch 64, gamma 1, init
scale 2, as the digits demo) with a cubic ramp of the target from 0 to
``--target`` over the first half of the steps, then constant, for three
ways of choosing ``lambda_t``: exact every step, exact every ``--every``
steps, and estimated every step from ``--samples`` sampled entries. Prints,
per variant, the largest and the mean absolute gap between the kernels'
sparsity after a step and the target of that step, and the last test top-1.

  python benchmarks/target_drift.py [--steps 400] [--target 0.95]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import models
import rda_optax
from benchmarks import _args


def main(argv=None) -> None:
  p = _args.Parser(__file__, description=__doc__.splitlines()[0])
  # The ramp is the first half of the steps: at least one step long.
  p.add_argument("--steps", type=_args.int_at_least(2), default=400)
  p.add_argument("--target", type=_args.float_in(0.0, 1.0), default=0.95)
  p.add_argument("--every", type=_args.int_at_least(1), default=10)
  p.add_argument("--samples", type=_args.int_at_least(1), default=1 << 14)
  args = p.parse_args(argv)

  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
  x = jnp.asarray((x - x.mean()) / x.std())
  y = jnp.asarray(y)
  rng = np.random.default_rng(0)
  order = rng.permutation(len(x))
  test, train = order[:360], order[360:]
  model = models.get("small_cnn", num_classes=10,
                     kernel_init=rda_optax.scaled_uniform(2.0))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  ramp = args.steps // 2
  s_final = args.target

  def schedule(c):
    frac = jnp.minimum(c, ramp) / ramp
    return s_final * (1.0 - (1.0 - frac) ** 3)

  variants = {
      "exact": dict(),
      f"every {args.every}": dict(threshold_every=args.every),
      f"sampled {args.samples}": dict(threshold_samples=args.samples),
  }
  n_kernels = sum(int(l.size) for l in jax.tree.leaves(variables["params"])
                  if l.ndim >= 2)
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; small CNN, "
        f"{n_kernels} kernel weights; target {s_final} (cubic ramp over "
        f"{ramp} steps), {args.steps} steps")
  for name, kw in variants.items():
    tx = rda_optax.rda(1.0, None, target_sparsity=schedule, **kw)
    params, stats = variables["params"], variables["batch_stats"]
    state = tx.init(params)

    @jax.jit
    def step(params, stats, state, idx):
      def loss(p):
        logits, upd = model.apply({"params": p, "batch_stats": stats},
                                  x[idx], train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, y[idx]).mean(), upd
      (_, upd), g = jax.value_and_grad(loss, has_aux=True)(params)
      u, state = tx.update(g, state, params)
      params = optax.apply_updates(params, u)
      return params, upd["batch_stats"], state, rda_optax.sparsity(params)

    gaps = []
    batches = np.random.default_rng(1)
    for t in range(args.steps):
      idx = batches.choice(train, 64, replace=False)
      params, stats, state, sp = step(params, stats, state, idx)
      gaps.append(abs(float(sp) - float(schedule(jnp.float32(t)))))
    logits = model.apply({"params": params, "batch_stats": stats}, x[test],
                         train=False)
    top1 = 100 * float(jnp.mean(jnp.argmax(logits, -1) == y[test]))
    late = gaps[ramp:]
    print(f"{name:>16}: |sparsity - target| max {max(gaps):.5f} (step "
          f"{int(np.argmax(gaps))}), mean "
          f"{np.mean(gaps):.5f}; after the ramp max {max(late):.5f}; "
          f"final sparsity {float(sp):.5f}; test top-1 {top1:.2f}%")


if __name__ == "__main__":
  main()
