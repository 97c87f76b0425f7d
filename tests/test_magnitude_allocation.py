"""sparsity_distribution="magnitude": the target's per-leaf zero counts are
those of one global magnitude threshold on the params passed to update (as
global GMP would prune them), each leaf then thresholded at its own count."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rda_optax
from rda_optax import _target
from train import cli, methods
from train.config import Config

# Penalized "a" (2x2) and "b" (2x3); "bias" is 1-D (unpenalized) and holds
# the smallest magnitudes, so counting it would move the allocation.
PARAMS = {"a": jnp.array([[3.0, 0.1], [0.7, 0.9]]),
          "b": jnp.array([[1.0, 0.15, 0.05], [2.0, 0.12, 0.6]]),
          "bias": jnp.array([0.01, 0.02])}
# At 0.5, Z = 5 of the 10 penalized entries: the five smallest |w| are
# 0.05 (b), 0.1 (a), 0.12 (b), 0.15 (b), 0.6 (b), so a zeros 1 and b 4.
HAND = {"a": 1, "b": 4}
SIZES = {"a": 4, "b": 6}

FACTORIES = {
    "rda": lambda **kw: rda_optax.rda(1.0, None, **kw),
    "rmda": lambda **kw: rda_optax.rmda(0.1, None, **kw),
    "grda": lambda **kw: rda_optax.grda(0.1, None, **kw),
    "prox_adam": lambda **kw: rda_optax.prox_adam(0.1, None, **kw),
}


def _grads(seed=0):
  # "a"'s gradients dwarf "b"'s, so one lambda on the dual variable
  # ("global") would zero b first: a different allocation from HAND.
  ka, kb, kc = jax.random.split(jax.random.key(seed), 3)
  return {"a": 10.0 * jax.random.normal(ka, (2, 2)),
          "b": 0.01 * jax.random.normal(kb, (2, 3)),
          "bias": jax.random.normal(kc, (2,))}


def _zeros(params):
  return {k: int(jnp.sum(params[k] == 0)) for k in SIZES}


def _global_gmp_zeros(params, s):
  keep = rda_optax.keep_counts(params, s, "global")
  return {k: SIZES[k] - keep[k] for k in SIZES}


def test_hand_counts_differ_from_the_other_allocations():
  """So that the checks below tell "magnitude" from the rest."""
  assert _global_gmp_zeros(PARAMS, 0.5) == HAND
  for dist in ("uniform", "erk"):
    keep = rda_optax.keep_counts(PARAMS, 0.5, dist)
    assert {k: SIZES[k] - keep[k] for k in SIZES} != HAND, dist


@pytest.mark.parametrize("jit", [False, True])
def test_magnitude_zero_counts_by_hand(jit):
  f = _target.magnitude_zero_counts
  if jit:
    f = jax.jit(f, static_argnums=2)
  ws = [PARAMS["a"], PARAMS["b"]]
  for target in (0.5, jnp.float32(0.5)):
    assert [int(c) for c in f(ws, target)] == [1, 4]
  # Ties at the threshold: at 0.3, Z = 3 of 0.05 (b), 0.1 (a) and one of
  # the two 0.2s; global top-k keeps the earlier (a's), so b's goes.
  tied = [jnp.array([[3.0, 0.1], [0.7, 0.2]]),
          jnp.array([[1.0, 0.2, 0.05], [2.0, 0.4, 0.6]])]
  assert [int(c) for c in f(tied, 0.3)] == [1, 2]
  # Ties at 0 (weights already zero) and the ends of the range.
  zeroed = [jnp.array([0.0, 0.0, 1.0, 2.0]), jnp.array([0.0, 3.0, 0.5, 4.0])]
  assert [int(c) for c in f(zeroed, 0.25)] == [1, 1]  # Z = 2 of 3 zeros
  assert [int(c) for c in f(zeroed, 0.5)] == [2, 2]
  assert [int(c) for c in f(zeroed, 0.0)] == [0, 0]
  assert [int(c) for c in f(zeroed, 1.0)] == [4, 4]


def test_magnitude_zero_counts_match_global_keep_counts():
  """Random weights with many ties and zeros, every target: the counts of
  one global magnitude threshold, ties broken as global_top_k_masks."""
  rng = np.random.default_rng(0)
  shapes = [(3, 3, 2, 4), (17,), (5, 6)]
  ws = [jnp.asarray(np.round(rng.standard_normal(s), 1), jnp.float32)
        for s in shapes]
  n = sum(math.prod(s) for s in shapes)
  f = jax.jit(_target.magnitude_zero_counts)
  for z in range(n + 1):
    s = z / n
    keep = rda_optax.keep_counts(ws, s, "global", mask=[True] * 3)
    want = [math.prod(sh) - k for sh, k in zip(shapes, keep)]
    assert [int(c) for c in f(ws, jnp.float32(s))] == want, z


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_each_method_zeros_the_global_magnitude_counts(name):
  tx = FACTORIES[name](target_sparsity=0.5, sparsity_distribution="magnitude")
  state = tx.init(PARAMS)
  g = _grads()
  u_eager, s_eager = tx.update(g, state, PARAMS)
  u_jit, s_jit = jax.jit(tx.update)(g, state, PARAMS)
  p_eager = optax.apply_updates(PARAMS, u_eager)
  p_jit = optax.apply_updates(PARAMS, u_jit)
  for p in (p_eager, p_jit):
    # rmda's iterate averages in W (momentum 0.1): its prox point carries
    # the zeros; with momentum 1 (below) the iterate is the prox point.
    if name != "rmda":
      assert _zeros(p) == HAND
      assert sum(_zeros(p).values()) == 5  # the target, exactly
    assert int(jnp.sum(p["bias"] == 0)) == 0
  for k in PARAMS:
    np.testing.assert_allclose(p_jit[k], p_eager[k], rtol=1e-6, atol=1e-7)
    assert np.array_equal(np.asarray(p_jit[k]) == 0,
                          np.asarray(p_eager[k]) == 0)
  lams = {k: float(s_jit.lambda_t[k]) for k in SIZES}
  assert lams["a"] != lams["b"]  # one lambda per leaf
  for k in SIZES:
    assert float(s_eager.lambda_t[k]) == pytest.approx(lams[k], rel=1e-6)


def test_rmda_prox_point_has_the_counts():
  tx = rda_optax.rmda(0.1, None, momentum=1.0, target_sparsity=0.5,
                      sparsity_distribution="magnitude")
  u, _ = jax.jit(tx.update)(_grads(), tx.init(PARAMS), PARAMS)
  assert _zeros(optax.apply_updates(PARAMS, u)) == HAND


def _steps(tx, n, params=PARAMS):
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for t in range(n):
    u, state = update(_grads(t), state, params)
    out.append(params)  # the params this step ranked
    params = optax.apply_updates(params, u)
    out.append(params)
  return out


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_counts_follow_the_current_iterate_on_a_schedule(name):
  """Every step, a ramp of the target: the new iterate's per-leaf zeros
  are the global magnitude threshold's counts on the params passed in."""
  ramp = lambda c: jnp.minimum(0.2 + 0.1 * c, 0.7)
  kw = dict(momentum=1.0) if name == "rmda" else {}
  tx = FACTORIES[name](target_sparsity=ramp,
                       sparsity_distribution="magnitude", **kw)
  run = _steps(tx, 6)
  for t in range(6):
    before, after = run[2 * t], run[2 * t + 1]
    s_t = float(ramp(jnp.float32(t)))
    want = _global_gmp_zeros(before, s_t)
    assert _zeros(after) == want, (t, want)
    assert sum(want.values()) == 10 - round(10 * (1 - s_t))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_inject_hyperparams(name):
  factory = {"rda": rda_optax.rda, "rmda": rda_optax.rmda,
             "grda": rda_optax.grda, "prox_adam": rda_optax.prox_adam}[name]
  kw = dict(l1=None, target_sparsity=0.5, sparsity_distribution="magnitude")
  kw.update(dict(gamma=1.0) if name == "rda" else dict(learning_rate=0.1))
  if name == "rmda":
    kw["momentum"] = 1.0
  tx = optax.inject_hyperparams(factory)(**kw)
  state = tx.init(PARAMS)
  step = jax.jit(tx.update)
  u, state = step(_grads(), state, PARAMS)
  assert _zeros(optax.apply_updates(PARAMS, u)) == HAND
  # The injected target, changed without recompiling: 0.3 zeros the three
  # smallest |w|: 0.05 (b), 0.1 (a), 0.12 (b).
  state = optax.tree_utils.tree_set(state, target_sparsity=jnp.float32(0.3))
  u, _ = step(_grads(), state, PARAMS)
  assert _zeros(optax.apply_updates(PARAMS, u)) == {"a": 1, "b": 2}
  assert step._cache_size() == 1


def test_threshold_samples_and_every():
  # A sample covering every entry is exact; threshold_every holds lambda.
  tx = rda_optax.grda(0.1, None, target_sparsity=0.5, threshold_samples=64,
                      threshold_every=2, sparsity_distribution="magnitude")
  u, _ = jax.jit(tx.update)(_grads(), tx.init(PARAMS), PARAMS)
  assert _zeros(optax.apply_updates(PARAMS, u)) == HAND


def test_refused_where_it_does_not_apply():
  with pytest.raises(ValueError, match="distribution"):
    rda_optax.gmp(optax.sgd(0.1), 0.5, begin_step=0, end_step=10,
                  distribution="magnitude")
  with pytest.raises(ValueError, match="distribution"):
    rda_optax.keep_counts(PARAMS, 0.5, "magnitude")


@pytest.mark.parametrize("name", ["rda", "rmda", "grda", "prox-adam"])
def test_trainer_hands_magnitude_to_the_optimizer(name):
  """The trainer's optimizer at a target 0.5 reached at once (no ramp):
  its first step zeros HAND (rmda: at its last step, c = 1)."""
  cfg = Config(epochs=1, asr_epochs=0, target_ramp=0.0,
               sparsity_distribution="magnitude")
  tx = methods.optimizer(cfg, name, 1, 0.5).tx
  u, _ = jax.jit(tx.update)(_grads(), tx.init(PARAMS), PARAMS)
  assert _zeros(optax.apply_updates(PARAMS, u)) == HAND


def test_trainer_rmda_with_magnitude_reaches_the_target(tmp_path):
  code = cli.main(["--out", str(tmp_path / "runs"), "--run-name", "m",
                   "--epochs", "1", "--asr-epochs", "1", "--batch-size",
                   "512", "--progress", "none", "--method", "rmda",
                   "--target-sparsity", "0.9", "--sparsity-distribution",
                   "magnitude"])
  assert code == 0
  run = tmp_path / "runs" / "m"
  assert json.loads((run / "config.json").read_text())[
      "sparsity_distribution"] == "magnitude"
  s = json.loads((run / "summary.json").read_text())
  assert abs(s["sparsity"] - 0.9) <= 1e-3, s["sparsity"]


@pytest.mark.parametrize("method", ["gmp", "rigl"])
def test_trainer_refuses_magnitude_for_pruning_methods(tmp_path, capsys,
                                                       method):
  code = cli.main(["--out", str(tmp_path / "runs"), "--progress", "none",
                   "--method", method, "--target-sparsity", "0.9",
                   "--sparsity-distribution", "magnitude"])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1 and "--method " + method in err, err
  assert "--sparsity-distribution" in err, err
  assert not (tmp_path / "runs").exists()
