import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import rda_optax
from rda_optax import _rigl

import _toy_tree  # tests/_toy_tree.py


_params = _toy_tree.params
_grads = _toy_tree.grads


def test_active_count_constant_and_updates_only_on_schedule():
  params = _params()
  delta_t, t_end = 5, 22
  tx = rda_optax.rigl(optax.sgd(0.05, momentum=0.9), 0.8, t_end=t_end,
                      delta_t=delta_t, alpha=0.3, seed=3)
  state = tx.init(params)
  counts = rda_optax.keep_counts(params, 0.8, "erk")
  step = jax.jit(tx.update)
  changed_at = []
  for t in range(30):
    old = jax.tree.map(np.asarray, state.masks)
    u, state = step(_grads(params, t), state, params)
    params = optax.apply_updates(params, u)
    new = jax.tree.map(np.asarray, state.masks)
    for k in ("w", "v"):
      assert new[k].sum() == counts[k], (t, k)
      nz = np.asarray(params[k]) != 0
      assert not np.any(nz & ~new[k]), (t, k)
      assert nz.sum() <= counts[k]
      grown = new[k] & ~old[k]
      dropped = old[k] & ~new[k]
      assert grown.sum() == dropped.sum()
      d_t = math.floor(0.15 * (1 + math.cos(math.pi * t / t_end))
                       * counts[k] + 0.5)
      assert grown.sum() <= d_t
      # Grown weights start at exactly zero.
      assert np.all(np.asarray(params[k])[grown] == 0), (t, k)
      if grown.any():
        changed_at.append(t)
    assert np.all(new["b"])
  assert sorted(set(changed_at)) == [5, 10, 15, 20]


def test_drops_smallest_and_grows_largest_gradient_exactly():
  params = {"w": jnp.arange(1.0, 11.0).reshape(1, 10)}
  tx = rda_optax.rigl(optax.sgd(0.1, momentum=0.9), 0.5, t_end=1000,
                      delta_t=1, alpha=0.4, distribution="uniform", seed=0)
  state = tx.init(params)
  m0 = np.asarray(state.masks["w"])[0]
  assert m0.sum() == 5
  step = jax.jit(tx.update)
  # Step 0 (no mask update): inactive weights go to 0, active ones move.
  zero = {"w": jnp.zeros((1, 10))}
  u, state = step(zero, state, params)
  params = optax.apply_updates(params, u)
  np.testing.assert_array_equal(np.asarray(params["w"])[0] != 0, m0)
  # Step 1: d = round(0.2 (1 + cos(pi/1000)) * 5) = 2.
  g = np.where(m0, 0.0, np.arange(1.0, 11.0) * 10).astype(np.float32)
  u, state = step({"w": jnp.asarray(g)[None]}, state, params)
  before = np.asarray(params["w"])[0]
  params = optax.apply_updates(params, u)
  m1 = np.asarray(state.masks["w"])[0]
  active = np.flatnonzero(m0)
  dropped = set(active[np.argsort(np.abs(before[active]))[:2]])
  inactive = np.flatnonzero(~m0)
  grown = set(inactive[np.argsort(-g[inactive])[:2]])
  assert set(np.flatnonzero(m0 & ~m1)) == dropped
  assert set(np.flatnonzero(m1 & ~m0)) == grown
  w = np.asarray(params["w"])[0]
  assert np.all(w[sorted(grown | dropped)] == 0)
  # The grown weights' first step starts from a zero momentum: -lr * g.
  g2 = np.arange(10, dtype=np.float32)
  u, state = step({"w": jnp.asarray(g2)[None]}, state, params)
  params = optax.apply_updates(params, u)
  idx = sorted(grown)
  np.testing.assert_allclose(np.asarray(params["w"])[0][idx], -0.1 * g2[idx],
                             rtol=1e-6)


def test_nan_gradients_keep_the_active_count():
  # Without apply_if_finite, a NaN gradient on an update step must still
  # leave exactly k active entries (NaN ranks as 0 for growth).
  params = {"w": jnp.arange(1.0, 11.0).reshape(1, 10)}
  tx = rda_optax.rigl(optax.sgd(0.1), 0.5, t_end=10, delta_t=1,
                      distribution="uniform")
  state = tx.init(params)
  u, state = jax.jit(tx.update)({"w": jnp.full((1, 10), jnp.nan)},
                                state._replace(count=jnp.int32(1)), params)
  assert int(state.masks["w"].sum()) == 5


def test_nan_gradients_rank_as_zero_for_growth():
  # Growth picks the largest finite |g| below 1 over the NaN ones.
  params = {"w": jnp.arange(1.0, 11.0).reshape(1, 10)}
  tx = rda_optax.rigl(optax.sgd(0.1), 0.5, t_end=1000, delta_t=1, alpha=0.4,
                      distribution="uniform", seed=0)
  state = tx.init(params)
  m0 = np.asarray(state.masks["w"])[0]
  inactive = np.flatnonzero(~m0)
  g = np.zeros(10, np.float32)
  g[inactive[:3]] = np.nan
  g[inactive[3:]] = [0.5, 0.25]
  _, state = jax.jit(tx.update)({"w": jnp.asarray(g)[None]},
                                state._replace(count=jnp.int32(1)), params)
  m1 = np.asarray(state.masks["w"])[0]
  assert set(np.flatnonzero(m1 & ~m0)) == set(inactive[3:])


def test_apply_if_finite_and_eval_shape():
  params = _params()
  tx = optax.apply_if_finite(
      rda_optax.rigl(optax.sgd(0.05, momentum=0.9), 0.9, t_end=10, delta_t=1),
      3)
  shapes = jax.eval_shape(tx.init, params)
  assert shapes.inner_state.masks["w"].dtype == jnp.bool_
  state = tx.init(params)
  step = jax.jit(tx.update)
  u, state = step(_grads(params, 0), state, params)
  params = optax.apply_updates(params, u)
  masks = jax.tree.map(np.asarray, state.inner_state.masks)
  bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.inf),
                     _grads(params, 1))
  u, state = step(bad, state, params)
  assert int(state.inner_state.count) == 1
  jax.tree.map(np.testing.assert_array_equal, masks,
               jax.tree.map(np.asarray, state.inner_state.masks))


def test_orbax_round_trip_gives_identical_next_update(tmp_path):
  params = _params()
  tx = rda_optax.rigl(optax.sgd(0.05, momentum=0.9), 0.8, t_end=10, delta_t=2)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(3):
    u, state = step(_grads(params, t), state, params)
    params = optax.apply_updates(params, u)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "ck", {"params": params, "opt_state": state})
  ckpt.wait_until_finished()
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                        {"params": params, "opt_state": state})
  restored = ckpt.restore(tmp_path / "ck", target)
  assert isinstance(restored["opt_state"], rda_optax.RigLState)
  # Step 4 is a mask update: the restored masks and momentum must agree.
  for t in (3, 4):
    u1, s1 = step(_grads(params, t), state, params)
    u2, s2 = step(_grads(params, t), restored["opt_state"],
                  restored["params"])
    jax.tree.map(np.testing.assert_array_equal, (u1, s1), (u2, s2))
    state, params = s1, optax.apply_updates(params, u1)
    restored = {"opt_state": s2,
                "params": optax.apply_updates(restored["params"], u2)}


def test_seed_picks_the_initial_mask():
  params = _params()
  a = rda_optax.rigl(optax.sgd(0.1), 0.8, t_end=10, seed=0).init(params)
  b = rda_optax.rigl(optax.sgd(0.1), 0.8, t_end=10, seed=0).init(params)
  c = rda_optax.rigl(optax.sgd(0.1), 0.8, t_end=10,
                     seed=1).init(params)
  np.testing.assert_array_equal(a.masks["w"], b.masks["w"])
  assert np.any(np.asarray(a.masks["w"]) != np.asarray(c.masks["w"]))


def test_bad_arguments():
  with pytest.raises(ValueError, match="distribution"):
    rda_optax.rigl(optax.sgd(0.1), 0.5, t_end=10, distribution="global")
  with pytest.raises(ValueError, match="t_end"):
    rda_optax.rigl(optax.sgd(0.1), 0.5, t_end=0)
  with pytest.raises(ValueError, match="alpha"):
    rda_optax.rigl(optax.sgd(0.1), 0.5, t_end=10, alpha=1.5)


def test_docstring_examples():
  res = doctest.testmod(_rigl, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert res.attempted > 0 and res.failed == 0
