import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rda_optax


def test_zeros_never_come_back_under_random_steps():
  key = jax.random.key(0)
  params = {"w": jax.random.normal(key, (20, 20)), "b": jnp.zeros(20)}
  tx = optax.chain(rda_optax.rda(1.0, 0.8), rda_optax.freeze_zeros(0))
  state = tx.init(params)
  step = jax.jit(tx.update)
  zero_before = np.zeros((20, 20), bool)
  for i in range(200):
    g = jax.tree.map(lambda p, k=jax.random.fold_in(key, i):
                     2.0 * jax.random.normal(k, p.shape), params)
    u, state = step(g, state, params)
    params = optax.apply_updates(params, u)
    zero_now = np.asarray(params["w"]) == 0
    assert not np.any(zero_before & ~zero_now), f"revived at step {i}"
    zero_before = zero_now
  assert zero_before.mean() > 0.3
  # The 1-D bias started at zero and must not have been frozen.
  assert np.all(np.asarray(params["b"]) != 0)


def test_mask_picks_the_leaves_whose_zeros_stay():
  # Against the default (kernels only): the kernel is left free, the bias
  # frozen.
  params = {"kernel": jnp.array([[0.0, 1.0]]), "bias": jnp.array([0.0, 1.0])}
  tx = rda_optax.freeze_zeros(0, mask={"kernel": False, "bias": True})
  u = {"kernel": jnp.ones((1, 2)), "bias": jnp.ones(2)}
  out, _ = tx.update(u, tx.init(params), params)
  np.testing.assert_array_equal(out["kernel"], [[1.0, 1.0]])
  np.testing.assert_array_equal(out["bias"], [0.0, 1.0])


def test_mask_that_does_not_fit_is_refused_by_init():
  tx = rda_optax.freeze_zeros(0, mask={"w": True})
  with pytest.raises(ValueError, match="^mask: tree structure"):
    tx.init({"w": jnp.ones((2, 2)), "b": jnp.ones(2)})


def test_inactive_before_start():
  params = {"w": jnp.array([[0.0, 1.0]])}
  tx = rda_optax.freeze_zeros(start_step=1)
  state = tx.init(params)
  u = {"w": jnp.ones((1, 2))}
  out, state = tx.update(u, state, params)
  np.testing.assert_array_equal(out["w"], [[1.0, 1.0]])
  out, state = tx.update(u, state, params)
  np.testing.assert_array_equal(out["w"], [[0.0, 1.0]])


def test_after_prox_sgd():
  params = {"w": jnp.array([[0.0, 0.5]])}
  tx = optax.chain(rda_optax.prox_sgd(0.1, 0.0), rda_optax.freeze_zeros())
  u, _ = tx.update({"w": jnp.ones((1, 2))}, tx.init(params), params)
  np.testing.assert_allclose(optax.apply_updates(params, u)["w"], [[0.0, 0.4]])


def test_injected_start_step_under_jit():
  params = {"w": jnp.array([[0.0, 1.0]])}
  tx = optax.inject_hyperparams(rda_optax.freeze_zeros)(start_step=1)
  state = tx.init(params)
  step = jax.jit(tx.update)
  u = {"w": jnp.ones((1, 2))}
  out, state = step(u, state, params)
  np.testing.assert_array_equal(out["w"], [[1.0, 1.0]])
  out, state = step(u, state, params)
  np.testing.assert_array_equal(out["w"], [[0.0, 1.0]])
  state.hyperparams["start_step"] = jnp.full_like(
      state.hyperparams["start_step"], 5)  # same type: no retrace
  out, _ = step(u, state, params)
  np.testing.assert_array_equal(out["w"], [[1.0, 1.0]])
  assert step._cache_size() == 1


@pytest.mark.parametrize("bad", [-1, 1.5, True, jnp.asarray(-1),
                                 jnp.asarray(2.0), jnp.asarray([1, 2])])
def test_bad_start_step(bad):
  with pytest.raises(ValueError, match="start_step"):
    rda_optax.freeze_zeros(bad)
