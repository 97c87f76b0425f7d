"""rda(): closed form, criterion (18), Lemma 1, options and bad input."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import rda_optax


def _params(key=0):
  k1, k2 = jax.random.split(jax.random.key(key))
  return {"kernel": jax.random.normal(k1, (4, 5)),
          "bias": jax.random.normal(k2, (5,))}


def _grads(key, params):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(key), len(leaves))
  return jax.tree.unflatten(
      treedef, [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])


def _run(tx, params, steps, seed=1):
  state = tx.init(params)
  grads_seen = []
  for i in range(steps):
    g = _grads(seed + i, params)
    grads_seen.append(g)
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
  return params, state, grads_seen


@pytest.mark.parametrize("center", ["zero", "init"])
def test_closed_form_iterate(center):
  gamma, lam = 2.0, 0.3
  p0 = _params()
  params, state, gs = _run(rda_optax.rda(gamma, lam, center=center), p0, 7)
  t = 7
  gbar = jax.tree.map(lambda *g: sum(g) / t, *gs)
  k = gbar["kernel"]
  if center == "zero":
    want_k = -(np.sqrt(t) / gamma) * rda_optax.soft_threshold(k, lam)
  else:
    want_k = rda_optax.soft_threshold(
        p0["kernel"] - (np.sqrt(t) / gamma) * k, lam * np.sqrt(t) / gamma)
  want_b = p0["bias"] - (np.sqrt(t) / gamma) * gbar["bias"]
  np.testing.assert_allclose(params["kernel"], want_k, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(params["bias"], want_b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.gbar["kernel"], k, rtol=1e-5, atol=1e-6)
  assert int(state.count) == t
  # Thresholded entries are exactly zero, not rounding residues.
  zero = np.asarray(want_k) == 0
  assert zero.any()
  assert np.all(np.asarray(params["kernel"])[zero] == 0.0)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, (3, 4), elements=st.floats(-2, 2, width=32)),
       hnp.arrays(np.float32, (3, 4), elements=st.floats(-2, 2, width=32)),
       st.floats(0.0, 1.0, width=32), st.floats(0.125, 10, width=32))
def test_criterion_18(g1, g2, lam, gamma):
  """After a step, a penalized weight is zero exactly when |gbar| <= l1."""
  params = {"w": jnp.ones((3, 4))}
  tx = rda_optax.rda(float(gamma), float(lam))
  state = tx.init(params)
  for g in (g1, g2):
    u, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, u)
  gbar = np.asarray(state.gbar["w"])
  w = np.asarray(params["w"])
  # XLA flushes subnormals to zero (rda_optax/_soft_threshold.py): an average
  # of normal gradients can land below float32's smallest normal (found by
  # hypothesis: g1 = 1.1754944e-38, g2 = 0), and then counts as zero.
  # The same goes for a weight -(sqrt(t)/gamma) S(gbar) below it.
  tiny = np.finfo(np.float32).tiny
  shrunk = np.maximum(np.abs(gbar) - np.float32(lam), 0) * (np.sqrt(2) / gamma)
  flushed = (np.abs(gbar) < tiny) | (shrunk < tiny)
  np.testing.assert_array_equal(w == 0,
                                (np.abs(gbar) <= np.float32(lam)) | flushed)


def test_criterion_18_subnormal_average_counts_as_zero():
  """The example hypothesis found, kept: the average of 1.1754944e-38 and 0
  is subnormal, which XLA flushes, so the weight is zero even at l1 = 0."""
  g1 = np.zeros((3, 4), np.float32)
  g1[0, 0] = np.finfo(np.float32).tiny
  params = {"w": jnp.ones((3, 4))}
  tx = rda_optax.rda(2.0, 0.0)
  state = tx.init(params)
  for g in (g1, np.zeros_like(g1)):
    u, state = tx.update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, u)
  assert np.all(np.asarray(params["w"]) == 0)


@pytest.mark.filterwarnings("ignore:rda. every penalized")
def test_lemma_1_sda_is_perturbed_sgd():
  """SDA (l1 = 0): w_{t+1} = (beta_{t-1}/beta_t) w_t - g_t / beta_t."""
  gamma = 1.5
  params = {"w": jnp.zeros((6, 3))}
  tx = rda_optax.rda(gamma, 0.0)
  state = tx.init(params)
  beta = lambda t: gamma * np.sqrt(t)
  for t in range(1, 30):
    g = _grads(t, params)
    u, state = tx.update(g, state, params)
    new = optax.apply_updates(params, u)
    if t >= 2:
      want = (beta(t - 1) / beta(t)) * params["w"] - g["w"] / beta(t)
      np.testing.assert_allclose(new["w"], want, rtol=1e-5, atol=1e-6)
      # ... i.e. an SGD step with alpha_t = 1/beta_t plus a perturbation that
      # vanishes as t grows.
      perturb = -(1 - np.sqrt((t - 1) / t)) * params["w"]
      np.testing.assert_allclose(
          new["w"], params["w"] - g["w"] / beta(t) + perturb,
          rtol=1e-5, atol=1e-6)
    params = new


def test_l2_closed_form():
  gamma, lam, l2 = 1.0, 0.2, 0.5
  params = {"w": jnp.ones((5, 5))}
  tx = rda_optax.rda(gamma, lam, l2=l2)
  params_out, state, gs = _run(tx, params, 4)
  t = 4
  gbar = sum(g["w"] for g in gs) / t
  b = gamma / np.sqrt(t)
  want = -rda_optax.soft_threshold(gbar, lam) / (b + l2)
  np.testing.assert_allclose(params_out["w"], want, rtol=1e-5, atol=1e-6)


def test_l1_mask_pytree_and_callable():
  params = _params()
  all_on = {"kernel": True, "bias": True}
  a, _, _ = _run(rda_optax.rda(1.0, 5.0, l1_mask=all_on), params, 2)
  b, _, _ = _run(rda_optax.rda(1.0, 5.0, l1_mask=lambda p: all_on), params, 2)
  # l1 = 5 is far above any |gbar| here: every penalized entry is zero.
  assert np.all(np.asarray(a["bias"]) == 0)
  np.testing.assert_array_equal(a["bias"], b["bias"])
  c, _, _ = _run(rda_optax.rda(1.0, 5.0), params, 2)
  assert np.all(np.asarray(c["kernel"]) == 0)
  assert np.all(np.asarray(c["bias"]) != 0)  # default mask leaves 1-D free


@pytest.mark.parametrize("center", ["zero", "init"])
def test_state_keeps_w1_only_where_read(center):
  params = _params()
  tx = rda_optax.rda(1.0, 0.1, center=center)
  state = tx.init(params)
  assert isinstance(state, rda_optax.RDAState)
  # The bias (unpenalized) always reads w_1; the kernel only with "init".
  np.testing.assert_array_equal(state.init_params["bias"], params["bias"])
  if center == "zero":
    assert isinstance(state.init_params["kernel"], optax.MaskedNode)
  else:
    np.testing.assert_array_equal(state.init_params["kernel"],
                                  params["kernel"])
  _, state2, _ = _run(tx, params, 3)
  assert jax.tree.structure(state2) == jax.tree.structure(state)
  np.testing.assert_array_equal(state2.init_params["bias"], params["bias"])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params(dtype):
  params = jax.tree.map(lambda p: p.astype(dtype), _params())
  tx = rda_optax.rda(1.0, 0.5)
  state = tx.init(params)
  assert state.gbar["kernel"].dtype == jnp.float32
  assert state.init_params["bias"].dtype == dtype  # w_1 is exact in it
  g = jax.tree.map(lambda p: jnp.ones_like(p), params)
  # params equal to the closed form's -0.5 would make the update trivially 0
  params = {"kernel": jnp.full((4, 5), -1.0, dtype), "bias": params["bias"]}
  u, state2 = jax.jit(tx.update)(g, state, params)
  assert u["kernel"].dtype == dtype and u["bias"].dtype == dtype
  assert (jax.tree.map(lambda x: x.dtype, state2)
          == jax.tree.map(lambda x: x.dtype, state))
  new = optax.apply_updates(params, u)
  assert new["kernel"].dtype == dtype
  np.testing.assert_array_equal(np.asarray(new["kernel"], np.float32), -0.5)
  # Random params and gradients: apply_updates adds in the params' dtype,
  # w + fl(w' - w), which is w' (the rounded closed form) up to two
  # roundings, |err| <= (eps/2)|w' - w| + (eps/2)|w + u| < 2 eps max(|w|,
  # |w'|). It is exact when w' = 0 (w + (-w)) and, by Sterbenz's lemma, when
  # w'/2 <= w <= 2 w' (then w' - w is representable).
  k1, k2 = jax.random.split(jax.random.key(5))
  params = {"kernel": jax.random.normal(k1, (8, 16)).astype(dtype)}
  g = {"kernel": 2 * jax.random.normal(k2, (8, 16))}
  u, _ = tx.update(g, tx.init(params), params)
  new = np.asarray(optax.apply_updates(params, u)["kernel"], np.float64)
  w = np.asarray(params["kernel"], np.float64)
  want = -np.asarray(rda_optax.soft_threshold(g["kernel"], 0.5))
  want = np.asarray(jnp.asarray(want).astype(dtype), np.float64)
  assert (want == 0).any() and (want != 0).any()
  np.testing.assert_array_equal(new[want == 0], 0.0)
  sterbenz = (w * want > 0) & (np.abs(want) / 2 <= np.abs(w)) & (
      np.abs(w) <= 2 * np.abs(want))
  assert sterbenz.any() and not sterbenz.all()
  np.testing.assert_array_equal(new[sterbenz], want[sterbenz])
  eps = float(jnp.finfo(dtype).eps)
  assert np.all(np.abs(new - want) <= 2 * eps * np.maximum(np.abs(w),
                                                           np.abs(want)))
  tx16 = rda_optax.rda(1.0, 0.5, state_dtype=jnp.bfloat16)
  s16 = tx16.init(params)
  assert s16.gbar["kernel"].dtype == jnp.bfloat16
  _, s16b = tx16.update(g, s16, params)
  assert s16b.gbar["kernel"].dtype == jnp.bfloat16


@pytest.mark.filterwarnings("ignore:rda. every penalized")
def test_schedules_rebuild_from_average():
  """A step change of gamma rescales the whole displacement at once."""
  params = {"w": jnp.zeros((2, 2))}
  gamma = optax.piecewise_constant_schedule(1.0, {3: 4.0})  # 1 -> 4 at step 3
  tx = rda_optax.rda(gamma, 0.0)
  state = tx.init(params)
  g = {"w": jnp.ones((2, 2))}
  ws = []
  for _ in range(5):
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
    ws.append(float(params["w"][0, 0]))
  # gbar = 1 throughout; w_{t+1} = -sqrt(t)/gamma(t-1).
  want = [-np.sqrt(1), -np.sqrt(2), -np.sqrt(3), -np.sqrt(4) / 4,
          -np.sqrt(5) / 4]
  np.testing.assert_allclose(ws, want, rtol=1e-6)


def test_inject_hyperparams_changes_l1_without_recompiling():
  params = {"w": jnp.full((3, 3), 0.1, jnp.float32)}
  tx = optax.inject_hyperparams(rda_optax.rda)(gamma=1.0, l1=0.0)
  state = tx.init(params)
  g = {"w": jnp.full((3, 3), 0.3)}

  @jax.jit
  def step(params, state):
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state

  p1, s1 = step(params, state)
  assert np.all(np.asarray(p1["w"]) != 0)
  s1.hyperparams["l1"] = jnp.asarray(0.5, jnp.float32)
  p2, _ = step(p1, s1)
  assert np.all(np.asarray(p2["w"]) == 0)  # |gbar| = 0.3 <= 0.5
  assert step._cache_size() == 1


def test_jit_matches_eager():
  params = _params()
  tx = rda_optax.rda(1.0, 0.2)
  state = tx.init(params)
  g = _grads(3, params)
  u1, s1 = tx.update(g, state, params)
  u2, s2 = jax.jit(tx.update)(g, state, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-7), (u1, s1),
               (u2, s2))


def test_vmap_over_independent_problems():
  params = {"w": jnp.stack([jnp.ones((3, 3)), 2 * jnp.ones((3, 3))])}
  grads = {"w": jnp.stack([jnp.full((3, 3), 0.1), jnp.full((3, 3), 0.9)])}
  tx = rda_optax.rda(1.0, 0.5)
  state = jax.vmap(tx.init)(params)
  u, state = jax.vmap(tx.update)(grads, state, params)
  new = optax.apply_updates(params, u)
  np.testing.assert_array_equal(new["w"][0], 0.0)
  np.testing.assert_allclose(new["w"][1], -0.4, rtol=1e-6)


def test_chain_and_masked_compose():
  params = {"a": jnp.ones((2, 2)), "b": jnp.ones((2, 2))}
  tx = optax.chain(
      optax.masked(rda_optax.rda(1.0, 10.0), {"a": True, "b": False}),
      optax.masked(optax.sgd(0.1), {"a": False, "b": True}))
  state = tx.init(params)
  g = {"a": jnp.ones((2, 2)), "b": jnp.ones((2, 2))}
  u, _ = tx.update(g, state, params)
  new = optax.apply_updates(params, u)
  np.testing.assert_array_equal(new["a"], 0.0)
  np.testing.assert_allclose(new["b"], 0.9)


@pytest.mark.parametrize("center", ["zero", "init"])
def test_nan_gradient_never_zeroes_weights(center):
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  tx = rda_optax.rda(1.0, 0.0, center=center)
  state = tx.init(params)
  nan = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
  u, state = tx.update(nan, state, params)
  new = optax.apply_updates(params, u)
  for k in params:
    assert np.all(np.isnan(np.asarray(new[k]))), k
  assert float(rda_optax.sparsity(new)) == 0.0
  # The average keeps the NaN, so later finite steps stay non-finite.
  g = jax.tree.map(jnp.ones_like, params)
  u, state = tx.update(g, state, new)
  assert np.all(np.isnan(np.asarray(optax.apply_updates(new, u)["w"])))


def test_nonfinite_gradient_skipped_when_wrapped():
  params = {"w": jnp.ones((2, 2))}
  bad = {"w": jnp.array([[jnp.nan, 1.0], [1.0, 1.0]])}
  safe = optax.apply_if_finite(rda_optax.rda(1.0, 0.1), 3)
  s0 = safe.init(params)
  u, s1 = safe.update(bad, s0, params)
  np.testing.assert_array_equal(u["w"], 0.0)
  np.testing.assert_array_equal(s1.inner_state.gbar["w"],
                                s0.inner_state.gbar["w"])
  assert int(s1.notfinite_count) == 1


def test_warns_on_all_zero_penalized_params():
  with pytest.warns(RuntimeWarning, match="^rda: every penalized leaf of "
                    "the initial params is zero.*Proposition 1"):
    rda_optax.rda(1.0, 0.1).init({"w": jnp.zeros((3, 3)), "b": jnp.ones(3)})
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rda_optax.rda(1.0, 0.1).init({"w": jnp.ones((3, 3))})


@pytest.mark.parametrize("kwargs,match", [
    (dict(gamma=0.0, l1=0.1), "gamma"),
    (dict(gamma=-1.0, l1=0.1), "gamma"),
    (dict(gamma=1.0, l1=-0.1), "l1"),
    (dict(gamma=float("nan"), l1=0.1), "gamma"),
    (dict(gamma=1.0, l1=0.1, center="middle"), "center"),
    (dict(gamma=1.0, l1=0.1, l2=-1.0), "l2"),
])
def test_bad_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rda_optax.rda(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(gamma=jnp.float32(0.0), l1=0.1), "gamma"),
    (dict(gamma=jnp.array([1.0, -1.0]), l1=0.1), "gamma"),
    (dict(gamma=1.0, l1=jnp.float32(-0.1)), "l1"),
    (dict(gamma=1.0, l1=0.1, l2=jnp.float32(-1.0)), "l2"),
    (dict(gamma=1.0, l1=0.1, state_dtype=jnp.int32),
     "^rda: state_dtype must be a floating-point dtype, got int32"),
])
def test_bad_array_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rda_optax.rda(**kwargs)


@pytest.mark.parametrize("name,value", [("gamma", -1.0), ("gamma", 0.0),
                                        ("l1", -0.1), ("l2", -1.0)])
def test_traced_bad_hyperparameter_gives_nan(name, value):
  """Injected under jit the value cannot be checked: the iterate is NaN
  (caught by apply_if_finite) instead of silently wrong."""
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  hp = dict(gamma=1.0, l1=0.1, l2=0.0)
  tx = optax.inject_hyperparams(rda_optax.rda)(**hp)
  state = tx.init(params)
  state.hyperparams[name] = jnp.asarray(value, jnp.float32)
  g = jax.tree.map(jnp.ones_like, params)
  u, _ = jax.jit(tx.update)(g, state, params)
  assert np.all(np.isnan(np.asarray(u["w"])))
  state.hyperparams[name] = jnp.asarray(hp[name], jnp.float32)
  u, _ = jax.jit(tx.update)(g, state, params)
  assert np.all(np.isfinite(np.asarray(u["w"])))


def test_integer_params_refused():
  tx = rda_optax.rda(1.0, 0.1)
  with pytest.raises(ValueError, match=r"^rda: params leaf \['w'\].*int32"):
    tx.init({"w": jnp.ones((2, 2), jnp.int32), "b": jnp.ones(2)})
  params = {"w": jnp.ones((2, 2))}
  state = tx.init(params)
  with pytest.raises(ValueError, match=r"^rda: params leaf \['w'\].*floating"):
    tx.update(params, state, {"w": jnp.ones((2, 2), jnp.int32)})


def test_mask_tree_mismatch():
  tx = rda_optax.rda(1.0, 0.1, l1_mask={"w": True})
  with pytest.raises(ValueError, match="l1_mask"):
    tx.init({"w": jnp.ones((2, 2)), "b": jnp.ones(2)})


def test_update_needs_params():
  tx = rda_optax.rda(1.0, 0.1)
  params = {"w": jnp.ones((2, 2))}
  with pytest.raises(ValueError):
    tx.update(params, tx.init(params))
