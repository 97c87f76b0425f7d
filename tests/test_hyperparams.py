"""Hyper-parameters as optax passes them: injected (``inject_hyperparams``),
found by name (``tree_get``/``tree_set``), and as numpy or jax scalars."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rda_optax

INJECTED = {
    "rda": (rda_optax.rda, dict(gamma=1.0, l1=0.1)),
    "rda-target": (rda_optax.rda, dict(gamma=1.0, l1=None,
                                       target_sparsity=0.75)),
    "prox_sgd": (rda_optax.prox_sgd, dict(learning_rate=0.1, l1=0.1)),
    "rmda": (rda_optax.rmda, dict(learning_rate=0.1, l1=0.1)),
    "grda": (rda_optax.grda, dict(learning_rate=0.1, l1=0.1)),
    "prox_adam": (rda_optax.prox_adam, dict(learning_rate=0.1, l1=0.1)),
}


def _params():
  rng = np.random.default_rng(0)
  return {"kernel": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
          "bias": jnp.asarray(rng.normal(size=6), jnp.float32)}


def _grads(i, params):
  rng = np.random.default_rng(i + 1)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape),
                                            p.dtype), params)


@pytest.mark.parametrize("name", INJECTED)
def test_tree_get_and_tree_set_find_each_hyperparameter_once(name):
  """No state field is named like a hyper-parameter (RDAState.l1 was:
  tree_get(state, "l1") raised "Found multiple values")."""
  factory, kwargs = INJECTED[name]
  tx = optax.inject_hyperparams(factory)(**kwargs)
  params = _params()
  state = tx.init(params)
  _, state = tx.update(_grads(0, params), state, params)
  for key, value in kwargs.items():
    if value is None:
      continue
    assert float(optax.tree_utils.tree_get(state, key)) == pytest.approx(
        value)
    new = optax.tree_utils.tree_set(state, **{key: jnp.float32(0.5 * value)})
    assert float(new.hyperparams[key]) == pytest.approx(0.5 * value)


@pytest.mark.parametrize("target", [np.float32(0.9), jnp.float32(0.9),
                                    np.float64(0.9), np.array(0.9), 0.9])
def test_target_sparsity_accepts_numpy_and_jax_scalars(target):
  params = _params()
  for tx in (rda_optax.rda(1.0, None, target_sparsity=target),
             rda_optax.rmda(0.1, None, 1.0, target_sparsity=target),
             rda_optax.grda(0.1, None, target_sparsity=target),
             rda_optax.prox_adam(0.1, None, target_sparsity=target)):
    u, _ = tx.update(_grads(0, params), tx.init(params), params)
    out = optax.apply_updates(params, u)
    # 90% of the 48 kernel entries: round(48 * 0.1) = 5 kept.
    assert int(jnp.sum(out["kernel"] != 0)) == 5
  rda_optax.gmp(optax.sgd(0.1), target, begin_step=0, end_step=10,
                delta_t=5)
  rda_optax.rigl(optax.sgd(0.1), target, t_end=10)


@pytest.mark.parametrize("bad", [np.float32(1.5), jnp.float32(-0.1),
                                 np.array([0.5, 0.5]), "0.5", True])
def test_target_sparsity_still_refuses_bad_values(bad):
  for make in (lambda: rda_optax.rda(1.0, None, target_sparsity=bad),
               lambda: rda_optax.gmp(optax.sgd(0.1), bad, begin_step=0,
                                     end_step=10, delta_t=5),
               lambda: rda_optax.rigl(optax.sgd(0.1), bad, t_end=10)):
    with pytest.raises(ValueError, match="target_sparsity"):
      make()


def _run(tx, n, jit=True):
  params = _params()
  state = tx.init(params)
  step = jax.jit(tx.update) if jit else tx.update
  for i in range(n):
    u, state = step(_grads(i, params), state, params)
    params = optax.apply_updates(params, u)
  return params, state


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("factory,kwargs", [
    (rda_optax.rda, dict(gamma=1.0)),
    (rda_optax.rmda, dict(learning_rate=0.1, momentum=1.0)),
    (rda_optax.grda, dict(learning_rate=0.1)),
    (rda_optax.prox_adam, dict(learning_rate=0.1)),
])
def test_inject_hyperparams_with_a_target_works_out_of_the_box(
    factory, kwargs, every):
  """target_sparsity and threshold_every injected (traced under jit) give
  the plain transformation's iterates, and the target's zeros."""
  kw = dict(kwargs, l1=None, target_sparsity=0.75, threshold_every=every)
  got, state = _run(optax.inject_hyperparams(factory)(**kw), 5)
  want, _ = _run(factory(**kw), 5, jit=False)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6), got, want)
  if every == 1:  # else the sparsity drifts with a held lambda (by design)
    assert int(jnp.sum(got["kernel"] == 0)) == 36
  assert set(state.hyperparams) >= {"target_sparsity", "threshold_every"}


def test_injected_target_is_changed_without_recompiling():
  tx = optax.inject_hyperparams(rda_optax.rda)(gamma=1.0, l1=None,
                                               target_sparsity=0.5)
  params = _params()
  state = tx.init(params)
  step = jax.jit(tx.update)
  for target, zeros in ((0.5, 24), (0.25, 12), (0.9, 43)):
    state = optax.tree_utils.tree_set(state,
                                      target_sparsity=jnp.float32(target))
    u, state = step(_grads(0, params), state, params)
    assert int(jnp.sum(optax.apply_updates(params, u)["kernel"] == 0)) == (
        zeros)
  assert step._cache_size() == 1


def test_threshold_samples_must_be_static():
  kw = dict(gamma=1.0, l1=None, target_sparsity=0.5, threshold_samples=20)
  tx = optax.inject_hyperparams(rda_optax.rda)(**kw)
  params = _params()
  with pytest.raises(ValueError, match="static_args"):
    jax.jit(tx.update)(_grads(0, params), tx.init(params), params)
  tx = optax.inject_hyperparams(rda_optax.rda,
                                static_args=("threshold_samples",))(**kw)
  got, _ = _run(tx, 2)
  want, _ = _run(rda_optax.rda(**kw), 2, jit=False)
  # jit against eager: the same ops, fused differently.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6), got, want)


def test_concrete_integer_arrays_are_counts():
  rda_optax.rda(1.0, None, target_sparsity=0.5,
                threshold_every=np.int32(2), threshold_samples=jnp.int32(9))
  for bad in (np.int32(0), 1.5, np.float32(2.0), True):
    with pytest.raises(ValueError, match="threshold_every"):
      rda_optax.rda(1.0, None, target_sparsity=0.5, threshold_every=bad)
