import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rda_optax
from rda_optax import _allocation


def _net(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"conv1": (3, 3, 3, 16), "conv2": (3, 3, 16, 32),
            "fc": (512, 10), "bias": (10,)}
  return {k: jnp.asarray(rng.normal(size=s), jnp.float32)
          for k, s in shapes.items()}


@pytest.mark.parametrize("target", [0.5, 0.9, 0.987])
def test_erk_budget_sums_to_global_target(target):
  params = _net()
  counts = rda_optax.keep_counts(params, target, "erk")
  n = sum(p.size for k, p in params.items() if k != "bias")
  assert counts["bias"] == 10
  assert sum(v for k, v in counts.items() if k != "bias") == round(
      n * (1 - target))
  for k in ("conv1", "conv2", "fc"):
    assert 0 <= counts[k] <= params[k].size


def test_erk_densities_follow_the_formula():
  # Uncapped: kept_l / n_l proportional to sum(shape)/prod(shape), up to the
  # one-entry rounding of each count.
  shapes = [(3, 3, 64, 64), (3, 3, 64, 128), (1024, 100)]
  counts = _allocation.erk_counts(shapes, 0.95)
  raw = [sum(s) / math.prod(s) for s in shapes]
  eps = [c / math.prod(s) / r for c, s, r in zip(counts, shapes, raw)]
  for e, s in zip(eps, shapes):
    assert abs(e - eps[0]) <= 2 / (math.prod(s) * min(raw))


def test_erk_caps_dense_leaves_and_rescales_the_rest():
  # A tiny first conv (raw density 15/27 per entry) cannot take its ERK share
  # at 50% sparsity: it is made dense, and the big leaf pays for it.
  shapes = [(3, 3, 3, 1), (400, 400)]
  counts = _allocation.erk_counts(shapes, 0.5)
  assert counts[0] == 27
  total = 27 + 160000
  assert sum(counts) == round(total * 0.5)
  # Without the cap the first leaf's density would exceed 1.
  raw = [sum(s) / math.prod(s) for s in shapes]
  eps = round(total * 0.5) / sum(r * math.prod(s) for r, s in zip(raw, shapes))
  assert eps * raw[0] > 1


def test_uniform_is_exact_per_leaf():
  params = _net()
  s = rda_optax.sparsity_allocation(params, 0.8, "uniform")
  counts = rda_optax.keep_counts(params, 0.8, "uniform")
  for k in ("conv1", "conv2", "fc"):
    assert counts[k] == round(params[k].size * 0.2)
    assert round(params[k].size * (1 - s[k])) == counts[k]
  assert s["bias"] == 0.0


def test_global_matches_numpy_threshold():
  params = _net(1)
  target = 0.7
  counts = rda_optax.keep_counts(params, target, "global")
  keys = ("conv1", "conv2", "fc")
  allw = np.concatenate([np.abs(np.asarray(params[k])).ravel() for k in keys])
  k = round(allw.size * (1 - target))
  thr = np.sort(allw)[::-1][k - 1]  # continuous draws: no ties
  for key in keys:
    assert counts[key] == int(np.sum(np.abs(np.asarray(params[key])) >= thr))
  masks = rda_optax.global_top_k_masks(
      [jnp.abs(params[key]) for key in keys], k)
  for key, m in zip(keys, masks):
    np.testing.assert_array_equal(m, np.abs(np.asarray(params[key])) >= thr)


def test_mask_argument_excludes_leaves():
  params = _net()
  mask = {"conv1": False, "conv2": True, "fc": True, "bias": False}
  counts = rda_optax.keep_counts(params, 0.9, "erk", mask=mask)
  assert counts["conv1"] == params["conv1"].size
  n = params["conv2"].size + params["fc"].size
  assert counts["conv2"] + counts["fc"] == round(n * 0.1)


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_shapes_alone_give_the_same_counts(distribution):
  # As documented: "uniform" and "erk" need only shapes (jax.eval_shape).
  params = _net()
  shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype),
                        params)
  assert rda_optax.keep_counts(shapes, 0.9, distribution) == (
      rda_optax.keep_counts(params, 0.9, distribution))


def test_top_k_mask_exact_count_and_deterministic_ties():
  scores = jnp.array([[2.0, 1.0, 1.0], [1.0, 0.0, jnp.nan]])
  m = rda_optax.top_k_mask(scores, 3)
  np.testing.assert_array_equal(m, [[True, True, True], [False, False, False]])
  # k traced under jit, every k from 0 to size.
  f = jax.jit(lambda k: rda_optax.top_k_mask(scores, k).sum())
  for k in range(7):
    assert int(f(k)) == k


def test_top_k_mask_exact_beyond_float32_integers():
  # Ranks past 2**24 are not float32 integers: a leaf that large (VGG-16's
  # ImageNet fc1 has 103M entries) still keeps exactly k.
  k = 2**24 + 1
  assert int(rda_optax.top_k_mask(jnp.zeros(k + 1), k).sum()) == k


def test_leaves_with_no_entries_keep_none():
  # Every penalized leaf empty: nothing to allocate, and no division by 0.
  params = {"w": jnp.ones((0, 4)), "b": jnp.ones(3)}
  for distribution in ("uniform", "erk", "global"):
    counts = rda_optax.keep_counts(params, 0.5, distribution)
    assert counts == {"w": 0, "b": 3}, distribution


def test_bad_arguments():
  params = _net()
  with pytest.raises(ValueError, match="distribution"):
    rda_optax.keep_counts(params, 0.5, "random")
  with pytest.raises(ValueError, match="target"):
    rda_optax.keep_counts(params, 1.5)


def test_docstring_examples():
  res = doctest.testmod(_allocation, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert res.attempted > 0 and res.failed == 0
