"""Behaviour of rda's state and of the ASR switch, through the public API.

These replace two tests that claimed more than they checked:
``test_rda.py::test_state_holds_average_and_initial_params`` (it checked
only that ``init_params`` is a copy of ``w_1``) and
``test_asr.py::test_switch_on_at_step_n_keeps_optimizer_state`` (it passed
with ``freeze_zeros`` a no-op). They check what the state is for (the
average of the gradients, the iterate rebuilt from it and from ``w_1``),
not how it is stored, so they hold whatever fields ``RDAState`` keeps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rda_optax

_GAMMA, _L1 = 1.5, 0.4


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"kernel": jax.random.normal(k1, (6, 5)),
          "bias": jax.random.normal(k2, (5,))}


def _grads(steps, drift_from=None, scale=0.3):
  """float32 gradients of the params' shapes; from step ``drift_from`` on, a
  large constant of random sign per entry, so that averages grow past the
  threshold and zeros would come back to life if nothing froze them."""
  rng = np.random.default_rng(1)
  drift = {k: 3.0 * np.sign(rng.normal(size=s)) for k, s in
           (("kernel", (6, 5)), ("bias", (5,)))}
  out = []
  for t in range(steps):
    g = {k: scale * rng.normal(size=d.shape) for k, d in drift.items()}
    if drift_from is not None and t >= drift_from:
      g = {k: g[k] + drift[k] for k in g}
    out.append({k: jnp.asarray(v, jnp.float32) for k, v in g.items()})
  return out


def _soft(z, lam):
  return np.sign(z) * np.maximum(np.abs(z) - lam, 0.0)


@pytest.mark.parametrize("center", ["zero", "init"])
def test_rda_state_averages_the_gradients_and_rebuilds_the_iterate(center):
  """After T steps, gbar is the mean of the T gradients fed, and the params
  are the closed form (13) of that mean: kernels S(b c - gbar) / b with
  b = gamma / sqrt(T) and c = 0 or w_1; biases w_1 - gbar / b (w_1 is kept
  whatever the state looks like). Supersedes
  test_rda.py::test_state_holds_average_and_initial_params."""
  params0 = _params()
  tx = rda_optax.rda(_GAMMA, _L1, center=center)
  state = tx.init(params0)
  params = params0
  gs = _grads(7, scale=1.0)
  update = jax.jit(tx.update)
  for g in gs:
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
  t = len(gs)
  mean = {k: np.mean([np.asarray(g[k], np.float64) for g in gs], axis=0)
          for k in params0}
  # The running mean gbar += (g - gbar)/t rounds once per step and entry:
  # |error| <= ~2 t u max|g| (u = 6e-8): 4e-6 for these |g| <= 5.
  for k in params0:
    np.testing.assert_allclose(state.gbar[k], mean[k], rtol=0, atol=1e-5)
  b = _GAMMA / np.sqrt(t)
  w1 = {k: np.asarray(v, np.float64) for k, v in params0.items()}
  c = w1["kernel"] if center == "init" else 0.0
  want_kernel = _soft(b * c - mean["kernel"], _L1) / b
  want_bias = w1["bias"] - mean["bias"] / b
  # Kernel entries whose |b c - gbar| is within rounding of the threshold
  # could land on either side: none are that close here (margin asserted).
  assert np.min(np.abs(np.abs(b * c - mean["kernel"]) - _L1)) > 1e-3
  np.testing.assert_allclose(params["kernel"], want_kernel, rtol=0, atol=1e-5)
  np.testing.assert_allclose(params["bias"], want_bias, rtol=0, atol=1e-5)
  assert np.array_equal(np.asarray(params["kernel"]) == 0, want_kernel == 0)
  assert (want_kernel == 0).any() and (want_kernel != 0).any()


@pytest.mark.parametrize("method", ["rda", "prox-sgd"])
def test_freeze_zeros_switch_keeps_zeros_and_the_optimizer_state(method):
  """freeze_zeros(N) chained after the optimizer: identical to the plain
  optimizer before step N; from N on, every kernel entry that is zero when
  a step starts stays exactly zero, although the plain optimizer brings
  such entries back (the gradients drift past the threshold); the wrapped
  optimizer's state (RDA's average, prox-SGD's momentum) is the plain one,
  not reset at the switch; the entries not frozen follow the plain
  optimizer (RDA: exactly, its iterate is rebuilt from the shared average).
  Supersedes test_asr.py::test_switch_on_at_step_n_keeps_optimizer_state."""
  n = 4
  if method == "rda":
    make = lambda: rda_optax.rda(_GAMMA, _L1)
  else:
    make = lambda: rda_optax.prox_sgd(0.5, _L1, momentum=0.9)
  plain = make()
  chained = optax.chain(make(), rda_optax.freeze_zeros(n))
  p_a = p_b = _params()
  s_a, s_b = plain.init(p_a), chained.init(p_b)
  up_a, up_b = jax.jit(plain.update), jax.jit(chained.update)
  revived = 0
  frozen_seen = 0
  for i, g in enumerate(_grads(10, drift_from=n)):
    zero_before = np.asarray(p_b["kernel"]) == 0
    u_a, s_a = up_a(g, s_a, p_a)
    u_b, s_b = up_b(g, s_b, p_b)
    p_a = optax.apply_updates(p_a, u_a)
    p_b = optax.apply_updates(p_b, u_b)
    # The optimizer's own state never depends on the freezing (both feed it
    # the same gradients): bit for bit the plain one, before and after N.
    jax.tree.map(np.testing.assert_array_equal, s_a, s_b[0])
    if i < n:
      jax.tree.map(np.testing.assert_array_equal, p_a, p_b)
      continue
    kb, ka = np.asarray(p_b["kernel"]), np.asarray(p_a["kernel"])
    assert np.all(kb[zero_before] == 0), i
    frozen_seen += int(zero_before.sum())
    revived += int(np.sum(zero_before & (ka != 0)))
    # Biases are never frozen (default mask: kernels).
    if method == "rda":
      np.testing.assert_array_equal(kb[~zero_before], ka[~zero_before])
      np.testing.assert_array_equal(p_b["bias"], p_a["bias"])
  assert frozen_seen > 0 and revived > 0, (frozen_seen, revived)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_soft_threshold_keeps_the_dtype_of_x_and_names_tau(dtype):
  """A float32 (or float64) threshold does not promote a low-precision x;
  a negative one is refused with a message naming soft_threshold's tau."""
  x = jnp.asarray([-1.5, 0.25, 2.0], dtype)
  for tau in (0.5, np.float32(0.5), np.float64(0.5),
              jnp.asarray(0.5, jnp.float32)):
    out = rda_optax.soft_threshold(x, tau)
    assert out.dtype == dtype, (tau, out.dtype)
    np.testing.assert_array_equal(np.asarray(out, np.float32), [-1.0, 0.0, 1.5])
  with pytest.raises(ValueError, match="^soft_threshold: tau must be >= 0"):
    rda_optax.soft_threshold(x, -0.5)
