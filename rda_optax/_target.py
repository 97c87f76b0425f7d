"""The threshold that gives a target sparsity: the helpers behind
``rda(..., target_sparsity=...)``.

Two parts. :func:`zero_counts` turns a target sparsity into how many entries
of each penalized leaf must be zero, under the allocations of
``rda_optax._allocation`` (``global``, ``uniform``, ``erk``); a traced
target (a schedule of the step) gets the same counts from jnp arithmetic.
:func:`magnitude_zero_counts` gives the counts of ``magnitude``: those of
one global magnitude threshold on the current weights (global GMP's
allocation), computed in ``jit`` each step, so they are traced ints.
:func:`kth_smallest` finds the value a threshold must take for exactly that
many scores to be at or below it, without a sort: a radix select on the
float32 bit patterns, which order non-negative floats as integers do, in two
histogram passes (the high 15 bits, then the low 16 within the chosen bin).
:func:`sampled_kth_smallest` estimates it from a fixed random subset, for
when the exact select costs too much (XLA's scatter-add on CPU).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rda_optax import _allocation


def zero_counts(shapes: Sequence[tuple[int, ...]], target: Any,
                distribution: str) -> list[Any]:
  """Entries of each leaf to zero at sparsity ``target``.

  ``global`` returns one count for the union of the leaves. A Python
  ``target`` gives Python ints equal to ``_allocation.keep_counts``'s
  complements; an array (a schedule's value, traced under ``jit``) gives
  int32 scalars computed the same way in
  float32 (equal except where a product lands within float32 rounding of
  a half, which then moves one entry between leaves or off the total).
  """
  sizes = [math.prod(s) for s in shapes]
  if isinstance(target, (int, float)):
    s = float(target)
    if distribution == "global":
      n = sum(sizes)
      return [n - int(round(n * (1.0 - s)))]
    if distribution == "uniform":
      return [n - int(round(n * (1.0 - s))) for n in sizes]
    return [n - k for n, k in zip(sizes, _allocation.erk_counts(shapes, s))]
  keep = 1.0 - jnp.asarray(target, jnp.float32)
  if distribution == "global":
    n = sum(sizes)
    return [n - jnp.round(n * keep).astype(jnp.int32)]
  if distribution == "uniform":
    return [n - jnp.round(n * keep).astype(jnp.int32) for n in sizes]
  return [n - k for n, k in zip(sizes, _erk_keep(shapes, keep))]


def _erk_keep(shapes: Sequence[tuple[int, ...]], keep: jax.Array) -> list[Any]:
  """``_allocation.erk_counts`` for a traced density ``keep``.

  That loop caps, round after round, the leaves of the largest remaining
  raw density until no density exceeds 1. The capped set is therefore
  always a prefix of the leaves ordered by raw density (ties together), so
  each prefix is tried at once and the first that fits is taken.
  """
  sizes = [math.prod(s) for s in shapes]
  raw = [sum(s) / n if n else 0.0 for s, n in zip(shapes, sizes)]
  budget = jnp.round(sum(sizes) * keep)
  levels = sorted({r for r, n in zip(raw, sizes) if n}, reverse=True)
  eps_list, fits = [], []
  for g in range(len(levels) + 1):
    capped = [n > 0 and r in levels[:g] for r, n in zip(raw, sizes)]
    dense = sum(n for n, c in zip(sizes, capped) if c)
    div = sum(r * n for r, n, c in zip(raw, sizes, capped) if not c and n)
    eps = (budget - dense) / div if div > 0 else jnp.zeros_like(budget)
    top = levels[g] if g < len(levels) else 0.0
    eps_list.append(eps)
    fits.append(eps * top <= 1.0)
  g = jnp.argmax(jnp.stack(fits))  # the first prefix that fits
  eps = jnp.stack(eps_list)[g]
  level = jnp.asarray(levels + [0.0], jnp.float32)[g]
  raw_a = jnp.asarray(raw, jnp.float32)
  size_a = jnp.asarray(sizes, jnp.float32)
  capped = (raw_a > level) & (size_a > 0)
  exact = jnp.where(capped, size_a, eps * raw_a * size_a)
  counts = jnp.minimum(jnp.floor(exact), size_a)
  short = budget - jnp.sum(counts)
  # Largest remainder, ties by leaf order, never above a leaf's size.
  room = counts < size_a
  key = jnp.where(room, -(exact - counts), jnp.inf)
  order = jnp.argsort(key, stable=True)
  rank = jnp.zeros(len(sizes), jnp.int32).at[order].set(
      jnp.arange(len(sizes), dtype=jnp.int32))
  counts = counts + (room & (rank < short))
  counts = counts.astype(jnp.int32)
  return [counts[i] for i in range(len(sizes))]


def magnitude_zero_counts(weights: Sequence[jax.Array], target: Any,
                          samples: Optional[int] = None) -> list[jax.Array]:
  """Per leaf, the entries that ONE magnitude threshold on ``weights``
  (all the penalized leaves taken together) zeros at sparsity ``target``:
  the allocation global gradual magnitude pruning would choose from these
  weights. int32 scalars (traced under ``jit``) that sum to
  ``zero_counts(shapes, target, "global")``.

  The threshold is the ``Z``-th smallest ``|w|`` (:func:`kth_smallest`, no
  sort; ``Z`` the global count): every entry below it is counted, and the
  entries tied at it make up the rest from the LAST position backwards
  (last leaf first, then the higher flat index), which is what
  ``_allocation.global_top_k_masks`` leaves out (it keeps the lower index
  among equal scores). So the counts equal ``size - keep_counts(...,
  "global")`` of the same weights, ties included (the common tie is at
  0: the weights already zero). With ``samples``, the threshold is
  :func:`sampled_kth_smallest`'s estimate and the counts sum to ``Z`` only
  up to its sampling error (the ties still fill the rest where they can).
  NaN weights are never counted.
  """
  z = zero_counts([tuple(w.shape) for w in weights], target, "global")[0]
  z = jnp.asarray(z, jnp.int32)
  mags = [jnp.abs(w).astype(jnp.float32) for w in weights]
  if samples is None:
    t = kth_smallest(mags, z)
  else:
    t = sampled_kth_smallest(mags, z, samples)
  below = [jnp.sum(m < t, dtype=jnp.int32) for m in mags]
  ties = [jnp.sum(m == t, dtype=jnp.int32) for m in mags]
  need = jnp.maximum(z - sum(below), 0)  # tied entries still to zero
  counts = [None] * len(mags)
  after = jnp.zeros([], jnp.int32)  # ties in the leaves after this one
  for i in reversed(range(len(mags))):
    counts[i] = below[i] + jnp.clip(need - after, 0, ties[i])
    after = after + ties[i]
  return counts


def kth_smallest(scores: Sequence[jax.Array], k: Any) -> jax.Array:
  """The ``k``-th smallest entry (1-based) of the non-negative ``scores``
  taken together, as float32; 0 when ``k <= 0``.

  At least ``k`` entries are ``<=`` the result and fewer than ``k`` are
  ``<`` it, so a threshold at it zeros ``k`` entries plus the ties at that
  value. NaN ranks above every number. Cost: two passes of a histogram
  (scatter-add) over every entry, and no sort.
  """
  bits = [jax.lax.bitcast_convert_type(
      s.astype(jnp.float32), jnp.int32).ravel() for s in scores]
  k = jnp.asarray(k, jnp.int32)
  high = sum(jnp.bincount(b >> 16, length=1 << 15) for b in bits)
  c_high = jnp.cumsum(high)
  bin_ = jnp.searchsorted(c_high, k).astype(jnp.int32)
  below = jnp.where(bin_ > 0, c_high[jnp.maximum(bin_ - 1, 0)], 0)
  # Entries outside the chosen high bin go to index 1 << 16, past the end,
  # where bincount drops them.
  low = sum(jnp.bincount(jnp.where((b >> 16) == bin_, b & 0xFFFF, 1 << 16),
                         length=1 << 16) for b in bits)
  c_low = below + jnp.cumsum(low)
  sub = jnp.searchsorted(c_low, k).astype(jnp.int32)
  value = jax.lax.bitcast_convert_type((bin_ << 16) | sub, jnp.float32)
  return jnp.where(k > 0, value, jnp.float32(0))


def sample_positions(sizes: Sequence[int], samples: int,
                     seed: int = 0) -> list[Optional[np.ndarray]]:
  """The flat positions :func:`sampled_kth_smallest` reads in arrays of
  ``sizes`` entries: ``None`` (all of them) when ``samples`` covers every
  entry, else per array a sorted draw without replacement, in proportion
  to its size."""
  n = sum(sizes)
  if samples >= n:
    return [None] * len(sizes)
  rng = np.random.default_rng(seed)
  return [np.sort(rng.choice(size, min(size, max(1, round(samples * size / n))),
                             replace=False)).astype(np.int32)
          for size in sizes]


def sampled_kth_smallest(scores: Sequence[jax.Array], k: Any,
                         samples: int, seed: int = 0) -> jax.Array:
  """An estimate of :func:`kth_smallest` from about ``samples`` entries.

  The positions are drawn once, at trace time (:func:`sample_positions`),
  so the cost is a gather of ``samples`` values and their radix select.
  When ``samples`` covers every entry the result is exact. Otherwise the
  fraction of entries at or below the estimate misses ``k / n`` by the
  sampling error of a quantile: about ``sqrt(q (1 - q) / samples)``
  (q = k/n) typically, and by more than
  ``eps`` with probability at most ``2 exp(-2 samples eps^2)`` (the
  Dvoretzky-Kiefer-Wolfowitz inequality, for a with-replacement sample;
  without replacement is no worse).
  """
  sizes = [math.prod(s.shape) for s in scores]
  n = sum(sizes)
  picked = [s.ravel() if idx is None else s.ravel()[idx]
            for s, idx in zip(scores, sample_positions(sizes, samples, seed))]
  values = jnp.concatenate(picked)
  m = values.shape[0]
  # Rank in the sample with the same share of entries below it.
  r = k if m == n else jnp.round(jnp.asarray(k, jnp.float32) * (m / n))
  # The radix select, not a sort: XLA's CPU sort of 16k values cost a third
  # of a plain rda update of ResNet-18 (idle 2-core CPU); the histograms of
  # 16k values cost little.
  return kth_smallest([values], jnp.clip(jnp.asarray(r, jnp.int32), 0, m))


def thresholds(scores: Sequence[jax.Array], target: Any, distribution: str,
               samples: Optional[int] = None,
               weights: Optional[Sequence[jax.Array]] = None
               ) -> list[jax.Array]:
  """Per-leaf threshold ``lambda_l`` such that ``#{|score| <= lambda_l}``
  meets the allocation of ``target`` (one shared value for ``global``):
  exactly (:func:`kth_smallest`), or estimated from ``samples`` entries
  (:func:`sampled_kth_smallest`). ``magnitude`` needs ``weights`` (one per
  score, the current iterate): its counts are
  :func:`magnitude_zero_counts`'s, then each leaf's own order statistic."""
  if distribution == "magnitude":
    if weights is None or len(weights) != len(scores):
      raise ValueError("the magnitude distribution needs the weights of "
                       "every scored leaf")
    zeros = magnitude_zero_counts(weights, target, samples)
  else:
    zeros = zero_counts([tuple(s.shape) for s in scores], target,
                        distribution)
  if samples is None:
    select = kth_smallest
  else:
    select = lambda ss, z: sampled_kth_smallest(ss, z, samples)
  if distribution == "global":
    return [select(scores, zeros[0])] * len(scores)
  return [select([s], z) for s, z in zip(scores, zeros)]


class FlopsModel(NamedTuple):
  r"""A cost that is a polynomial of the kept groups of each family:

  .. math::
    C(n) = c + \sum_f l_f n_f + \sum_{(a, b)} p_{ab} n_a n_b ,

  with ``n_f`` the groups kept of family ``f``: a network's FLOPs as a
  function of the channels kept per layer (``models.flops_polynomial``),
  whose conv between units ``a`` and ``b`` costs in proportion to
  ``n_a n_b``. Pass it as ``group_costs`` with ``target_flops``. A linear
  entry may also be a 1-D array with one cost per group (the plain
  ``{family: cost}`` form of ``group_costs`` is ``FlopsModel(0, costs)``).

  Attributes:
    const: the cost no group carries (>= 0).
    linear: ``{family key: cost}``, >= 0: a number per group, or a 1-D
      array, one per group.
    pairwise: ``{(family a, family b): p_ab}``, numbers >= 0.

  Examples:
    >>> import rda_optax
    >>> m = rda_optax.FlopsModel(0, {"a": 2.0}, {("a", "b"): 1.0})
    >>> const, linear, pairwise = m
    >>> pairwise[("a", "b")]
    1.0
  """
  const: Any = 0.0
  linear: Optional[dict] = None
  pairwise: Optional[dict] = None


class PrefixCost(NamedTuple):
  """A :class:`FlopsModel` laid out over ``G`` groups of ``F`` families
  (static numpy, scaled so that keeping every group costs 1): ``lin``
  ``(G,)``, ``family`` ``(G,)`` the family index of each group, ``pairs``
  ``((a, b, p_ab), ...)`` over family indices, ``const``."""
  lin: np.ndarray
  family: np.ndarray
  pairs: tuple
  const: float


def prefix_costs(order: jax.Array, cost: PrefixCost) -> jax.Array:
  r"""``C_m`` for ``m = 0..G``: the cost of keeping the first ``m`` groups
  of ``order`` (float32, shape ``(G + 1,)``).

  The kept counts of every prefix at once: ``n_f(m) = sum_{j < m}
  [family(order_j) = f]``, the cumulative sum of the one-hot family
  membership in ``order`` (a ``G x F`` array of exact integers), then
  ``C_m = c + sum_{j < m} l_{order_j} + sum_{(a,b)} p_ab n_a(m) n_b(m)``.
  The pairs are a static list (a few per network), so each is one
  element-wise product, exact (no matmul at reduced precision).

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from rda_optax._target import PrefixCost, prefix_costs
    >>> c = PrefixCost(np.zeros(3), np.array([0, 0, 1]), ((0, 1, 1.0),), 0.)
    >>> print(prefix_costs(jnp.array([2, 0, 1]), c))
    [0. 0. 1. 2.]
  """
  lin = jnp.asarray(cost.lin, jnp.float32)[order]
  total = jnp.concatenate([jnp.zeros(1, jnp.float32), jnp.cumsum(lin)])
  total = total + jnp.float32(cost.const)
  if cost.pairs:
    n_fam = int(cost.family.max()) + 1
    member = jnp.asarray(cost.family, jnp.int32)[order][:, None] == (
        jnp.arange(n_fam, dtype=jnp.int32))
    counts = jnp.concatenate([jnp.zeros((1, n_fam), jnp.int32), jnp.cumsum(
        member.astype(jnp.int32), axis=0)]).astype(jnp.float32)
    for a, b, p in cost.pairs:
      total = total + jnp.float32(p) * counts[:, a] * counts[:, b]
  return total


def cost_threshold(scores: jax.Array, costs: Any,
                   fraction: Any) -> jax.Array:
  r"""The threshold ``T`` on ``scores`` whose survivors (score ``> T``) cost
  at most ``fraction`` of the total, keeping the highest scores first.

  With the groups in decreasing score order and ``C_m`` the cost of
  keeping the first ``m`` (:func:`prefix_costs`), ``m* = max{m : C_m /
  C_G <= fraction}`` and ``T`` is the score of the first group left out
  (0 when none is): the longest prefix of the score order that fits the
  budget. ``C_m`` never falls as ``m`` grows (every coefficient is >= 0),
  so ``m*`` is the number of prefixes that fit. A score tied at ``T`` goes
  too, so ties only lower the kept cost. One sort of the ``G`` scores and
  cumulative sums (``O(G log G + G F)``; ``G`` is the number of groups,
  e.g. channels, not of weights; ``F`` the families). The sums are in
  float32, so the budget holds up to their rounding (about ``G`` float32
  ulps of 1); ``fraction = 1`` keeps every group exactly.

  Args:
    scores: 1-D, one per group (non-negative; NaN poisons ``T``).
    costs: 1-D numpy, the same length, >= 0, summing to 1 (a linear cost),
      or a :class:`PrefixCost` over the groups (static, total > 0).
    fraction: the budget, in ``(0, 1]`` (traced or not).

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from rda_optax._target import PrefixCost, cost_threshold
    >>> # Two families of 2 groups, cost n_a n_b (a conv between them).
    >>> c = PrefixCost(np.zeros(4), np.array([0, 0, 1, 1]),
    ...                ((0, 1, 0.25),), 0.0)
    >>> s = jnp.array([4.0, 3.0, 2.0, 1.0])
    >>> # Prefixes cost 0, 0, 0, 2/4, 4/4: a budget of 1/2 keeps 3 groups.
    >>> float(cost_threshold(s, c, 0.5))
    1.0
  """
  if not isinstance(costs, PrefixCost):
    costs = PrefixCost(np.asarray(costs), np.zeros(len(costs), np.int32),
                       (), 0.0)
  order = jnp.argsort(-scores, stable=True)
  cum = prefix_costs(order, costs)
  # Divided by its own last entry, the running share ends at exactly 1, so
  # fraction = 1 keeps every group whatever the rounding of the sum.
  kept = jnp.sum(cum[1:] / cum[-1] <= jnp.asarray(fraction, jnp.float32))
  first_out = scores[order][jnp.minimum(kept, scores.shape[0] - 1)]
  t = jnp.where(kept < scores.shape[0], first_out, jnp.float32(0))
  return jnp.where(jnp.any(jnp.isnan(scores)), jnp.nan, t)
