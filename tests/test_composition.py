"""rda in a real network and across a checkpoint round-trip."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from sklearn.datasets import load_digits

import rda_optax


class TinyCNN(nn.Module):
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    # A normalization after each conv, as in the paper's networks: RDA
    # rebuilds w from the averaged gradient, so the weights' scale after the
    # first step is set by that gradient, and without normalization the
    # signal dies in a deep stack of small weights.
    x = nn.relu(nn.LayerNorm()(nn.Conv(8, (3, 3), kernel_init=self.kernel_init)(x)))
    x = nn.relu(nn.LayerNorm()(nn.Conv(8, (3, 3), kernel_init=self.kernel_init)(x)))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(10, kernel_init=self.kernel_init)(x)


@pytest.fixture(scope="module")
def digits():
  X, y = load_digits(return_X_y=True)
  return jnp.asarray(X.reshape(-1, 8, 8, 1) / 16.0, jnp.float32), jnp.asarray(y)


def _train(model, params, tx, X, y, steps=150):
  def loss(p):
    logits = model.apply({"params": p}, X)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, s):
    l, g = jax.value_and_grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, l

  state = tx.init(params)
  losses = []
  for _ in range(steps):
    params, state, l = step(params, state)
    losses.append(float(l))
  return params, losses


def test_proposition_1_zero_init_never_moves(digits):
  X, y = digits
  model = TinyCNN(kernel_init=nn.initializers.zeros)
  params = model.init(jax.random.key(0), X[:1])["params"]
  with pytest.warns(RuntimeWarning, match="Proposition 1"):
    tx = rda_optax.rda(1.0, 1e-4)
    tx.init(params)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    out, losses = _train(model, params, tx, X, y, steps=50)
  for name in ("Conv_0", "Conv_1"):
    assert np.all(np.asarray(out[name]["kernel"]) == 0), name
  # Only the classifier's bias can move, so the loss stays near log(10).
  assert losses[-1] > 2.0


def test_scaled_uniform_init_trains(digits):
  X, y = digits
  model = TinyCNN(kernel_init=rda_optax.scaled_uniform(2.0))
  params = model.init(jax.random.key(0), X[:1])["params"]
  out, losses = _train(model, params, rda_optax.rda(1.0, 1e-4), X, y)
  assert losses[-1] < 0.5 * losses[0]
  assert np.any(np.asarray(out["Conv_0"]["kernel"]) != 0)


def test_orbax_round_trip_gives_identical_next_update(tmp_path):
  params = {"w": jax.random.normal(jax.random.key(0), (8, 8)),
            "b": jnp.ones(8)}
  tx = optax.chain(rda_optax.rda(1.0, 0.3), rda_optax.freeze_zeros(1))
  state = tx.init(params)
  g = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
  for _ in range(3):
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "ck", {"params": params, "opt_state": state})
  ckpt.wait_until_finished()
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                        {"params": params, "opt_state": state})
  restored = ckpt.restore(tmp_path / "ck", target)
  assert isinstance(restored["opt_state"][0], rda_optax.RDAState)
  g2 = jax.tree.map(lambda p: jnp.full_like(p, -0.2), params)
  u1, s1 = tx.update(g2, state, params)
  u2, s2 = tx.update(g2, restored["opt_state"], restored["params"])
  jax.tree.map(np.testing.assert_array_equal, (u1, s1), (u2, s2))
