"""rmda, grda and prox_adam against references, and the shared Prox.

Three kinds of check: (1) on two real l1-regularized problems, full-batch
runs reach scikit-learn's solution (objective and support); (2) a few steps
of each transformation against the update rule written out by hand in
float64 numpy; (3) gRDA against its published recurrence (the authors'
accumulation of threshold increments) for 50 steps.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import Lasso, LogisticRegression

import rda_optax

# ---------------------------------------------------------------------------
# Problems with a scikit-learn solution.


def _soft(x, tau):
  return np.sign(x) * np.maximum(np.abs(x) - tau, 0.0)


def _lasso():
  """sklearn's Lasso: (1/2n)||y - Xw - b||^2 + a||w||_1, intercept free."""
  X, y = load_diabetes(return_X_y=True)
  X = (X - X.mean(0)) / X.std(0)
  y = (y - y.mean()) / y.std()
  a = 0.1
  ref = Lasso(alpha=a, tol=1e-14, max_iter=1_000_000).fit(X, y)
  loss = lambda w, b, X, y: 0.5 * jnp.mean((y - X @ w - b) ** 2)
  return X, y, a, loss, ref.coef_, float(ref.intercept_), True


def _logistic():
  """l1 logistic regression, no intercept: mean log(1 + exp(-y x.w)) +
  lambda ||w||_1 with lambda = 1 / (C n) (liblinear's C sum + ||w||_1)."""
  X, y = load_breast_cancer(return_X_y=True)
  X = X[:, :10]
  X = (X - X.mean(0)) / X.std(0)
  y = 2.0 * y - 1.0
  C = 0.2
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # sklearn's l1_ratio/penalty notices
    ref = LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear",
                             fit_intercept=False, tol=1e-12,
                             max_iter=1_000_000).fit(X, y)
  loss = lambda w, b, X, y: jnp.mean(jnp.logaddexp(0.0, -y * (X @ w)))
  return X, y, 1.0 / (C * len(y)), loss, ref.coef_[0], 0.0, False


PROBLEMS = {"lasso": _lasso, "logistic": _logistic}

# Full-batch settings that reach the solution. rmda's weights are an
# average of prox points, so a weight is exactly 0 once (1 - c)^j times its
# last value drops below float64's smallest normal: ~1075 steps at c = 0.5
# after the prox point's support settles, hence c = 0.5 and the step counts.
RUNS = {
    ("lasso", "rmda"): (lambda lam: rda_optax.rmda(0.5, lam, 0.5), 4000),
    ("lasso", "prox_adam"): (lambda lam: rda_optax.prox_adam(0.01, lam),
                             1500),
    ("logistic", "rmda"): (lambda lam: rda_optax.rmda(4.0, lam, 0.5), 5000),
    ("logistic", "prox_adam"): (lambda lam: rda_optax.prox_adam(0.05, lam),
                                5000),
}


def _grad(loss, p, X, y, intercept):
  return loss(p["w"][:, 0], p["b"][0] if intercept else 0.0, X, y)


@pytest.mark.parametrize("problem,method", sorted(RUNS))
def test_reaches_the_sklearn_solution(problem, method):
  X, y, lam, loss, w_ref, b_ref, intercept = PROBLEMS[problem]()
  # The reference is optimal (KKT to 1e-9) and its support is well posed:
  # every zero has dual slack >= 10% of lambda and every nonzero is >= 0.01,
  # so the support cannot flip on a rounding.
  with jax.enable_x64(True):
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    g_ref = np.asarray(jax.grad(loss)(jnp.asarray(w_ref), b_ref, Xj, yj))
    zero = w_ref == 0
    assert np.all(np.abs(g_ref[zero]) <= 0.9 * lam)
    assert np.all(np.abs(w_ref[~zero]) >= 0.01) and zero.any()
    np.testing.assert_allclose(g_ref[~zero], -lam * np.sign(w_ref[~zero]),
                               atol=1e-9)

    make, steps = RUNS[problem, method]
    tx = make(lam)
    rng = np.random.default_rng(0)
    p = {"w": jnp.asarray(0.1 * rng.normal(size=(X.shape[1], 1)))}
    if intercept:
      p["b"] = jnp.zeros(1)
    f = lambda p: _grad(loss, p, Xj, yj, intercept)

    def body(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(f)(p), s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.jit(lambda p, s: jax.lax.scan(
        body, (p, s), None, length=steps))(p, tx.init(p))
    w = np.asarray(p["w"][:, 0])
    b = float(p["b"][0]) if intercept else 0.0
    objective = lambda w, b: float(loss(jnp.asarray(w), b, Xj, yj)) + (
        lam * np.sum(np.abs(w)))
    f_ref = objective(w_ref, b_ref)
    gap = (objective(w, b) - f_ref) / f_ref
  assert gap <= 1e-4, gap
  np.testing.assert_array_equal(w == 0, zero)


# ---------------------------------------------------------------------------
# A few steps by hand, float64.


def _tree(rng):
  return {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)}


def _run64(tx, params, grads):
  """The iterates of ``tx`` in float64 over the list of gradient trees."""
  out = []
  with jax.enable_x64(True):
    p = jax.tree.map(jnp.asarray, params)
    s = tx.init(p)
    for g in grads:
      u, s = tx.update(jax.tree.map(jnp.asarray, g), s, p)
      p = optax.apply_updates(p, u)
      out.append(jax.tree.map(np.asarray, p))
  return out, s


def test_rmda_steps_by_hand():
  rng = np.random.default_rng(1)
  w0 = _tree(rng)
  grads = [_tree(rng) for _ in range(3)]
  lr, lam, c = 0.3, 0.4, 0.25
  got, state = _run64(rda_optax.rmda(lr, lam, momentum=c), w0, grads)
  w = {k: v.copy() for k, v in w0.items()}
  v_sum = {k: np.zeros_like(x) for k, x in w0.items()}
  s_sum = 0.0
  for k, g in enumerate(grads):
    beta = np.sqrt(k + 1.0)
    s = lr * beta
    s_sum += s
    alpha = s_sum / beta
    for key in w:
      v_sum[key] = v_sum[key] + s * g[key]
      z = w0[key] - v_sum[key] / beta
      tilde = _soft(z, alpha * lam) if key == "kernel" else z
      w[key] = (1 - c) * w[key] + c * tilde
    for key in w:
      # The step scalars (beta_k, s_k, alpha_k) are float32, as in rda.
      np.testing.assert_allclose(got[k][key], w[key], rtol=1e-6, atol=1e-7)
  # The state is two params' worth: the weighted sum and w_0.
  np.testing.assert_allclose(np.asarray(state.grad_sum["kernel"]),
                             v_sum["kernel"], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(state.init_params["bias"]),
                                w0["bias"])


def test_grda_steps_by_hand():
  rng = np.random.default_rng(2)
  w0 = _tree(rng)
  grads = [_tree(rng) for _ in range(3)]
  lr, c, mu = 0.2, 0.5, 0.6
  got, _ = _run64(rda_optax.grda(lr, c, mu), w0, grads)
  acc = dict(w0)
  w = dict(w0)
  for n, g in enumerate(grads, start=1):
    acc = {k: acc[k] - lr * g[k] for k in acc}
    tau = c * lr ** (0.5 + mu) * n ** mu
    w = {"kernel": _soft(acc["kernel"], tau), "bias": w["bias"] - lr *
         g["bias"]}
    for key in w:
      # tau_n is accumulated in float32: ~1e-7 relative.
      np.testing.assert_allclose(got[n - 1][key], w[key], rtol=0,
                                 atol=1e-6)


def test_grda_follows_the_published_recurrence_for_50_steps():
  """The authors' loop: A += -lr g; l1_acc += c lr^(mu + 1/2) (n^mu -
  (n-1)^mu) at the current lr; w = sign(A) max(|A| - l1_acc, 0). With a
  step-decayed lr, so the accumulation (not the closed form) is tested."""
  rng = np.random.default_rng(3)
  w0 = {"kernel": rng.normal(size=(6, 5))}
  # A quadratic pull towards 0 or 1.5, so some weights cross the threshold.
  centre = rng.choice([0.0, 1.5], size=(6, 5))
  c, mu = 0.3, 0.7
  lr_at = lambda n: 0.1 if n < 20 else 0.05  # n: the 0-based step
  tx = rda_optax.grda(lambda n: jnp.where(n < 20, 0.1, 0.05), c, mu)
  acc, l1_acc = w0["kernel"].copy(), 0.0
  with jax.enable_x64(True):
    p = jax.tree.map(jnp.asarray, w0)
    s = tx.init(p)
    step = jax.jit(tx.update)
    for n in range(1, 51):
      g = np.asarray(p["kernel"]) - centre + 0.1 * rng.normal(size=(6, 5))
      lr = lr_at(n - 1)
      acc = acc - lr * g
      l1_acc += c * lr ** (mu + 0.5) * (n ** mu - (n - 1) ** mu)
      want = np.sign(acc) * np.maximum(np.abs(acc) - l1_acc, 0.0)
      u, s = step({"kernel": jnp.asarray(g)}, s, p)
      p = optax.apply_updates(p, u)
      np.testing.assert_allclose(np.asarray(p["kernel"]), want, rtol=0,
                                 atol=1e-6)
  assert 0 < np.mean(want == 0) < 1  # both branches exercised


def test_prox_adam_steps_by_hand():
  rng = np.random.default_rng(4)
  w0 = _tree(rng)
  grads = [_tree(rng) for _ in range(3)]
  lr, lam, b1, b2, eps, wd = 0.05, 0.3, 0.8, 0.95, 1e-3, 0.1
  got, _ = _run64(rda_optax.prox_adam(lr, lam, b1, b2, eps, wd), w0, grads)
  m = {k: np.zeros_like(x) for k, x in w0.items()}
  v = {k: np.zeros_like(x) for k, x in w0.items()}
  w = dict(w0)
  for t, g in enumerate(grads, start=1):
    new = {}
    for key in w:
      m[key] = b1 * m[key] + (1 - b1) * g[key]
      v[key] = b2 * v[key] + (1 - b2) * g[key] ** 2
      d = np.sqrt(v[key] / (1 - b2 ** t)) + eps
      half = w[key] - lr * (m[key] / (1 - b1 ** t) / d + wd * w[key])
      new[key] = _soft(half, lr * lam / d) if key == "kernel" else half
    w = new
    for key in w:
      # The bias corrections are computed in float32.
      np.testing.assert_allclose(got[t - 1][key], w[key], rtol=1e-6,
                                 atol=1e-9)
  assert np.any(got[-1]["kernel"] == 0) and np.any(got[-1]["kernel"] != 0)


# ---------------------------------------------------------------------------
# Groups and targets through the shared interface.


def _grouped_params(rng):
  return {"conv": {"kernel": rng.normal(size=(2, 2, 3, 4))},
          "bn": {"scale": rng.normal(size=4), "bias": rng.normal(size=4)}}


def _specs(_):
  g = rda_optax.GroupSpec("c")
  return {"conv": {"kernel": g}, "bn": {"scale": g, "bias": g}}


def test_prox_scalar_scale_is_the_sparse_group_threshold():
  rng = np.random.default_rng(5)
  p = jax.tree.map(jnp.asarray, _grouped_params(rng))
  prox = rda_optax.Prox.of(p, 0.3, groups=_specs, group_l1=0.7)
  assert prox.kind == "sparse_group"
  leaves, treedef = jax.tree.flatten(p)
  got = jax.tree.unflatten(treedef, prox(leaves, 0.5))
  want = rda_optax.sparse_group_soft_threshold(p, _specs, 0.15, 0.35)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_prox_per_coordinate_scale_is_the_metric_prox():
  """S_{l1 s}(z) per coordinate solves min sum (w - z)^2/(2 s) + l1|w|:
  the subgradient condition holds coordinate by coordinate."""
  rng = np.random.default_rng(6)
  z = rng.normal(size=(5, 6))
  s = rng.uniform(0.1, 2.0, size=(5, 6))
  prox = rda_optax.Prox((True,), (None,), 0.4)
  with jax.enable_x64(True):
    w = np.asarray(prox([jnp.asarray(z)], [jnp.asarray(s)])[0])
  r = (z - w) / s  # must be in l1 * d|w|
  nz = w != 0
  np.testing.assert_allclose(r[nz], 0.4 * np.sign(w[nz]), atol=1e-12)
  assert np.all(np.abs(r[~nz]) <= 0.4 + 1e-12) and nz.any() and (~nz).any()


def test_prox_adam_groups_step_by_hand():
  """On grouped leaves the metric is d averaged over each group (channel
  c: the kernel column and the BN entries c), so the group prox is exact:
  w = h (1 - alpha lambda_g / (dbar_c ||h_c||))_+ per channel."""
  rng = np.random.default_rng(9)
  w0 = _grouped_params(rng)
  g = _grouped_params(rng)
  lr, glam, eps = 0.1, 7.5, 1e-8
  got, _ = _run64(rda_optax.prox_adam(lr, 0.0, eps=eps, groups=_specs,
                                      group_l1=glam), w0, [g])
  flat = lambda t: np.concatenate([t["conv"]["kernel"].reshape(-1, 4),
                                   t["bn"]["scale"][None],
                                   t["bn"]["bias"][None]])
  gw, ww = flat(g), flat(w0)  # (14, 4): one column per channel
  d = np.abs(gw) + eps  # step 1: sqrt(v_hat) = |g|
  dbar = d.mean(0)
  half = ww - lr * gw / dbar  # m_hat = g
  lam_g = glam * np.sqrt(14.0)
  norm = np.linalg.norm(half, axis=0)
  want = half * np.maximum(0.0, 1 - lr * lam_g / (dbar * norm))
  # Channels 0 and 2 die (their thresholds 5.4, 5.9 < 7.5), 1 and 3 stay.
  assert np.all(want[:, [0, 2]] == 0) and np.all(want[:, [1, 3]] != 0)
  np.testing.assert_allclose(flat(got[0]), want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["rmda", "grda", "prox_adam"])
def test_groups_zero_whole_channels(method):
  """The group term reaches each new method: with a strong group_l1,
  channels go to zero as wholes (kernel column, BN scale and bias)."""
  rng = np.random.default_rng(7)
  p = jax.tree.map(jnp.asarray, _grouped_params(rng))
  make = {"rmda": lambda: rda_optax.rmda(0.5, 0.0, 1.0, groups=_specs,
                                         group_l1=0.25),
          "grda": lambda: rda_optax.grda(0.2, 0.0, 1.0, groups=_specs,
                                         group_l1=0.5),
          "prox_adam": lambda: rda_optax.prox_adam(
              0.1, 0.0, groups=_specs, group_l1=0.3)}[method]
  tx = make()
  s = tx.init(p)
  # Pull channels 0, 1 hard towards their values, leave 2, 3 weakly pulled
  # to 0: the weak ones die as groups.
  pull = np.array([5.0, 5.0, 0.05, 0.05])
  for _ in range(60):
    g = jax.tree.map(lambda x: (x - 0.5) * pull, p)
    u, s = tx.update(g, s, p)
    p = optax.apply_updates(p, u)
  norms = np.asarray(rda_optax.group_norms(p, _specs)["c"])
  assert np.all(norms[2:] == 0) and np.all(norms[:2] > 0), norms


@pytest.mark.parametrize("method", ["rmda", "grda", "prox_adam"])
def test_target_sparsity_is_met_exactly(method):
  rng = np.random.default_rng(8)
  p = {"kernel": jnp.asarray(rng.normal(size=(10, 20)), jnp.float32),
       "bias": jnp.asarray(rng.normal(size=20), jnp.float32)}
  tx = {"rmda": lambda: rda_optax.rmda(0.1, None, 1.0, target_sparsity=0.7),
        "grda": lambda: rda_optax.grda(0.1, None, target_sparsity=0.7),
        "prox_adam": lambda: rda_optax.prox_adam(
            0.1, None, target_sparsity=0.7)}[method]()
  s = tx.init(p)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  for i in range(5):
    g = jax.tree.map(lambda x: jnp.asarray(
        np.random.default_rng(i).normal(size=x.shape), jnp.float32), p)
    u, s = step(g, s, p)
    p = optax.apply_updates(p, u)
    assert int(jnp.sum(p["kernel"] == 0)) == 140
  assert isinstance(s.lambda_t["bias"], optax.MaskedNode)
  assert float(s.lambda_t["kernel"]) > 0
  assert not np.any(np.asarray(p["bias"]) == 0)


@pytest.mark.parametrize("factory,kwargs,message", [
    (rda_optax.rmda, dict(learning_rate=0.1, l1=0.1, momentum=1.5),
     "momentum"),
    (rda_optax.rmda, dict(learning_rate=0.1, l1=0.1, momentum=0.0),
     "momentum"),
    (rda_optax.grda, dict(learning_rate=0.1, l1=0.1, mu=0.0), "mu"),
    (rda_optax.grda, dict(learning_rate=-0.1, l1=0.1), "learning_rate"),
    (rda_optax.prox_adam, dict(learning_rate=0.1, l1=0.1, b1=1.0), "b1"),
    (rda_optax.prox_adam, dict(learning_rate=0.1, l1=-1.0), "l1"),
    (rda_optax.prox_adam, dict(learning_rate=0.1, l1=0.1, group_l1=0.1),
     "group_l1"),
    (rda_optax.rmda, dict(learning_rate=0.1, l1=0.1, target_sparsity=0.5),
     "l1=None"),
    (rda_optax.grda, dict(learning_rate=0.1, l1=None), "target_sparsity"),
])
def test_bad_arguments_are_named(factory, kwargs, message):
  with pytest.raises(ValueError, match=message):
    factory(**kwargs)
