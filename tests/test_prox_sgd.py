import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rda_optax


def test_fobos_step_matches_equation_12():
  lr, lam = 0.5, 0.4
  params = {"w": jnp.array([[1.0, 0.1], [-0.3, 2.0]]), "b": jnp.array([0.2, 0.2])}
  g = {"w": jnp.array([[0.2, 0.1], [0.2, -1.0]]), "b": jnp.array([1.0, -1.0])}
  tx = rda_optax.prox_sgd(lr, lam)
  u, _ = tx.update(g, tx.init(params), params)
  new = optax.apply_updates(params, u)
  half = params["w"] - lr * g["w"]
  np.testing.assert_allclose(new["w"], rda_optax.soft_threshold(half, lr * lam),
                             rtol=1e-6)
  # Criterion (19): zero exactly where |w - lr g| <= lr * lam.
  np.testing.assert_array_equal(np.asarray(new["w"]) == 0,
                                np.abs(np.asarray(half)) <= lr * lam)
  np.testing.assert_allclose(new["b"], params["b"] - lr * g["b"], rtol=1e-6)


def test_momentum_trace():
  params = {"w": jnp.ones((2, 2))}
  g = {"w": jnp.ones((2, 2))}
  tx = rda_optax.prox_sgd(0.1, 0.0, momentum=0.9)
  state = tx.init(params)
  for _ in range(2):
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
  # v1 = 1, v2 = 1.9: w = 1 - 0.1 - 0.19
  np.testing.assert_allclose(params["w"], 0.71, rtol=1e-6)
  np.testing.assert_allclose(state.trace["w"], 1.9, rtol=1e-6)


def test_schedule_learning_rate_shrinks_threshold():
  sched = optax.piecewise_constant_schedule(1.0, {1: 0.01})
  tx = rda_optax.prox_sgd(sched, 0.5)
  params = {"w": jnp.full((2, 2), 0.3)}
  state = tx.init(params)
  g = {"w": jnp.zeros((2, 2))}
  u, state = tx.update(g, state, params)
  assert np.all(np.asarray(optax.apply_updates(params, u)["w"]) == 0)
  u, state = tx.update(g, state, params)  # threshold now 0.005 < 0.3
  np.testing.assert_allclose(optax.apply_updates(params, u)["w"], 0.295,
                             rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(learning_rate=0.0, l1=0.1), "learning_rate"),
    (dict(learning_rate=0.1, l1=-1.0), "l1"),
    (dict(learning_rate=0.1, l1=0.1, momentum=1.0), "momentum"),
])
def test_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rda_optax.prox_sgd(**kwargs)


def test_nan_gradient_gives_nan_not_zero():
  params = {"w": jnp.ones((2, 2))}
  tx = rda_optax.prox_sgd(0.1, 100.0)  # a threshold far above |w|
  u, _ = tx.update({"w": jnp.full((2, 2), jnp.nan)}, tx.init(params), params)
  assert np.all(np.isnan(np.asarray(optax.apply_updates(params, u)["w"])))


def test_injected_momentum_under_jit():
  params = {"w": jnp.ones((2, 2))}
  g = {"w": jnp.ones((2, 2))}
  tx = optax.inject_hyperparams(rda_optax.prox_sgd)(0.1, 0.0, momentum=0.9)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(2):
    u, state = step(g, state, params)
    params = optax.apply_updates(params, u)
  np.testing.assert_allclose(params["w"], 0.71, rtol=1e-6)  # as eager above
  # momentum = 0 injected: same state structure, plain prox-SGD steps.
  state.hyperparams["momentum"] = jnp.float32(0.0)
  u, state = step(g, state, params)
  np.testing.assert_allclose(u["w"], -0.1, rtol=1e-6)
  state.hyperparams["momentum"] = jnp.float32(1.0)  # untestable when traced
  u, _ = step(g, state, params)
  assert np.all(np.isnan(np.asarray(u["w"])))
  with pytest.raises(ValueError, match="momentum"):
    rda_optax.prox_sgd(0.1, 0.0, momentum=jnp.float32(1.5))


def test_integer_params_refused():
  # By init and by update (params may change type between the two), each
  # message naming the optimizer and the leaf.
  tx = rda_optax.prox_sgd(0.1, 0.1)
  ints = {"w": jnp.ones((2, 2), jnp.int32)}
  with pytest.raises(ValueError, match=r"^prox_sgd: params leaf \['w'\] .*floating"):
    tx.init(ints)
  state = tx.init({"w": jnp.ones((2, 2))})
  with pytest.raises(ValueError, match=r"^prox_sgd: params leaf \['w'\] .*floating"):
    tx.update({"w": jnp.ones((2, 2))}, state, ints)
