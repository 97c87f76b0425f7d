"""Tests for the group soft thresholds and the channel groups."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import models
import rda_optax
from rda_optax import GroupSpec

_FLOATS = st.floats(-10, 10, width=32, allow_subnormal=False)


def _prox_objective(w, z, lam):
  return 0.5 * np.sum((w - z) ** 2) + lam * np.linalg.norm(w)


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float32, st.sampled_from([3, 8]), elements=_FLOATS),
       st.floats(0.0, 3.0))
def test_closed_form_solves_the_subproblem(z, tau):
  """T_tau(z) against a direct solve of min 1/2||w-z||^2 + lambda||w||.

  The objective is invariant under rotations fixing z, so its minimizer lies
  on the ray {s z/||z||, s >= 0}: a fine grid over s finds its norm to the
  grid spacing. Random perturbations in every direction must not improve on
  the closed form (it is the unique minimizer of a strongly convex
  function).
  """
  lam = tau * math.sqrt(z.size)
  out = np.asarray(rda_optax.group_soft_threshold(
      jnp.asarray(z), GroupSpec("g", None), tau), np.float64)
  z64 = z.astype(np.float64)
  nz = np.linalg.norm(z64)
  s = np.linspace(0.0, nz, 20001)
  f = 0.5 * (s - nz) ** 2 + lam * s
  s_star = s[np.argmin(f)]
  np.testing.assert_allclose(np.linalg.norm(out), s_star,
                             atol=nz / 20000 + 1e-5 * nz + 1e-6)
  rng = np.random.default_rng(0)
  base = _prox_objective(out, z64, lam)
  for d in rng.normal(size=(50, z.size)) * 1e-2:
    # float32 output: its objective is within a rounding error of optimal.
    assert base <= _prox_objective(out + d, z64, lam) + 1e-5 * (1 + nz ** 2)


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float32, (3, 4), elements=_FLOATS),
       st.floats(0.0, 4.0, width=32))
def test_zero_criterion_and_shrinkage(z, tau):
  """Group g is zero iff ||z_g|| <= tau sqrt|g|; else scaled by 1 - lam/norm."""
  out = np.asarray(rda_optax.group_soft_threshold(
      jnp.asarray(z), GroupSpec("g", -1), tau))  # 4 columns of 3 entries
  lam = np.float32(tau) * np.float32(math.sqrt(3))
  norms = np.linalg.norm(z.astype(np.float64), axis=0)
  zero = np.all(out == 0, axis=0)
  # Only a group within rounding of the threshold may go either way.
  clear = np.abs(norms - lam) > 1e-5 * (1 + lam)
  np.testing.assert_array_equal(zero[clear], (norms <= lam)[clear])
  assert not np.any(np.signbit(out[:, zero]))  # exact +0.0
  for c in np.flatnonzero(~zero & clear):
    np.testing.assert_allclose(out[:, c], z[:, c] * (1 - lam / norms[c]),
                               rtol=1e-5, atol=1e-5)


def test_nan_and_zero_groups():
  z = jnp.array([[jnp.nan, 0.0, 1e-3], [1.0, 0.0, 1e-3]])
  for tau in (0.0, 1.0):
    out = np.asarray(rda_optax.group_soft_threshold(z, GroupSpec("g"), tau))
    assert np.all(np.isnan(out[:, 0]))  # NaN in -> the whole group NaN
    np.testing.assert_array_equal(out[:, 1], [0.0, 0.0])  # never NaN
  np.testing.assert_array_equal(
      rda_optax.group_soft_threshold(z, GroupSpec("g"), 0.0)[:, 2], z[:, 2])


def test_a_family_spans_leaves_like_one_concatenated_vector():
  """Kernel column c, its bias and BatchNorm entries form one group."""
  rng = np.random.default_rng(1)
  tree = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)),
                                         jnp.float32),
                   "bias": jnp.asarray(rng.normal(size=4), jnp.float32)},
          "bn": {"scale": jnp.asarray(rng.normal(size=4), jnp.float32),
                 "bias": jnp.asarray(rng.normal(size=4), jnp.float32)},
          "free": jnp.ones(5)}
  spec = {"conv": {"kernel": GroupSpec("c"), "bias": GroupSpec("c")},
          "bn": {"scale": GroupSpec("c"), "bias": GroupSpec("c")},
          "free": None}
  assert rda_optax.group_sizes(tree, spec) == {"c": 3 * 3 * 2 + 3}
  cat = np.concatenate([np.asarray(tree["conv"]["kernel"]).reshape(-1, 4),
                        np.asarray(tree["conv"]["bias"])[None],
                        np.asarray(tree["bn"]["scale"])[None],
                        np.asarray(tree["bn"]["bias"])[None]])
  # A threshold between the 2nd and 3rd largest norms: two groups survive.
  srt = np.sort(np.linalg.norm(cat, axis=0))
  tau = float(srt[1] + srt[2]) / 2 / math.sqrt(cat.shape[0])
  out = rda_optax.group_soft_threshold(tree, spec, tau)
  ref = np.asarray(rda_optax.group_soft_threshold(jnp.asarray(cat),
                                                  GroupSpec("x"), tau))
  got = np.concatenate([np.asarray(out["conv"]["kernel"]).reshape(-1, 4),
                        np.asarray(out["conv"]["bias"])[None],
                        np.asarray(out["bn"]["scale"])[None],
                        np.asarray(out["bn"]["bias"])[None]])
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
  assert np.sum(np.all(ref == 0, axis=0)) == 2
  np.testing.assert_array_equal(out["free"], tree["free"])


def test_bad_group_specs_name_the_problem():
  x = {"a": jnp.ones((2, 3)), "b": jnp.ones(2)}
  with pytest.raises(ValueError, match="family 'f' has 3 groups"):
    rda_optax.group_soft_threshold(
        x, {"a": GroupSpec("f"), "b": GroupSpec("f")}, 1.0)
  with pytest.raises(ValueError, match="does not match"):
    rda_optax.group_soft_threshold(x, {"a": GroupSpec("f")}, 1.0)
  with pytest.raises(ValueError, match="out of range"):
    rda_optax.group_soft_threshold(x, {"a": None, "b": GroupSpec("f", 1)}, 1.)


def test_group_weight_multiplies_the_threshold_of_its_family():
  """lambda_g = tau w sqrt(|g|), per family, against a float64 reference."""
  rng = np.random.default_rng(0)
  tree = {"a": rng.normal(size=(5, 6)).astype(np.float32),
          "b": rng.normal(size=(3, 6)).astype(np.float32),
          "c": rng.normal(size=(4, 2)).astype(np.float32)}
  weights = {"f": 2.5, "h": 1.5}
  spec = {"a": GroupSpec("f", weight=2.5), "b": GroupSpec("f", weight=2.5),
          "c": GroupSpec("h", weight=1.5)}
  tau = 0.35
  out = rda_optax.group_soft_threshold(
      jax.tree.map(jnp.asarray, tree), spec, tau)
  fam = {"f": np.concatenate([tree["a"], tree["b"]]).astype(np.float64),
         "h": tree["c"].astype(np.float64)}
  dead = 0
  for key, z in fam.items():
    lam = tau * weights[key] * math.sqrt(z.shape[0])
    norm = np.linalg.norm(z, axis=0)
    # No group within rounding of its threshold, so none can flip.
    assert np.min(np.abs(norm - lam) / lam) > 1e-3
    dead += int(np.sum(norm <= lam))
    fam[key] = z * np.maximum(0.0, 1 - lam / norm)
  assert 0 < dead < 8  # both sides of the threshold are exercised
  got = np.concatenate([out["a"], out["b"]])
  np.testing.assert_allclose(got, fam["f"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["c"], fam["h"], rtol=1e-5, atol=1e-6)


def _two_layer_params(norm):
  # Every channel group has norm ``norm``; the groups hold 3*3*1 + 2 = 11
  # and 40 + 2 = 42 entries.
  def layer(shape):
    n = math.prod(shape[:-1]) + 2
    v = norm / math.sqrt(n)
    return ({"kernel": jnp.full(shape, v)},
            {"scale": jnp.full(shape[-1:], v), "bias": jnp.full(shape[-1:], v)})
  conv, bn0 = layer((3, 3, 1, 8))
  hidden, bnh = layer((40, 5))
  return {"conv0": conv, "bn0": bn0, "hidden": hidden, "bn_hidden": bnh}


@pytest.mark.parametrize("factor, alive", [(0.99, True), (1.01, False)])
def test_uniform_weighting_gives_every_channel_the_threshold_tau(factor,
                                                                 alive):
  params = _two_layer_params(1.0)
  tau = 1.0 * factor  # just under / over every group's norm
  uni = rda_optax.channel_groups(params, weighting="uniform")
  out = rda_optax.group_soft_threshold(params, uni, tau)
  for leaf in jax.tree.leaves(out):
    assert bool(np.all(np.asarray(leaf) != 0)) == alive
  # Under the default sqrt(|g|) scaling the same tau kills both layers.
  out = rda_optax.group_soft_threshold(
      params, rda_optax.channel_groups(params), tau / 3.0)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(out))


def test_weighting_dict_sets_families_and_leaves_the_rest_at_one():
  params = _two_layer_params(1.0)
  spec = rda_optax.channel_groups(params, weighting={"hidden": 0.5})
  assert spec["hidden"]["kernel"].weight == 0.5
  assert spec["bn_hidden"]["scale"].weight == 0.5
  assert spec["conv0"]["kernel"].weight == 1.0
  # Every group has norm 1: conv0 dies from tau = 1/sqrt(11) = 0.302,
  # hidden from tau = 2/sqrt(42) = 0.309 (0.154 without the weight).
  for tau in (0.2, 0.3, 0.305, 0.32):
    out = rda_optax.group_soft_threshold(params, spec, tau)
    for fam, n, w in (("conv0", 11, 1.0), ("hidden", 42, 0.5)):
      assert bool(np.all(out[fam]["kernel"] == 0)) == (
          tau * w * math.sqrt(n) >= 1.0), (tau, fam)


def test_bad_weights_name_the_problem():
  x = {"a": jnp.ones((2, 3)), "b": jnp.ones((4, 3))}
  with pytest.raises(ValueError, match="weight of family 'f' must be"):
    rda_optax.group_soft_threshold(x, {"a": GroupSpec("f", weight=-1.0),
                                       "b": None}, 1.0)
  with pytest.raises(ValueError, match="weight of family 'f' must be"):
    rda_optax.group_soft_threshold(
        x, {"a": GroupSpec("f", weight=float("nan")), "b": None}, 1.0)
  with pytest.raises(ValueError, match="family 'f' has weight 1.0 in one"):
    rda_optax.group_soft_threshold(x, {"a": GroupSpec("f"),
                                       "b": GroupSpec("f", weight=2.0)}, 1.0)
  # The message lists the choices as they are spelled.
  with pytest.raises(ValueError,
                     match="weighting must be one of size, uniform or a dict"):
    rda_optax.channel_groups(_two_layer_params(1.0), weighting="flops")


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float32, (4, 3), elements=_FLOATS),
       st.floats(0.0, 2.0), st.floats(0.0, 2.0))
def test_sparse_group_is_the_prox_of_l1_plus_group(z, l1, tau):
  """P(z) minimizes 1/2||w-z||^2 + l1||w||_1 + sum_g lambda_g ||w_g||."""
  out = np.asarray(rda_optax.sparse_group_soft_threshold(
      jnp.asarray(z), GroupSpec("g"), l1, tau), np.float64)
  z64 = z.astype(np.float64)
  lam = tau * 2.0  # sqrt(|g|), |g| = 4 rows

  def obj(w):
    return (0.5 * np.sum((w - z64) ** 2) + l1 * np.abs(w).sum()
            + lam * np.linalg.norm(w, axis=0).sum())

  base = obj(out)
  scale = 1 + np.sum(z64 ** 2)
  rng = np.random.default_rng(0)
  for d in rng.normal(size=(80, 4, 3)) * 1e-2:
    assert base <= obj(out + d) + 1e-5 * scale
  # Criterion: group zero iff ||S_l1(z_g)|| <= lambda_g (away from the tie).
  s = np.sign(z64) * np.maximum(np.abs(z64) - l1, 0)
  ns = np.linalg.norm(s, axis=0)
  clear = np.abs(ns - lam) > 1e-5 * (1 + lam)
  np.testing.assert_array_equal(np.all(out == 0, axis=0)[clear],
                                (ns <= lam)[clear])


# --- group-lasso regression ------------------------------------------------

def _group_lasso_problem(orthogonal):
  rng = np.random.default_rng(3)
  n, sizes = 64, (3, 4, 2, 5, 3)
  d = sum(sizes)
  a = rng.normal(size=(n, d))
  if orthogonal:
    a = np.linalg.qr(a)[0] * math.sqrt(n)  # A^T A / n = I
  x_true = np.concatenate([rng.normal(size=k) * (i % 2) for i, k in
                           enumerate(sizes)])
  b = a @ x_true + 0.1 * rng.normal(size=n)
  return a, b, sizes


def _fista_reference(a, b, sizes, lam, iters=3000):
  """Independent FISTA in float64 with a per-group loop for the prox."""
  n = a.shape[0]
  lip = np.linalg.eigvalsh(a.T @ a / n).max()
  step = 1.0 / lip
  bounds = np.cumsum((0,) + sizes)
  x = y = np.zeros(a.shape[1])
  t = 1.0
  for _ in range(iters):
    v = y - step * (a.T @ (a @ y - b) / n)
    x_new = np.empty_like(v)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
      seg, thr = v[lo:hi], step * lam * math.sqrt(hi - lo)
      nrm = math.sqrt(float(seg @ seg))
      x_new[lo:hi] = 0.0 if nrm <= thr else seg * (1 - thr / nrm)
    t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
    y = x_new + (t - 1) / t_new * (x_new - x)
    x, t = x_new, t_new
  return x


def test_orthogonal_design_has_the_operator_as_its_solution():
  """With A^T A / n = I the group lasso is solved by T_lam(A^T b / n)."""
  a, b, sizes = _group_lasso_problem(orthogonal=True)
  lam = 0.08
  ref = _fista_reference(a, b, sizes, lam)
  z = a.T @ b / a.shape[0]
  bounds = np.cumsum((0,) + sizes)
  segs = [jnp.asarray(z[lo:hi], jnp.float32)
          for lo, hi in zip(bounds[:-1], bounds[1:])]
  got = np.concatenate(rda_optax.group_soft_threshold(
      segs, [GroupSpec(f"g{i}", None) for i in range(len(sizes))], lam))
  np.testing.assert_allclose(got, ref, rtol=0,
                             atol=1e-5 * np.linalg.norm(ref))
  zero = [not np.any(got[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
  assert any(zero) and not all(zero)


# --- channel groups --------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _abstract_params(name, input_shape):
  model = models.get(name)
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False),
                        jax.random.key(0), x)["params"]


@pytest.mark.parametrize("name,shape", [("small_cnn", (8, 8, 1)),
                                        ("vgg16bn", (32, 32, 3)),
                                        ("resnet18", (32, 32, 3))])
def test_channel_groups_pair_kernels_with_their_batchnorm(name, shape):
  params = _abstract_params(name, shape)
  spec = rda_optax.channel_groups(params)
  sizes = rda_optax.group_sizes(params, spec)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  specs = jax.tree.structure(params).flatten_up_to(spec)
  for (path, leaf), s in zip(flat, specs):
    names = [k.key for k in path]
    if names[0] == "classifier":
      assert s is None
    else:  # every other leaf is a conv/dense kernel or bias, or a BN entry
      assert isinstance(s, GroupSpec), names
  if name == "small_cnn":
    assert sizes == {"conv0": 9 + 2, "conv1": 9 * 32 + 2,
                     "hidden": 8 * 8 * 64 + 2}
  elif name == "vgg16bn":
    assert sizes["conv0"] == 27 + 1 + 2 and sizes["conv12"] == 9 * 512 + 3
    assert len(sizes) == 13
  else:
    # The stream of stage 1: the stem and both blocks' conv2.
    assert sizes["stream1"] == (27 + 2) + 2 * (9 * 64 + 2)
    assert sizes["stream2"] == (64 + 2) + 2 * (9 * 128 + 2)
    assert sizes["layer3_1/conv1"] == 9 * 256 + 2
    untied = rda_optax.group_sizes(
        params, rda_optax.channel_groups(params, tie_residual=False))
    assert "stream1" not in untied and untied["stem_conv"] == 27 + 2


# --- rda / prox_sgd with groups --------------------------------------------

def test_rda_with_channel_groups_matches_the_closed_form():
  """Three RDA steps with channel groups against the closed form by hand.

  Kernel entries are centred at 0 with the element-wise l1, BatchNorm
  entries at w_1 without it; each channel's vector then shrinks as a whole,
  and the channels with small gradients die together with their BatchNorm.
  """
  rng = np.random.default_rng(0)
  params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)),
                                           jnp.float32)},
            "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
            "classifier": {"kernel": jnp.asarray(rng.normal(size=(4, 3)),
                                                 jnp.float32)}}
  gamma, l1, glam, l2 = 0.1, 0.02, 0.1, 0.01
  tx = rda_optax.rda(gamma, l1, l2=l2, groups=rda_optax.channel_groups,
                     group_l1=glam)
  state = tx.init(params)
  update = jax.jit(tx.update)  # one compile instead of many eager ops
  size = np.array([0.01, 0.01, 1.0, 1.0])  # channels 0, 1: small gradients
  grads = []
  p = params
  for _ in range(3):
    g = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape),
                                           jnp.float32), params)
    g["conv"]["kernel"] = g["conv"]["kernel"] * size
    g["bn"] = jax.tree.map(lambda a: a * size, g["bn"])
    grads.append(g)
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)

  gbar = jax.tree.map(lambda *a: np.mean(np.asarray(a, np.float64), 0),
                      *grads)
  b = gamma / math.sqrt(3)
  st = lambda x: np.sign(x) * np.maximum(np.abs(x) - l1, 0)  # noqa: E731
  zk = st(-gbar["conv"]["kernel"]).reshape(-1, 4)
  zs = b * 1.0 - gbar["bn"]["scale"]
  zb = b * 0.0 - gbar["bn"]["bias"]
  vec = np.concatenate([zk, zs[None], zb[None]])  # one column per channel
  lam_g = glam * math.sqrt(vec.shape[0])
  norms = np.linalg.norm(vec, axis=0)
  want = vec * np.maximum(0, 1 - lam_g / norms) / (b + l2)
  np.testing.assert_allclose(
      np.asarray(p["conv"]["kernel"]).reshape(-1, 4), want[:-2],
      rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(p["bn"]["scale"], want[-2], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(p["bn"]["bias"], want[-1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(p["classifier"]["kernel"],
                             st(-gbar["classifier"]["kernel"]) / (b + l2),
                             rtol=1e-5, atol=1e-6)
  # Whole channels are exact zeros (kernel, scale, bias), the others live.
  dead = models.dead_channels({"params": p})["bn"]
  np.testing.assert_array_equal(dead, [True, True, False, False])
  np.testing.assert_array_equal(
      np.all(np.asarray(p["conv"]["kernel"]) == 0, axis=(0, 1, 2)), dead)


def test_prox_sgd_sparse_group_step_is_the_threshold_of_the_sgd_step():
  """One prox-SGD step with l1 and groups: P_{lr l1, lr glam}(w - lr g),
  element-wise on the kernel, then group shrinkage (the closed form of
  sparse_group_soft_threshold, by hand in float64)."""
  rng = np.random.default_rng(3)
  size = np.array([0.03, 0.03, 1.0, 1.0, 1.0])  # channels 0, 1: small
  params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(2, 2, 3, 5))
                                           * size, jnp.float32)},
            "bn": {"scale": jnp.asarray(size, jnp.float32),
                   "bias": jnp.zeros(5)}}
  grads = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) * size,
                                             jnp.float32), params)
  lr, l1, glam = 0.5, 0.3, 0.2
  tx = rda_optax.prox_sgd(lr, l1, groups=rda_optax.channel_groups,
                          group_l1=glam)
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  p = optax.apply_updates(params, u)
  f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
  zk = f64(params["conv"]["kernel"]) - lr * f64(grads["conv"]["kernel"])
  zk = np.sign(zk) * np.maximum(np.abs(zk) - lr * l1, 0)  # kernels only
  zs = f64(params["bn"]["scale"]) - lr * f64(grads["bn"]["scale"])
  zb = f64(params["bn"]["bias"]) - lr * f64(grads["bn"]["bias"])
  vec = np.concatenate([zk.reshape(-1, 5), zs[None], zb[None]])
  lam_g = lr * glam * math.sqrt(vec.shape[0])
  norms = np.linalg.norm(vec, axis=0)
  assert np.min(np.abs(norms - lam_g)) > 1e-3
  want = vec * np.maximum(0, 1 - lam_g / norms)
  assert 0 < np.sum(np.all(want == 0, axis=0)) < 5  # some channels die
  got = np.concatenate([np.asarray(p["conv"]["kernel"]).reshape(-1, 5),
                        np.asarray(p["bn"]["scale"])[None],
                        np.asarray(p["bn"]["bias"])[None]])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _loss_and_params(a, b, sizes):
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

  def loss(ps):
    return 0.5 * jnp.mean((a32 @ jnp.concatenate(ps) - b32) ** 2)

  return loss, [jnp.full(k, 0.1, jnp.float32) for k in sizes]


def _run(tx, loss, p0, steps):
  def step(carry, _):
    p, s = carry
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return (optax.apply_updates(p, u), s), None

  run = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps)[0])
  p, _ = run((p0, tx.init(p0)))
  return np.concatenate([np.asarray(q, np.float64) for q in p])


def test_prox_sgd_and_rda_with_groups_solve_the_group_lasso():
  """Convex check against the independent FISTA run.

  Full-batch prox-SGD at step 1/L is ISTA: it converges linearly here, so
  it must match FISTA to 1e-3. RDA converges at O(1/sqrt t) in objective,
  so after 3000 steps it is held to an objective gap of 2e-3 (4.6e-4 was
  measured) and, being a dual-averaging method, to FISTA's exact set of zero
  groups (manifold identification, Lee & Wright 2012).
  """
  a, b, sizes = _group_lasso_problem(False)
  lam = 0.08
  ref = _fista_reference(a, b, sizes, lam)
  loss, p0 = _loss_and_params(a, b, sizes)
  spec = [GroupSpec(f"g{i}", None) for i in range(len(sizes))]
  lip = float(np.linalg.eigvalsh(a.T @ a / a.shape[0]).max())
  bounds = np.cumsum((0,) + sizes)

  def zeros(x):
    return [not np.any(x[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]

  def objective(x):
    return 0.5 * np.mean((a @ x - b) ** 2) + lam * sum(
        math.sqrt(hi - lo) * np.linalg.norm(x[lo:hi])
        for lo, hi in zip(bounds[:-1], bounds[1:]))

  ista = _run(rda_optax.prox_sgd(1.0 / lip, 0.0, groups=spec, group_l1=lam),
              loss, p0, 3000)
  np.testing.assert_allclose(ista, ref, rtol=0,
                             atol=1e-3 * np.linalg.norm(ref))
  x = _run(rda_optax.rda(1.0, 0.0, groups=spec, group_l1=lam), loss, p0,
           3000)
  assert zeros(x) == zeros(ref) and any(zeros(ref))
  assert objective(x) - objective(ref) <= 2e-3 * objective(ref)


def test_group_l1_without_groups_is_refused():
  for make in (rda_optax.rda, rda_optax.prox_sgd):
    with pytest.raises(ValueError, match="group_l1 needs groups"):
      make(1.0, 0.0, group_l1=0.1)
    with pytest.raises(ValueError, match="groups= needs group_l1"):
      make(1.0, 0.0, groups=rda_optax.channel_groups)
    with pytest.raises(ValueError, match="group_l1 must be >= 0"):
      make(1.0, 0.0, groups=rda_optax.channel_groups, group_l1=-1.0)
  with pytest.raises(ValueError, match="groups: the group-spec tree"):
    rda_optax.rda(1.0, 0.0, groups={"x": None}, group_l1=0.1).init(
        {"w": jnp.ones((2, 2))})


def test_grouped_rda_keeps_nan_visible_and_inits_abstractly():
  params = {"conv": {"kernel": jnp.ones((3, 3, 1, 2))},
            "bn": {"scale": jnp.ones(2), "bias": jnp.zeros(2)}}
  for tx in (rda_optax.rda(1.0, 0.0, groups=rda_optax.channel_groups,
                           group_l1=10.0),
             rda_optax.prox_sgd(0.1, 0.0, groups=rda_optax.channel_groups,
                                group_l1=10.0)):
    abstract = jax.eval_shape(lambda p: p, params)
    assert jax.tree.structure(tx.init(abstract)) == jax.tree.structure(
        tx.init(params))
    g = jax.tree.map(jnp.zeros_like, params)
    g["conv"]["kernel"] = g["conv"]["kernel"].at[0, 0, 0, 0].set(jnp.nan)
    u, _ = jax.jit(tx.update)(g, tx.init(params), params)
    w = optax.apply_updates(params, u)
    # A threshold this large zeroes the finite channel; the NaN one stays NaN.
    assert np.all(np.isnan(np.asarray(w["conv"]["kernel"])[..., 0]))
    assert np.isnan(float(w["bn"]["scale"][0]))
    np.testing.assert_array_equal(np.asarray(w["conv"]["kernel"])[..., 1], 0)
