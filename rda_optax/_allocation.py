"""How many weights each leaf keeps at a target sparsity, and which.

Shared by :func:`rda_optax.gmp` and :func:`rda_optax.rigl` (and open to any
method that needs a per-layer budget). Three distributions of a global
target sparsity ``s`` over the penalized leaves (``mask``, the same
convention as ``l1_mask`` of :func:`rda_optax.rda`: default ``ndim >= 2``):

* ``"uniform"``: every leaf at ``s``; leaf ``l`` with ``n_l`` entries keeps
  ``round(n_l (1 - s))``.
* ``"erk"``: Erdos-Renyi-Kernel (Evci et al. 2020, section 3): the density of
  leaf ``l`` is ``eps * sum(shape_l) / prod(shape_l)``, with ``eps`` chosen so
  that the kept counts add up to the global budget ``K = round(N (1 - s))``,
  ``N = sum_l n_l``. A leaf whose density would exceed 1 is made dense and
  ``eps`` is solved again over the others. Counts are then rounded by largest
  remainder, so they sum to ``K`` exactly (not just to within rounding).
* ``"global"``: one magnitude threshold across all penalized leaves; the
  ``K`` largest scores of the concatenated leaves are kept. The per-leaf
  counts depend on the values, so :func:`keep_counts` needs concrete params
  for it, and :func:`global_top_k_masks` does it inside ``jit``.

Ties in a top-k are broken by position (the lower flat index, and for
``"global"`` the earlier leaf in tree order, wins), so masks are
deterministic and keep exactly ``k`` entries.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rda_optax._masks import MaskOrFn, resolve_mask

DISTRIBUTIONS = ("uniform", "erk", "global")
# The target path of the proximal transformations (``rda(...,
# target_sparsity=...)``) also takes ``"magnitude"``: per-leaf counts from
# one global magnitude threshold on the current iterate, recomputed every
# step (``rda_optax._target.magnitude_zero_counts``). ``keep_counts`` and
# the pruning wrappers have no iterate of their own to rank, and their
# ``"global"`` already is that threshold.
TARGET_DISTRIBUTIONS = DISTRIBUTIONS + ("magnitude",)


def _shape(p: Any) -> tuple[int, ...]:
  # np.shape reads .shape, which ShapeDtypeStruct (jax.eval_shape) has too.
  return tuple(int(d) for d in np.shape(p))


def check_target(target: Any, name: str = "target") -> float:
  """Returns ``target`` as a float after checking ``0 <= target <= 1``.

  A Python number or a concrete real scalar (``np.float32(0.9)``,
  ``jnp.float32(0.9)``, a 0-d array, as ``optax.inject_hyperparams``
  passes it outside ``jit``) is accepted.
  """
  value = target
  if isinstance(target, (np.ndarray, np.generic, jax.Array)) and not (
      isinstance(target, jax.core.Tracer)):
    if np.ndim(target) == 0 and (
        jnp.issubdtype(target.dtype, jnp.floating)
        or jnp.issubdtype(target.dtype, jnp.integer)):
      value = float(target)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"{name} must be a float in [0, 1], got {target!r}")
  if not (0.0 <= float(value) <= 1.0):
    raise ValueError(f"{name} must be in [0, 1], got {target!r}")
  return float(value)


def check_distribution(distribution: str,
                       allowed: tuple[str, ...] = DISTRIBUTIONS) -> str:
  if distribution not in allowed:
    raise ValueError(
        f"distribution must be one of {allowed}, got {distribution!r}")
  return distribution


def erk_counts(shapes: list[tuple[int, ...]], target: float) -> list[int]:
  """Kept counts per shape under Erdos-Renyi-Kernel; they sum to ``K``.

  ``K = round(N (1 - target))``. Densities are ``eps * sum(shape) /
  prod(shape)`` (RigL's "ERK", kernel dimensions included), capped at 1: the
  leaf with the largest raw density is made dense and ``eps`` re-solved until
  no density exceeds 1.
  """
  sizes = [math.prod(s) for s in shapes]
  total = sum(sizes)
  budget = int(round(total * (1.0 - target)))
  raw = [sum(s) / n if n else 0.0 for s, n in zip(shapes, sizes)]
  dense: set[int] = set()
  while True:
    free = [i for i in range(len(shapes)) if i not in dense and sizes[i]]
    rest = budget - sum(sizes[i] for i in dense)
    divisor = sum(raw[i] * sizes[i] for i in free)
    eps = rest / divisor if divisor > 0 else 0.0
    over = [i for i in free if eps * raw[i] > 1.0]
    if not over:
      break
    # Only the largest raw density is capped per round (as in RigL's code):
    # capping it lowers eps's numerator less than its divisor, so eps rises
    # and others may need capping in turn.
    top = max(raw[i] for i in over)
    dense.update(i for i in free if raw[i] == top)
  exact = [float(sizes[i]) if i in dense else eps * raw[i] * sizes[i]
           for i in range(len(shapes))]
  counts = [min(int(math.floor(x)), n) for x, n in zip(exact, sizes)]
  short = budget - sum(counts)
  # Largest remainder, ties by leaf order, never above a leaf's size.
  order = sorted(range(len(shapes)), key=lambda i: (-(exact[i] - counts[i]), i))
  for i in order:
    if short <= 0:
      break
    if counts[i] < sizes[i]:
      counts[i] += 1
      short -= 1
  return counts


def keep_counts(params: Any, target: float, distribution: str = "uniform",
                mask: MaskOrFn = None) -> Any:
  """Number of entries each leaf keeps at the global ``target`` sparsity.

  Args:
    params: pytree of arrays (or ``jax.ShapeDtypeStruct`` for ``"uniform"``
      and ``"erk"``, which need only shapes).
    target: fraction of the penalized entries to prune, in ``[0, 1]``.
    distribution: ``"uniform"``, ``"erk"`` or ``"global"`` (module docstring).
    mask: which leaves are pruned: pytree of bools or callable of the params;
      default :func:`rda_optax.default_l1_mask` (``ndim >= 2``).

  Returns:
    A pytree like ``params`` of Python ints; unpenalized leaves keep all
    their entries.

  Examples:
    >>> import jax.numpy as jnp, rda_optax
    >>> params = {"w": jnp.ones((10, 10)), "b": jnp.ones(10)}
    >>> rda_optax.keep_counts(params, 0.9)
    {'b': 10, 'w': 10}
  """
  target = check_target(target)
  check_distribution(distribution)
  sel = resolve_mask(mask, params, name="mask")
  leaves, treedef = jax.tree.flatten(params)
  flags = treedef.flatten_up_to(sel)
  shapes = [_shape(p) for p in leaves]
  counts = [math.prod(s) for s in shapes]
  idx = [i for i, f in enumerate(flags) if f]
  if distribution == "uniform":
    for i in idx:
      counts[i] = int(round(counts[i] * (1.0 - target)))
  elif distribution == "erk":
    for i, c in zip(idx, erk_counts([shapes[i] for i in idx], target)):
      counts[i] = c
  else:
    n = sum(counts[i] for i in idx)
    k = int(round(n * (1.0 - target)))
    masks = global_top_k_masks(
        [jnp.abs(jnp.asarray(leaves[i])) for i in idx], k)
    for i, m in zip(idx, masks):
      counts[i] = int(np.sum(np.asarray(m)))
  return jax.tree.unflatten(treedef, counts)


def sparsity_allocation(params: Any, target: float,
                        distribution: str = "uniform",
                        mask: MaskOrFn = None) -> Any:
  """Per-leaf sparsity ``1 - k_l / n_l`` for :func:`keep_counts`'s ``k_l``.

  ``round(n_l * (1 - s_l))`` gives back ``k_l`` exactly, so these floats can
  be handed to anything that rounds per leaf. Unpenalized leaves get 0.0.

  Examples:
    >>> import jax.numpy as jnp, rda_optax
    >>> params = {"conv": jnp.ones((3, 3, 64, 64)), "fc": jnp.ones((64, 10))}
    >>> s = rda_optax.sparsity_allocation(params, 0.9, "erk")
    >>> bool(s["fc"] < 0.9 < s["conv"])  # the small classifier stays denser
    True
  """
  counts = keep_counts(params, target, distribution, mask)
  return jax.tree.map(lambda p, k: 1.0 - k / max(math.prod(_shape(p)), 1),
                      params, counts)


def top_k_mask(scores: jax.Array, k: Any) -> jax.Array:
  """Boolean mask of the ``k`` largest entries of ``scores`` (any shape).

  Exactly ``min(k, size)`` entries are ``True``; among equal scores the lower
  flat index wins; NaN scores rank last. ``k`` may be traced (the mask is
  built from ranks, not ``lax.top_k``, whose ``k`` must be static).

  Examples:
    >>> import jax.numpy as jnp, rda_optax
    >>> rda_optax.top_k_mask(jnp.array([1., 3., 3., 0.]), 2)
    Array([False,  True,  True, False], dtype=bool)
  """
  flat = jnp.ravel(scores)
  order = jnp.argsort(-flat, stable=True)
  rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(
      jnp.arange(flat.size, dtype=jnp.int32))
  return (rank < k).reshape(jnp.shape(scores))


def global_top_k_masks(scores: list[jax.Array], k: Any) -> list[jax.Array]:
  """The ``k`` largest entries across a list of arrays, as one mask each.

  One threshold for all: the arrays are flattened and concatenated (in list
  order), :func:`top_k_mask` is taken, and the result split back. Jittable;
  ``k`` may be traced.
  """
  if not scores:
    return []
  flat = jnp.concatenate([jnp.ravel(s).astype(jnp.float32) for s in scores])
  keep = top_k_mask(flat, k)
  out, start = [], 0
  for s in scores:
    n = int(np.prod(jnp.shape(s)))
    out.append(keep[start:start + n].reshape(jnp.shape(s)))
    start += n
  return out


def leaf_flags(params: Any, mask: MaskOrFn) -> list[bool]:
  """``mask`` resolved and flattened in the params' leaf order."""
  sel = resolve_mask(mask, params, name="mask")
  return jax.tree.structure(params).flatten_up_to(sel)
