import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rda_optax
from rda_optax import _gmp

import _toy_tree  # tests/_toy_tree.py


_params = _toy_tree.params
_grads = _toy_tree.grads


def _cubic(t, s_i, s_f, t0, n, dt):
  return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3


def test_schedule_hits_cubic_values_at_named_steps_and_zeros_stay():
  params = _params()
  s_i, s_f, t0, n, dt = 0.1, 0.9, 3, 4, 2
  tx = rda_optax.gmp(optax.sgd(0.05, momentum=0.9), s_f, begin_step=t0,
                     end_step=t0 + n * dt, delta_t=dt, initial_sparsity=s_i)
  state = tx.init(params)
  step = jax.jit(tx.update)
  dead = {k: np.zeros(p.shape, bool) for k, p in params.items()}
  expect = {k: p.size for k, p in params.items()}
  for t in range(16):
    u, state = step(_grads(params, t), state, params)
    params = optax.apply_updates(params, u)
    if t >= t0 and (t - t0) % dt == 0 and t <= t0 + n * dt:
      s_t = _cubic(t, s_i, s_f, t0, n, dt)
      for k in ("w", "v"):
        expect[k] = round(params[k].size * (1 - s_t))
    for k, p in params.items():
      nz = np.asarray(p) != 0
      assert int(nz.sum()) == expect[k], (t, k)
      assert int(np.asarray(state.masks[k]).sum()) == expect[k], (t, k)
      assert not np.any(dead[k] & nz), f"pruned {k} revived at step {t}"
      dead[k] = ~nz
      # The momentum of a pruned entry is held at zero.
      trace = np.asarray(state.inner_state[0].trace[k])
      assert np.all(trace[~np.asarray(state.masks[k])] == 0)
  assert expect["w"] == round(500 * 0.1) and expect["b"] == 8


def test_a_pruned_entry_never_returns_even_against_an_exact_zero():
  # Step 0 prunes entry 0; the step's gradient then drives entry 1 to exactly
  # 0. At step 1 both are zero; the dead one must lose the tie it would win
  # by position.
  params = {"w": jnp.array([[1.0, 2.0, 3.0, 4.0]])}
  tx = rda_optax.gmp(optax.sgd(1.0), 0.25, initial_sparsity=0.25,
                     begin_step=0, end_step=1, delta_t=1)
  state, step = tx.init(params), jax.jit(tx.update)
  g = {"w": jnp.array([[0.0, 2.0, 0.0, 0.0]])}
  for _ in range(2):
    u, state = step(g, state, params)
    params = optax.apply_updates(params, u)
    g = jax.tree.map(jnp.zeros_like, g)
  np.testing.assert_array_equal(state.masks["w"], [[False, True, True, True]])
  np.testing.assert_array_equal(params["w"], [[0.0, 0.0, 3.0, 4.0]])


@pytest.mark.parametrize("distribution", ["erk", "global"])
def test_final_budget_of_erk_and_global(distribution):
  params = _params(2)
  tx = rda_optax.gmp(optax.sgd(0.01), 0.8, begin_step=0, end_step=4,
                     delta_t=2, distribution=distribution)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(6):
    u, state = step(_grads(params, t), state, params)
    params = optax.apply_updates(params, u)
  nnz = {k: int(np.sum(np.asarray(p) != 0)) for k, p in params.items()}
  n = params["w"].size + params["v"].size
  assert nnz["w"] + nnz["v"] == round(n * 0.2)
  assert nnz["b"] == 8
  if distribution == "erk":
    counts = rda_optax.keep_counts(params, 0.8, "erk")
    assert (nnz["w"], nnz["v"]) == (counts["w"], counts["v"])


def test_global_prunes_the_smallest_magnitudes_across_leaves():
  # One leaf is 100x larger: a single global threshold prunes the other.
  params = {"big": 100.0 * jnp.ones((4, 5)) + jnp.arange(20.0).reshape(4, 5),
            "small": jnp.ones((4, 5)) + jnp.arange(20.0).reshape(4, 5) / 100}
  tx = rda_optax.gmp(optax.sgd(0.0), 0.5, begin_step=0, end_step=0,
                     distribution="global")
  u, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params),
                            tx.init(params), params)
  out = optax.apply_updates(params, u)
  assert np.all(np.asarray(out["big"]) != 0)
  assert np.all(np.asarray(out["small"]) == 0)


def test_mask_keeps_excluded_leaves_dense():
  params = _params()
  tx = rda_optax.gmp(optax.sgd(0.01), 0.9, begin_step=0, end_step=0,
                     mask={"w": True, "v": False, "b": False})
  u, state = jax.jit(tx.update)(_grads(params, 0), tx.init(params), params)
  out = optax.apply_updates(params, u)
  assert int(np.sum(np.asarray(out["w"]) != 0)) == 50
  assert np.all(np.asarray(out["v"]) != 0)
  assert np.all(np.asarray(state.masks["v"]))


@pytest.mark.parametrize("distribution", ["erk", "global"])
def test_mask_sets_the_budget_of_erk_and_global(distribution):
  # The budget is 10% of the masked leaves only: "v", left out, neither
  # gives nor takes any of it.
  params = _params()
  tx = rda_optax.gmp(optax.sgd(0.01), 0.9, begin_step=0, end_step=0,
                     distribution=distribution,
                     mask={"w": True, "v": False, "b": False})
  u, _ = jax.jit(tx.update)(_grads(params, 0), tx.init(params), params)
  out = optax.apply_updates(params, u)
  assert int(np.sum(np.asarray(out["w"]) != 0)) == 50
  assert np.all(np.asarray(out["v"]) != 0)


def test_apply_if_finite_skips_a_bad_pruning_step():
  params = _params()
  tx = optax.apply_if_finite(
      rda_optax.gmp(optax.sgd(0.05, momentum=0.9), 0.5, begin_step=1,
                    end_step=1), 3)
  state = tx.init(params)
  step = jax.jit(tx.update)
  u, state = step(_grads(params, 0), state, params)
  params = optax.apply_updates(params, u)
  bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan),
                     _grads(params, 1))
  u, state = step(bad, state, params)
  assert int(state.inner_state.count) == 1
  assert all(np.all(np.asarray(m)) for m in jax.tree.leaves(
      state.inner_state.masks))
  u, state = step(_grads(params, 1), state, params)
  params = optax.apply_updates(params, u)
  assert int(np.sum(np.asarray(params["w"]) != 0)) == 250


def test_eval_shape_init_and_extra_args():
  params = _params()
  tx = rda_optax.gmp(optax.sgd(0.1), 0.5, begin_step=0, end_step=0)
  shapes = jax.eval_shape(tx.init, params)
  assert shapes.masks["w"].shape == (20, 25)
  assert shapes.masks["w"].dtype == jnp.bool_
  # Extra args (e.g. optax.contrib's value=) pass through to the inner rule.
  u, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, value=jnp.float32(1.0)))(
      _grads(params, 0), tx.init(params), params)
  assert int(np.sum(np.asarray(optax.apply_updates(params, u)["w"]) != 0)) == 250


def test_bad_arguments():
  with pytest.raises(ValueError, match="multiple of delta_t"):
    rda_optax.gmp(optax.sgd(0.1), 0.5, begin_step=0, end_step=5, delta_t=2)
  with pytest.raises(ValueError, match="initial_sparsity"):
    rda_optax.gmp(optax.sgd(0.1), 0.5, begin_step=0, end_step=0,
                  initial_sparsity=0.6)
  with pytest.raises(ValueError, match="distribution"):
    rda_optax.gmp(optax.sgd(0.1), 0.5, begin_step=0, end_step=0,
                  distribution="random")
  # Out of [0, 1]: the message names the argument.
  with pytest.raises(ValueError, match="^target_sparsity must be in"):
    rda_optax.gmp(optax.sgd(0.1), 1.5, begin_step=0, end_step=0)
  with pytest.raises(ValueError, match="^initial_sparsity must be in"):
    rda_optax.gmp(optax.sgd(0.1), 0.5, begin_step=0, end_step=0,
                  initial_sparsity=-0.1)
  tx = rda_optax.gmp(optax.sgd(0.1), 0.5, begin_step=0, end_step=0)
  with pytest.raises(ValueError, match="params"):
    tx.update(_params(), tx.init(_params()))
  # A mask that does not fit the params is refused by init, not later.
  tx = rda_optax.gmp(optax.sgd(0.1), 0.5, begin_step=0, end_step=0,
                     mask={"w": True})
  with pytest.raises(ValueError, match="^mask: tree structure"):
    tx.init(_params())


def test_recovers_the_true_support_of_a_sparse_regression():
  rng = np.random.default_rng(0)
  n, d, k = 200, 50, 5
  X = rng.normal(size=(n, d)).astype(np.float32)
  support = np.sort(rng.choice(d, k, replace=False))
  w_true = np.zeros((d, 1), np.float32)
  w_true[support, 0] = rng.choice([-1, 1], k) * rng.uniform(1, 2, k)
  y = X @ w_true + 0.1 * rng.normal(size=(n, 1)).astype(np.float32)
  X, y = jnp.asarray(X), jnp.asarray(y)
  params = {"w": jnp.asarray(0.1 * rng.normal(size=(d, 1)), jnp.float32)}
  tx = rda_optax.gmp(optax.sgd(0.05, momentum=0.9), 1 - k / d,
                     begin_step=50, end_step=250, delta_t=10)
  loss = lambda p: jnp.mean((X @ p["w"] - y) ** 2)

  @jax.jit
  def step(params, state):
    g = jax.grad(loss)(params)
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state

  state = tx.init(params)
  for _ in range(400):
    params, state = step(params, state)
  found = np.flatnonzero(np.asarray(params["w"])[:, 0])
  np.testing.assert_array_equal(found, support)
  np.testing.assert_allclose(np.asarray(params["w"]), w_true, atol=0.1)


def test_docstring_examples():
  res = doctest.testmod(_gmp, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert res.attempted > 0 and res.failed == 0
