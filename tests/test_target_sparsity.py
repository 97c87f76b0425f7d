"""rda(..., target_sparsity=...): the sparsity after every step is the
target's allocation, and the run is l1-RDA with the chosen lambda_t."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rda_optax
from rda_optax import _target

SHAPES = {"conv": (3, 3, 4, 8), "dense": (20, 30), "head": (30, 5)}


def _params(seed=0):
  keys = jax.random.split(jax.random.key(seed), len(SHAPES) + 1)
  p = {k: jax.random.normal(kk, s) for (k, s), kk in zip(SHAPES.items(), keys)}
  p["bias"] = jnp.zeros(5)
  return p


def _grad(params, step):
  # Depends on the iterate (a quadratic pull towards a fixed point) plus
  # per-step noise, so a wrong lambda changes the trajectory too.
  keys = jax.random.split(jax.random.fold_in(jax.random.key(7), step),
                          len(params))
  return {k: 0.3 * (w - 0.5) + jax.random.normal(kk, w.shape)
          for (k, w), kk in zip(sorted(params.items()), keys)}


def _run(tx, steps, params=None, grads=None):
  """Iterates and states after each step; ``grads`` replays a gradient
  sequence instead of computing it from the iterate."""
  params = _params() if params is None else params
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for t in range(steps):
    g = _grad(params, t) if grads is None else grads[t]
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
    out.append((params, state, g))
  return out


def _cubic(final, ramp):
  # Gradual pruning's ramp (Zhu & Gupta 2017): s_t = s (1 - (1 - t/T)^3).
  return lambda c: final * (1.0 - (1.0 - jnp.minimum(c, ramp) / ramp) ** 3)


@pytest.mark.parametrize("dist,center", [
    ("global", "zero"), ("uniform", "zero"), ("erk", "zero"), ("global", "init")])
def test_sparsity_after_every_step_is_the_schedule(dist, center):
  schedule = _cubic(0.9, 5)
  tx = rda_optax.rda(1.0, None, target_sparsity=schedule,
                     sparsity_distribution=dist, center=center, l2=0.1)
  for t, (params, state, _) in enumerate(_run(tx, 7)):
    s_t = float(schedule(jnp.float32(t)))
    want = rda_optax.keep_counts(params, s_t, "uniform" if dist == "global"
                                 else dist)
    zeros = {k: int(jnp.sum(params[k] == 0)) for k in SHAPES}
    if dist == "global":
      n = sum(math.prod(s) for s in SHAPES.values())
      assert sum(zeros.values()) == n - round(n * (1 - s_t)), t
      lams = {float(state.lambda_t[k]) for k in SHAPES}
      assert len(lams) == 1  # one threshold
    else:
      assert zeros == {k: math.prod(SHAPES[k]) - want[k] for k in SHAPES}, t
    assert int(jnp.sum(params["bias"] == 0)) < 5  # unpenalized, untouched
    assert isinstance(state.lambda_t["bias"], optax.MaskedNode)


def test_targets_zero_and_one():
  tx = rda_optax.rda(1.0, None, target_sparsity=lambda c: jnp.where(c, 1., 0.))
  (p0, _, _), (p1, _, _) = _run(tx, 2)
  assert float(rda_optax.sparsity(p0)) == 0.0
  assert float(rda_optax.sparsity(p1)) == 1.0


def test_l1_schedule_of_the_chosen_lambdas_reproduces_the_run():
  # The target run is l1-RDA with a data-chosen lambda_t: feeding those
  # lambdas to plain rda as an l1 schedule gives the same iterates, bit for
  # bit (the same float32 operations on the same values).
  tx = rda_optax.rda(1.0, None, target_sparsity=_cubic(0.8, 4))
  run = _run(tx, 6)
  lams = jnp.array([float(s.lambda_t["dense"]) for _, s, _ in run])
  assert len(set(lams.tolist())) == len(lams)  # it does move
  plain = _run(rda_optax.rda(1.0, lambda c: lams[c]), 6)
  for (p_t, _, _), (p_l1, _, _) in zip(run, plain):
    for k in p_t:
      assert np.array_equal(np.asarray(p_t[k]), np.asarray(p_l1[k])), k


def test_target_of_a_fixed_l1_run_gives_its_support():
  # Replaying the gradients of a fixed-l1 run (so gbar_t is the same in
  # both), a target schedule equal to that run's sparsity at each step gives
  # its zero set exactly. lambda_t = the largest pruned |gbar| <= l1 < the
  # smallest kept one, so each kept weight is larger in magnitude by
  # (l1 - lambda_t) sqrt(t)/gamma: the target run shrinks no more than the
  # sparsity needs. Rounding: each side is (|gbar| - lam) / b in float32
  # (two roundings), then apply_updates' w_t + (w_{t+1} - w_t) (at most
  # one more, at the scale of max(|w_t|, |w_{t+1}|)); so the difference
  # is within 4 ulps of the largest of the two runs' current and previous
  # magnitudes, plus the float32 rounding of l1 itself.
  l1, gamma = 0.35, 2.0
  ref = _run(rda_optax.rda(gamma, l1), 6)
  n = sum(math.prod(s) for s in SHAPES.values())
  zeros = jnp.array([sum(int(jnp.sum(p[k] == 0)) for k in SHAPES)
                     for p, _, _ in ref])
  tx = rda_optax.rda(gamma, None, target_sparsity=lambda c: zeros[c] / n)
  out = _run(tx, 6, grads=[g for _, _, g in ref])
  prev = prev_ref = _params()
  l1_32 = float(np.float32(l1))
  for t, ((p_ref, _, _), (p_tgt, s_tgt, _)) in enumerate(zip(ref, out)):
    lam = float(s_tgt.lambda_t["dense"])
    assert lam <= l1_32
    shift = (l1_32 - lam) * math.sqrt(t + 1) / gamma
    for k in SHAPES:
      a, b = np.asarray(p_ref[k]), np.asarray(p_tgt[k])
      assert np.array_equal(a == 0, b == 0), (t, k)
      scale = np.maximum.reduce([abs(a), abs(b), abs(np.asarray(prev[k])),
                                 abs(np.asarray(prev_ref[k]))])
      tol = 4 * np.finfo(np.float32).eps * scale
      assert np.all(np.abs(np.abs(b) - np.abs(a) - shift * (a != 0)) <= tol)
    prev, prev_ref = p_tgt, p_ref


def test_threshold_every_holds_lambda_between_recomputes():
  tx = rda_optax.rda(1.0, None, target_sparsity=0.7, threshold_every=3)
  run = _run(tx, 7)
  lams = [float(s.lambda_t["dense"]) for _, s, _ in run]
  for t in range(7):
    if t % 3:
      assert lams[t] == lams[t - 1]
    else:
      assert t == 0 or lams[t] != lams[t - 1]
      p = run[t][0]
      assert float(rda_optax.sparsity(p)) == pytest.approx(0.7, abs=1e-3)


def test_kth_smallest_is_the_order_statistic():
  # Ties, zeros, a subnormal, inf, and values that share their high 16 bits
  # (1.0 and its next floats), over two arrays; every k.
  rng = np.random.default_rng(0)
  special = [0.0, 0.0, 1e-45, 0.5, 0.5, 1.0, np.nextafter(1.0, 2.0),
             np.nextafter(np.nextafter(1.0, 2.0), 2.0), 3.0, np.inf, 7e-3]
  x = np.array(special * 3 + list(np.abs(rng.standard_normal(47))),
               np.float32)
  rng.shuffle(x)
  select = jax.jit(lambda a, b, k: _target.kth_smallest([a, b], k))
  want = np.sort(x)
  for k in range(x.size + 1):
    got = select(x[:30], x[30:], k)
    w = want[k - 1] if k else np.float32(0)
    assert np.float32(got).view(np.uint32) == np.float32(w).view(np.uint32), k
  # k = 1 with no zero among the scores: the smallest entry, not 0.
  pos = x[x > 0]
  assert np.float32(select(pos[:30], pos[30:], 1)) == pos.min() > 0


def test_sampled_threshold():
  # Exact when the sample covers every entry.
  x = jnp.abs(jax.random.normal(jax.random.key(3), (50, 40)))
  for k in (0, 1, 777, 2000):
    assert float(_target.sampled_kth_smallest([x], k, 4096)) == float(
        _target.kth_smallest([x], k))
  # Otherwise within the quantile's sampling error: 5 standard deviations
  # of a binomial share, exceeded with probability below 1e-6 (the draw is
  # seeded, so this is one fixed check).
  big = jnp.abs(jax.random.normal(jax.random.key(4), (400, 500)))
  m = 4096
  for s in (0.5, 0.9, 0.97):
    k = round(s * big.size)
    lam = _target.sampled_kth_smallest([big], k, m)
    hit = float(jnp.mean(big <= lam))
    assert abs(hit - s) <= 5 * math.sqrt(s * (1 - s) / m), s
  tx = rda_optax.rda(1.0, None, target_sparsity=0.9, threshold_samples=10**6)
  params, _, _ = _run(tx, 2)[-1]  # 1094 penalized entries: exact
  n = sum(math.prod(s) for s in SHAPES.values())
  assert int(sum(jnp.sum(params[k] == 0) for k in SHAPES)) == n - round(n * 0.1)


def test_sampled_threshold_is_the_order_statistic_of_its_sample():
  # Two arrays, a rank that rounds, ties and zeros: the estimate is the
  # r-th smallest of the entries at sample_positions, r = round(k m / n).
  rng = np.random.default_rng(5)
  a = np.abs(rng.standard_normal((300, 70))).astype(np.float32)
  b = np.round(np.abs(rng.standard_normal(9000)), 2).astype(np.float32)
  b[:500] = 0.0
  pos = _target.sample_positions([a.size, b.size], 1000)
  sample = np.sort(np.concatenate([a.ravel()[pos[0]], b.ravel()[pos[1]]]))
  m, n = sample.size, a.size + b.size
  select = jax.jit(lambda x, y, k: _target.sampled_kth_smallest([x, y], k, 1000))
  for k in (0, 1, 17, 4567, n // 2, n - 3, n):
    r = min(m, round(k * m / n))
    want = sample[r - 1] if r else np.float32(0)
    assert np.float32(select(a, b, k)) == want, k


def test_sample_positions_are_distinct_sorted_and_proportional():
  """A draw without replacement: no entry counted twice in the estimate."""
  sizes = [50, 3000, 12000]
  pos = _target.sample_positions(sizes, 1500, seed=2)
  for p, n in zip(pos, sizes):
    assert p.dtype == np.int32 and np.all(np.diff(p) > 0)  # distinct, sorted
    assert 0 <= p.min() and p.max() < n
    assert p.size == max(1, round(1500 * n / sum(sizes)))
  # Sizes the sample covers: every entry, no positions needed.
  assert _target.sample_positions(sizes, sum(sizes)) == [None] * 3


ERK_SHAPES = [(3, 3, 3, 64), (3, 3, 64, 64), (3, 3, 64, 128), (1, 1, 64, 128),
              (3, 3, 128, 128), (512, 10), (4096, 128), (128, 10)]
_erk_traced = jax.jit(lambda t: _target.zero_counts(ERK_SHAPES, t, "erk"))


@pytest.mark.parametrize("s", [0.3, 0.5, 0.8, 0.9, 0.95, 0.97, 0.99])
def test_traced_erk_counts_match_the_allocation_module(s):
  static = _target.zero_counts(ERK_SHAPES, s, "erk")
  assert [int(c) for c in _erk_traced(jnp.float32(s))] == static


@pytest.mark.parametrize("kwargs,needle", [
    (dict(l1=1e-3, target_sparsity=0.9), "l1=None"),
    (dict(l1=None), "l1 is None"),
    (dict(l1=None, target_sparsity=1.5), "target_sparsity"),
    (dict(l1=None, target_sparsity=0.9, sparsity_distribution="layer"),
     "distribution"),
    (dict(l1=None, target_sparsity=0.9, threshold_every=0), "threshold_every"),
    (dict(l1=None, target_sparsity=0.9, threshold_samples=0),
     "threshold_samples"),
    (dict(l1=None, target_sparsity=0.9, groups=lambda p: None, group_l1=0.1),
     "cannot be combined"),
])
def test_bad_arguments(kwargs, needle):
  with pytest.raises(ValueError, match=needle):
    rda_optax.rda(1.0, **kwargs)


def test_schedule_outside_0_1_poisons_the_iterate():
  tx = rda_optax.rda(1.0, None, target_sparsity=lambda c: 1.5)
  params, _, _ = _run(tx, 1)[-1]
  assert bool(jnp.all(jnp.isnan(params["dense"])))


def test_plain_rda_state_keeps_its_leaves():
  params = _params()
  plain = rda_optax.rda(1.0, 1e-3).init(params)
  assert plain.lambda_t == ()
  n_plain = len(jax.tree.leaves(plain))
  target = rda_optax.rda(1.0, None, target_sparsity=0.5).init(params)
  assert len(jax.tree.leaves(target)) == n_plain + len(SHAPES)
