"""optax's generic checks, run over every transformation of rda_optax.

The same checks optax's own suite runs over its optimizers (ideas from
``optax/_src/alias_test.py``, ``optax/contrib/_common_test.py``,
``optax/_src/sharding_test.py``, ``optax/transforms/*_test.py``,
``optax/schedules/_inject_test.py`` and
``optax/tree_utils/_state_utils_test.py``), parametrized over several
``rda`` settings, ``prox_sgd`` with and without momentum, ``rmda``,
``grda``, ``prox_adam``, ``freeze_zeros`` and ``chain(rda,
freeze_zeros)``, with ``optax.sgd`` and ``optax.adam``
beside them as controls: a check that a control fails would be unsound.

Where a check does not apply to a transformation the reason is
mathematical and written next to it.
"""

from __future__ import annotations

import doctest
import functools
import importlib
import inspect
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rda_optax

ROOT = Path(__file__).resolve().parents[1]
STEPS = 200
L1 = 0.1


def _rda_asr(gamma, l1, start_step, l1_mask=None):
  return optax.chain(rda_optax.rda(gamma, l1, l1_mask=l1_mask),
                     rda_optax.freeze_zeros(start_step, mask=l1_mask))


class Case(NamedTuple):
  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict
  kind: str  # "rda", "prox", "filter" or "control"
  mask_arg: str | None = None  # the factory's own mask argument
  # For methods that are neither descent methods nor a closed form of the
  # gradient average: one step of the published recursion in float64,
  # (kwargs, state before the step, w, g, penalized) -> w after it.
  reference: Callable | None = None

  def make(self, **override):
    return self.factory(**{**self.kwargs, **override})


def _soft(x, tau):
  return np.sign(x) * np.maximum(np.abs(x) - tau, 0.0)


def _f64(x):
  return np.asarray(x, np.float64)


def _rmda_step(kw, state, w, g, pen):
  """Huang & Lee (2022), the authors' code: V += s_k g, W~ =
  S_{alpha_k lambda}(W_0 - V/beta_k), W = (1 - c) W + c W~."""
  k = int(state.count)
  beta = np.sqrt(k + 1.0)
  s = kw["learning_rate"] * beta
  alpha = (float(state.step_sum) + s) / beta
  def leaf(v, w0, ww, gg, m):
    z = _f64(w0) - (_f64(v) + s * _f64(gg)) / beta
    tilde = _soft(z, alpha * kw["l1"]) if m else z
    return (1 - kw["momentum"]) * _f64(ww) + kw["momentum"] * tilde
  return jax.tree.map(leaf, state.grad_sum, state.init_params, w, g, pen)


def _grda_step(kw, state, w, g, pen):
  """Chao et al. (2020): A_n = A_{n-1} - alpha g_n, w_n = S_{tau_n}(A_n),
  tau_n = c alpha^(1/2 + mu) n^mu (constant alpha)."""
  n = int(state.count) + 1
  lr, mu = kw["learning_rate"], kw["mu"]
  tau = kw["l1"] * lr ** (0.5 + mu) * n ** mu
  accs = jax.tree.leaves(state.accumulator)[::-1]
  def leaf(ww, gg, m):
    if not m:
      return _f64(ww) - lr * _f64(gg)
    return _soft(_f64(accs.pop()) - lr * _f64(gg), tau)
  return jax.tree.map(leaf, w, g, pen)


def _prox_adam_step(kw, state, w, g, pen):
  """ProxGen with Adam's metric: the Adam half-step, then S_{alpha lambda
  / d} with d = sqrt(v_hat) + eps."""
  t = int(state.count) + 1
  lr, b1, b2 = kw["learning_rate"], 0.9, 0.999
  def leaf(m, v, ww, gg, pn):
    gg = _f64(gg)
    m = b1 * _f64(m) + (1 - b1) * gg
    v = b2 * _f64(v) + (1 - b2) * gg * gg
    d = np.sqrt(v / (1 - b2 ** t)) + 1e-8
    half = _f64(ww) - lr * (m / (1 - b1 ** t)) / d
    return _soft(half, lr * kw["l1"] / d) if pn else half
  return jax.tree.map(leaf, state.mu, state.nu, w, g, pen)


CASES = {
    "rda": Case(rda_optax.rda, dict(gamma=1.0, l1=L1), "rda", "l1_mask"),
    "rda-center-init": Case(rda_optax.rda,
                            dict(gamma=1.0, l1=L1, center="init"), "rda",
                            "l1_mask"),
    "rda-l2": Case(rda_optax.rda, dict(gamma=1.0, l1=L1, l2=0.5), "rda",
                   "l1_mask"),
    "rda-schedules": Case(rda_optax.rda, dict(
        gamma=optax.linear_schedule(0.5, 1.0, 40),
        l1=optax.piecewise_constant_schedule(0.5 * L1, {20: 2.0})), "rda",
                          "l1_mask"),
    "prox-sgd": Case(rda_optax.prox_sgd, dict(learning_rate=0.5, l1=L1),
                     "prox", "l1_mask"),
    "prox-sgd-momentum": Case(rda_optax.prox_sgd,
                              dict(learning_rate=0.1, l1=L1, momentum=0.9),
                              "prox", "l1_mask"),
    "rmda": Case(rda_optax.rmda, dict(learning_rate=1.0, l1=L1,
                                      momentum=0.9), "prox", "l1_mask",
                 _rmda_step),
    # mu = 1: tau_n / (alpha n) = c sqrt(alpha), a fixed l1 strength, so
    # the iterates have a composite minimizer to converge to.
    "grda": Case(rda_optax.grda, dict(learning_rate=0.5, l1=L1, mu=1.0),
                 "prox", "l1_mask", _grda_step),
    "prox-adam": Case(rda_optax.prox_adam, dict(learning_rate=0.1, l1=L1),
                      "prox", "l1_mask", _prox_adam_step),
    "freeze-zeros": Case(rda_optax.freeze_zeros, dict(start_step=1),
                         "filter", "mask"),
    "rda+freeze-zeros": Case(_rda_asr, dict(gamma=1.0, l1=L1, start_step=3),
                             "rda", "l1_mask"),
    # Controls.
    "sgd": Case(optax.sgd, dict(learning_rate=0.5), "control"),
    "adam": Case(optax.adam, dict(learning_rate=0.1), "control"),
}
NAMES = list(CASES)
OURS = [n for n in NAMES if CASES[n].kind != "control"]


def _params(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  dense = rng.normal(size=(3, 4))
  dense[0, 0] = 0.0  # an exact zero, for freeze_zeros to keep
  return {"conv": {"kernel": jnp.asarray(rng.normal(size=(2, 2, 1, 4)),
                                         dtype)},
          "dense": {"kernel": jnp.asarray(dense, dtype),
                    "bias": jnp.asarray(rng.normal(size=4), dtype)}}


def _grads(seed, params):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      jax.random.normal(k, p.shape).astype(p.dtype)
      for k, p in zip(keys, leaves)])


def _kernels(params):
  return rda_optax.default_l1_mask(params)


def _close(a, b, rtol=1e-6, atol=1e-6):
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=rtol,
                                 atol=atol), a, b)


def _equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _as_tested(name):
  """The transformation under test; a filter runs after SGD (it only masks
  an optimizer's updates, so alone it has no minimizer)."""
  case = CASES[name]
  if case.kind == "filter":
    return optax.chain(optax.sgd(0.5), case.make())
  return case.make()


# ---------------------------------------------------------------------------
# Small quadratic: f(w) = 1/2 ||w - c||^2, deterministic gradients w - c.

def _target():
  c = jax.tree.map(lambda p: jnp.zeros_like(p), _params())
  rng = np.random.default_rng(1)
  # |c| is either well below l1 (0.02) or well above it (>= 0.3), so the
  # support at step STEPS does not depend on the last digit of the rate.
  def draw(p):
    mag = rng.choice([0.02, 0.3, 0.6, 1.2], size=p.shape)
    return jnp.asarray(mag * rng.choice([-1.0, 1.0], size=p.shape),
                       jnp.float32)
  return jax.tree.map(draw, c)


@functools.lru_cache(maxsize=None)
def _trajectory(name):
  """Iterates w_1 .. w_STEPS on the quadratic, run once per case."""
  tx = _as_tested(name)
  p0, c = _params(), _target()

  def body(carry, _):
    p, s = carry
    u, s = tx.update(jax.tree.map(jnp.subtract, p, c), s, p)
    p = optax.apply_updates(p, u)
    return (p, s), p

  run = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=STEPS))
  _, traj = run(p0, tx.init(p0))
  return p0, c, jax.tree.map(np.asarray, traj)


def _minimizer(name, c, frozen):
  """argmin f(w) + penalty over the free entries; ``frozen`` ones are 0."""
  case = CASES[name]
  kw = case.kwargs
  lam = {"rda-schedules": 2.0 * 0.5 * L1}.get(name, kw.get("l1", 0.0))
  if name == "prox-sgd-momentum":
    # The heavy-ball buffer averages the gradient but not the l1
    # subgradient: at a fixed point v = g/(1 - mu), so
    # w = S_{alpha lam}(w - alpha g/(1 - mu)) solves the problem with
    # penalty (1 - mu) lam.
    lam = (1 - kw["momentum"]) * lam
  if name == "grda":
    lam = kw["l1"] * np.sqrt(kw["learning_rate"])  # mu = 1, see CASES
  l2 = kw.get("l2", 0.0)

  def leaf(cc, penalized, fz):
    w = np.asarray(cc, np.float64)
    if penalized and case.kind in ("rda", "prox"):
      w = np.sign(w) * np.maximum(np.abs(w) - lam, 0) / (1 + l2)
    return np.where(fz, 0.0, w)

  return jax.tree.map(leaf, c, _kernels(c), frozen)


def _frozen(name, p0, traj):
  """Entries exactly zero when freeze_zeros switched on."""
  kw = CASES[name].kwargs
  none = jax.tree.map(lambda p: np.zeros(p.shape, bool), p0)
  if "start_step" not in kw:
    return none
  n = kw["start_step"]
  at = p0 if n == 0 else jax.tree.map(lambda t: t[n - 1], traj)
  return jax.tree.map(lambda w, k: (np.asarray(w) == 0) & k, at,
                      _kernels(p0))


def _err(traj, want, t):
  return max(float(np.max(np.abs(w[t - 1] - v)))
             for w, v in zip(jax.tree.leaves(traj), jax.tree.leaves(want)))


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_quadratic(name):
  """Converges to the composite minimizer, with its exact support.

  Rate: dual averaging with beta_t = gamma sqrt(t) converges as
  O(1/sqrt t) (Xiao 2010), so the error at 4T is at most about half the
  error at T; (proximal) gradient methods converge linearly and are at
  float32 resolution by then.
  """
  p0, c, traj = _trajectory(name)
  want = _minimizer(name, c, _frozen(name, p0, traj))
  e1, e2 = _err(traj, want, STEPS // 4), _err(traj, want, STEPS)
  assert e2 <= max(e1 / 1.8, 1e-5), (e1, e2)
  if CASES[name].kind in ("rda", "prox"):
    for w, v in zip(jax.tree.leaves(traj), jax.tree.leaves(want)):
      np.testing.assert_array_equal(w[-1] == 0, v == 0)


def _composite(w, c, lam):
  f = sum(0.5 * np.sum((np.asarray(a, np.float64) - b) ** 2)
          for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(c)))
  k = _kernels(c)
  return f + lam * sum(np.sum(np.abs(np.asarray(a, np.float64)))
                       for a, m in zip(jax.tree.leaves(w), jax.tree.leaves(k))
                       if m)


def _rda_reference(name, p0, c, traj):
  """w_{t+1} from the closed form (13) on the float64 average of the
  gradients actually seen; frozen entries (after the switch) are 0."""
  kw = CASES[name].kwargs
  gamma = kw["gamma"] if callable(kw["gamma"]) else (lambda _: kw["gamma"])
  l1 = kw["l1"] if callable(kw["l1"]) else (lambda _: kw["l1"])
  center, l2 = kw.get("center", "zero"), kw.get("l2", 0.0)
  start = kw.get("start_step")
  pen = _kernels(p0)
  prev = jax.tree.map(lambda p: np.asarray(p, np.float64), p0)
  gsum = jax.tree.map(np.zeros_like, prev)
  refs = []
  for t in range(1, STEPS + 1):
    gsum = jax.tree.map(lambda s, w, cc: s + w - np.asarray(cc), gsum, prev, c)
    b = float(gamma(t - 1)) / np.sqrt(t)
    lam = float(l1(t - 1))

    def leaf(s, w0, m, w_now):
      gbar = s / t
      if not m:
        return np.asarray(w0, np.float64) - gbar / b
      z = -gbar if center == "zero" else b * np.asarray(w0, np.float64) - gbar
      w = np.sign(z) * np.maximum(np.abs(z) - lam, 0) / (b + l2)
      if start is not None and t - 1 >= start:
        w = np.where(np.asarray(w_now) == 0, 0.0, w)  # frozen zeros stay
      return w

    refs.append(jax.tree.map(leaf, gsum, p0, pen, prev))
    prev = jax.tree.map(lambda tr: np.asarray(tr[t - 1], np.float64), traj)
  return refs


@pytest.mark.parametrize("name", [n for n in NAMES if n != "adam"])
def test_each_step(name):
  """Each step does what the method promises.

  Descent methods (SGD with lr <= 1/L, prox-SGD without momentum: the
  proximal-gradient descent lemma; a filter after SGD steps on a
  coordinate subspace) decrease the composite objective at every step.
  RDA is not a descent method: its first iterate -g_1/gamma may overshoot,
  and its iterate is a function of the average of all gradients, so it is
  checked against that closed form, eq. (13), at every step. Heavy ball
  is not a descent method either (it overshoots); it is checked against
  its recursion v = mu v + g, w = S_{alpha lam}(w - alpha v). Adam (not
  here) is neither, and its recursion is optax's own test. RMDA, gRDA and
  proximal Adam are neither either: each step is checked against the
  published recursion in float64, from the transformation's own state
  before the step.
  """
  case = CASES[name]
  if case.reference is not None:
    tx = case.make()
    p0, c = _params(), _target()
    pen = _kernels(p0)
    step = jax.jit(_step(tx))
    w, state = p0, tx.init(p0)
    for _ in range(STEPS):
      g = jax.tree.map(jnp.subtract, w, c)
      ref = case.reference(case.kwargs, state, w, g, pen)
      w, state = step(w, state, g)
      _close(w, ref, rtol=0, atol=1e-5)
    return
  p0, c, traj = _trajectory(name)
  if case.kind == "rda":
    refs = _rda_reference(name, p0, c, traj)
    for t in range(1, STEPS + 1):
      got = jax.tree.map(lambda tr: tr[t - 1], traj)
      # float32 running mean: |error of gbar| <= t eps_32 max|g| (~2.4e-5
      # at t = 200, |g| <= 2), times sqrt(t)/gamma <= 20: 5e-4.
      _close(got, refs[t - 1], rtol=0, atol=5e-4)
  elif name == "prox-sgd-momentum":
    kw = case.kwargs
    w = jax.tree.map(lambda p: np.asarray(p, np.float64), p0)
    v = jax.tree.map(np.zeros_like, w)
    pen = _kernels(p0)
    for t in range(STEPS):
      v = jax.tree.map(lambda vv, ww, cc: kw["momentum"] * vv + ww - cc, v, w,
                       c)
      half = jax.tree.map(lambda ww, vv: ww - kw["learning_rate"] * vv, w, v)
      ref = jax.tree.map(
          lambda h, m: np.sign(h) * np.maximum(
              np.abs(h) - kw["learning_rate"] * kw["l1"], 0) if m else h,
          half, pen)
      got = jax.tree.map(lambda tr: tr[t], traj)
      _close(got, ref, rtol=0, atol=1e-5)
      w = jax.tree.map(lambda g: np.asarray(g, np.float64), got)
  else:
    lam = case.kwargs.get("l1", 0.0)
    objective = [_composite(p0, c, lam)] + [
        _composite(jax.tree.map(lambda tr: tr[t], traj), c, lam)
        for t in range(STEPS)]
    assert np.all(np.diff(objective) <= 1e-6), np.diff(objective).max()


# ---------------------------------------------------------------------------
# Wrappers and transformations of the update function.

def _step(tx):
  def step(params, state, grads):
    u, state = tx.update(grads, state, params)
    return optax.apply_updates(params, u), state
  return step


def _run_eager(tx, params, n, seed=1):
  state = tx.init(params)
  for i in range(n):
    params, state = _step(tx)(params, state, _grads(seed + i, params))
  return params, state


_double = jax.jit(lambda p: jax.tree.map(lambda x: 2 * x, p),
                  donate_argnums=0)


@pytest.mark.parametrize("name", NAMES)
def test_jit_without_retracing_and_with_donation(name):
  """A jitted step that donates params and state compiles once, and gives
  the eager steps' result; the state owns its buffers, so donating the
  params elsewhere leaves it intact."""
  tx = CASES[name].make()
  params = _params()
  state = tx.init(params)
  keep = jax.tree.map(np.array, state)
  _double(params)
  assert not any(x.is_deleted() for x in jax.tree.leaves(state)
                 if isinstance(x, jax.Array))
  _equal(state, keep)
  params = _params()
  want = _run_eager(tx, params, 3, seed=0)
  step = jax.jit(_step(tx), donate_argnums=(0, 1))
  state = tx.init(params)
  for i in range(3):
    params, state = step(params, state, _grads(i, params))
  # New values of the same types reuse the compiled step: no Python branch
  # or shape in the state depends on the step count or a value.
  assert step._cache_size() == 1
  # Same ops, possibly fused differently: a few float32 ulps.
  _close((params, state), want, rtol=1e-5, atol=1e-6)


def _numeric(kwargs):
  return {k: v for k, v in kwargs.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _other_value(v):
  return v + 1 if isinstance(v, int) else (0.5 * v if v else 0.25)


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_over_every_argument(name):
  case = CASES[name]
  injected = optax.inject_hyperparams(case.factory)(**case.kwargs)
  params = _params()
  state = injected.init(params)
  # Every numeric argument, defaults included, is injected...
  sig = inspect.signature(case.factory).bind(**case.kwargs)
  sig.apply_defaults()
  numeric = _numeric(sig.arguments)
  assert set(numeric) <= set(state.hyperparams)
  step = jax.jit(_step(injected))
  p1, state = step(params, state, _grads(1, params))
  # ... and each one can be changed without recompiling, with the same
  # effect as building the transformation with that value.
  for k, v in numeric.items():
    new = _other_value(v)
    s = state._replace(hyperparams={
        **state.hyperparams,
        k: jnp.full_like(state.hyperparams[k], new)})
    got, _ = step(p1, s, _grads(2, params))
    plain = case.make(**{k: new})
    want, _ = _step(plain)(p1, state.inner_state, _grads(2, params))
    _close(got, want, rtol=1e-5, atol=1e-6)
  assert step._cache_size() == 1


@pytest.mark.parametrize("name", NAMES)
def test_multisteps_accumulates(name):
  """MultiSteps(k=2) applies one step with the mean of two gradients."""
  tx = CASES[name].make()
  params = _params()
  multi = optax.MultiSteps(tx, every_k_schedule=2)
  ms = multi.init(params)
  g1, g2 = _grads(1, params), _grads(2, params)
  step = jax.jit(_step(multi))
  p1, ms = step(params, ms, g1)
  _equal(p1, params)  # nothing applied before the k-th mini-step
  p2, ms = step(p1, ms, g2)
  want, _ = _step(tx)(params, tx.init(params),
                      jax.tree.map(lambda a, b: (a + b) / 2, g1, g2))
  _close(p2, want, rtol=1e-5, atol=1e-6)
  assert step._cache_size() == 1


@pytest.mark.parametrize("name", NAMES)
def test_apply_if_finite(name):
  """Skips a non-finite step and leaves the state as it was; a finite step
  is the unwrapped one. (bf16/f16 params: the wrapper's two branches must
  have equal dtypes, checked by tracing in the eval_shape test below.)"""
  tx = CASES[name].make()
  safe = optax.apply_if_finite(tx, max_consecutive_errors=2)
  params = _params()
  state = safe.init(params)

  @jax.jit
  def both(g, state, params):
    return safe.update(g, state, params), tx.update(g, state.inner_state,
                                                    params)

  g = _grads(1, params)
  (u, s1), (want_u, want_s) = both(g, state, params)
  # The same ops, one of them inside a conditional: fusion may differ by an
  # ulp.
  _close((u, s1.inner_state), (want_u, want_s), rtol=1e-6, atol=1e-6)
  bad = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), g)
  (u, s2), _ = both(bad, s1, params)
  _equal(u, jax.tree.map(jnp.zeros_like, u))
  _equal(s2.inner_state, s1.inner_state)
  assert int(s2.notfinite_count) == 1
  assert both._cache_size() == 1


def _outer_mask():
  return {"conv": False, "dense": True}  # a prefix: conv is skipped whole


def _explicit(name, params):
  """The transformation with its own mask given as an explicit pytree."""
  case = CASES[name]
  if case.mask_arg is None:
    return case.make()
  return case.make(**{case.mask_arg: _kernels(params)})


@pytest.mark.parametrize("name", NAMES)
def test_masked_and_partition_with_explicit_masks(name):
  params = _params()
  g = _grads(1, params)
  sub = {"dense": params["dense"]}
  ref_tx = _explicit(name, sub)
  want, _ = _step(ref_tx)(sub, ref_tx.init(sub), {"dense": g["dense"]})
  # optax.masked: the inner transformation sees MaskedNode for conv.
  masked = optax.masked(_explicit(name, params), _outer_mask())
  u, _ = masked.update(g, masked.init(params), params)
  out = optax.apply_updates(params, u)
  _close(out["dense"], want["dense"])
  _equal(u["conv"], g["conv"])  # passed through untouched
  # optax.partition: conv goes to plain SGD.
  part = optax.partition(
      {"ours": _explicit(name, params), "sgd": optax.sgd(0.5)},
      {"conv": {"kernel": "sgd"},
       "dense": {"kernel": "ours", "bias": "ours"}})
  u, _ = part.update(g, part.init(params), params)
  out = optax.apply_updates(params, u)
  _close(out["dense"], want["dense"])
  _close(u["conv"], jax.tree.map(lambda x: -0.5 * x, g["conv"]))


@pytest.mark.parametrize("name", NAMES)
def test_tree_map_params(name):
  """Maps a params-shaped tree (here: each leaf's path) over every copy of
  the params in the state, explicit masks and optax.masked included."""
  params = _params()
  paths = jax.tree_util.tree_map_with_path(
      lambda path, _: jax.tree_util.keystr(path), params)
  keep_masked = lambda v, spec: v if isinstance(v, optax.MaskedNode) else spec
  is_masked = lambda v: isinstance(v, optax.MaskedNode)
  for tx in (_explicit(name, params),
             optax.masked(_explicit(name, params), _outer_mask())):
    state = tx.init(params)
    mapped = optax.tree_utils.tree_map_params(
        tx, keep_masked, state, paths, transform_non_params=lambda _: None,
        is_leaf=is_masked)
    flat, _ = jax.tree_util.tree_flatten_with_path(mapped)
    # Every array of the state that is a copy of a params leaf became that
    # leaf's path; nothing else is left.
    n_arrays = sum(1 for x in jax.tree.leaves(state) if np.ndim(x) > 0)
    assert len(flat) == n_arrays
    for path, spec in flat:
      assert isinstance(spec, str)
      assert jax.tree_util.keystr(path).endswith(spec), (path, spec)


def _sds(tree):
  return jax.tree.map(lambda x: (x.shape, jnp.dtype(x.dtype)), tree)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", NAMES)
def test_dtype_and_state_stability_under_eval_shape(name, dtype):
  tx = CASES[name].make()
  params = _params(dtype)
  s0 = jax.eval_shape(tx.init, params)
  u, s1 = jax.eval_shape(tx.update, _grads(1, params), s0, params)
  assert _sds(u) == _sds(params)  # updates carry the params' dtype
  assert jax.tree.structure(s1) == jax.tree.structure(s0)
  assert _sds(s1) == _sds(s0)
  # Wrappers that select between the update and a default (lax.cond) trace
  # only when the two agree in dtype and the state is stable.
  for wrapped in (optax.apply_if_finite(tx, 2),
                  optax.MultiSteps(tx, every_k_schedule=2)):
    w0 = jax.eval_shape(wrapped.init, params)
    u, w1 = jax.eval_shape(wrapped.update, _grads(1, params), w0, params)
    assert _sds(u) == _sds(params) and _sds(w1) == _sds(w0)


@pytest.mark.parametrize("name", NAMES)
def test_complex64_params(name):
  """optax's optimizers take complex params (the controls train them). Ours
  refuse them at init with the reason, naming the leaf: the complex l1 step
  exists (soft_threshold keeps the phase), the rest is not derived for
  complex weights (docs in rda's docstring); freeze_zeros only masks, so it
  takes them."""
  tx = CASES[name].make()
  params = jax.tree.map(lambda p: (p + 1j * p).astype(jnp.complex64),
                        _params())
  grads = jax.tree.map(lambda p: (p + 0.5j * p).astype(jnp.complex64),
                       _grads(1, _params()))
  if CASES[name].kind in ("control", "filter"):
    u, _ = tx.update(grads, tx.init(params), params)
    assert all(x.dtype == jnp.complex64 for x in jax.tree.leaves(u))
    return
  with pytest.raises(ValueError, match=r"complex params are not"):
    tx.init(params)


@pytest.mark.parametrize("name", NAMES)
def test_abstract_init(name):
  tx = CASES[name].make()
  params = _params()
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype),
                          params)
  state = tx.init(abstract)
  assert _sds(state) == _sds(jax.eval_shape(tx.init, params))


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_independent_problems(name):
  tx = CASES[name].make()
  p_a, p_b = _params(), jax.tree.map(lambda x: 2 * x, _params())
  g_a, g_b = _grads(1, p_a), _grads(2, p_a)
  stack = lambda a, b: jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b)
  batched, _ = jax.jit(lambda p, g: jax.vmap(_step(tx))(
      p, jax.vmap(tx.init)(p), g))(stack(p_a, p_b), stack(g_a, g_b))
  for i, (p, g) in enumerate([(p_a, g_a), (p_b, g_b)]):
    want, _ = _step(tx)(p, tx.init(p), g)
    _close(jax.tree.map(lambda x: x[i], batched), want, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_nan_gradient_is_never_hidden(name):
  """Non-finite in, non-finite out: an all-NaN gradient makes every weight
  NaN (a thresholded one included), except a zero that freeze_zeros keeps
  frozen, which by its contract does not move at all."""
  case = CASES[name]
  tx = case.make()
  params = _params()
  nan = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
  u, _ = tx.update(nan, tx.init(params), params)
  out = optax.apply_updates(params, u)
  active = case.kwargs.get("start_step", 1) == 0
  frozen = jax.tree.map(lambda p, k: (np.asarray(p) == 0) & k & active,
                        params, _kernels(params))
  for w, fz in zip(jax.tree.leaves(out), jax.tree.leaves(frozen)):
    np.testing.assert_array_equal(np.isnan(np.asarray(w)), ~fz)


@pytest.mark.parametrize("name", NAMES)
def test_extra_args(name):
  tx = CASES[name].make()
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  params = _params()
  g = _grads(1, params)
  u, _ = tx.update(g, tx.init(params), params, value=jnp.float32(1.0),
                   key=jax.random.key(0))
  want, _ = tx.update(g, tx.init(params), params)
  _equal(u, want)


@pytest.mark.parametrize("name", NAMES)
def test_empty_and_none_leaves(name):
  tx = CASES[name].make()
  empty, _ = _run_eager(tx, {}, 2)
  assert empty == {}
  params = {"w": _params()["dense"]["kernel"], "nothing": None}
  state = tx.init(params)
  u, state = tx.update({"w": _grads(1, params)["w"], "nothing": None}, state,
                       params)
  out = optax.apply_updates(params, u)
  assert out["nothing"] is None and out["w"].shape == params["w"].shape


# ---------------------------------------------------------------------------
# 8 simulated devices, all cases in one subprocess (the device count is
# fixed when JAX starts).

_SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    import test_conformance as tc
    assert len(jax.devices()) == 8
    failures = []
    explicit = jax.make_mesh((4, 2), ("x", "y"),
                             axis_types=(AxisType.Explicit,) * 2)
    auto = jax.make_mesh((4, 2), ("x", "y"), axis_types=(AxisType.Auto,) * 2)
    specs = {"conv": {"kernel": P(None, None, None, "y")},
             "dense": {"kernel": P(None, "x"), "bias": P("x")}}

    def place(mesh, dtype):
      return jax.tree.map(
          lambda p, s: jax.device_put(p, NamedSharding(mesh, s)),
          tc._params(dtype), specs)

    def check(name, dtype):
      tx = tc.CASES[name].make()
      typeof = lambda t: jax.tree.map(jax.typeof, t)
      with jax.set_mesh(explicit):
        params = place(explicit, dtype)
        grads = jax.tree.map(lambda p: 0.1 * p, params)
        s0 = tx.init(params)
        assert typeof(jax.jit(tx.init)(params)) == typeof(s0), "jit init"
        u, s1 = jax.jit(tx.update)(grads, s0, params)
        assert typeof(s0) == typeof(s1), "init/update state types"
        assert typeof(u) == typeof(params), "update types"

        def body(carry, _):
          p, s = carry
          u, s = tx.update(jax.tree.map(lambda x: 0.1 * x, p), s, p)
          return (optax.apply_updates(p, u), s), None
        jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=2))(
            params, s0)
      params = place(auto, dtype)
      state = tx.init(params)
      # Every copy of the params in the state lies where its param does,
      # after init and after a compiled update.
      pair = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(
          x[0], jax.Array)
      _, s1 = jax.jit(tx.update)(jax.tree.map(lambda p: 0.1 * p, params),
                                 state, params)
      for st, what in ((state, "init"), (s1, "update")):
        mapped = optax.tree_utils.tree_map_params(
            tx, lambda v, s: v if isinstance(v, optax.MaskedNode) else (v, s),
            st, specs, transform_non_params=lambda _: None,
            is_leaf=lambda v: isinstance(v, optax.MaskedNode))
        for v, s in jax.tree.leaves(mapped, is_leaf=pair):
          assert v.sharding.is_equivalent_to(NamedSharding(auto, s), v.ndim), (
              what, v.sharding, s)
      abstract = jax.tree.map(
          lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding),
          params)
      e0 = jax.eval_shape(tx.init, abstract)
      _, e1 = jax.eval_shape(tx.update, abstract, e0, abstract)
      assert tc._sds(e0) == tc._sds(e1), "eval_shape state"

    for name in tc.NAMES:
      for dtype in (jnp.float32,):
        try:
          check(name, dtype)
        except Exception as e:  # collect all, report together
          failures.append(f"{name}/{jnp.dtype(dtype).name}: "
                          f"{type(e).__name__}: {str(e)[:300]}")
    print("\\n".join(failures) if failures else "ok")
""")


def test_sharding_on_8_simulated_devices():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PATH": "/usr/bin:/bin"}
  r = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True,
                     text=True, env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.strip() == "ok", r.stdout


# ---------------------------------------------------------------------------

def test_docstring_examples_run():
  """Every public docstring's ``Examples:`` section runs as written."""
  # Every module of the package, so a new one cannot be forgotten here.
  modules = [importlib.import_module(f"rda_optax.{m.name}")
             for m in pkgutil.iter_modules(rda_optax.__path__)]
  attempted = 0
  with_examples = set()
  for m in modules:
    finder = doctest.DocTestFinder(exclude_empty=True)
    for t in finder.find(m, globs={}):
      runner = doctest.DocTestRunner(
          optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
      report = []
      result = runner.run(t, out=report.append)
      assert result.failed == 0, "".join(report)
      attempted += result.attempted
      with_examples.add(t.name.split(".")[-1])
  public = {n for n in rda_optax.__all__ if callable(getattr(rda_optax, n))
            and not isinstance(getattr(rda_optax, n), type)}
  assert public <= with_examples, sorted(public - with_examples)
  assert attempted > 0
