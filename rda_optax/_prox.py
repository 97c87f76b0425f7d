"""One proximal interface for every transformation of the package.

The penalties of the library are the element-wise l1 norm on the leaves
selected by ``l1_mask``, the (weighted) group l2,1 norm of a group-spec tree,
and their sum, the sparse group lasso. :class:`Prox` holds one of them, with
its strengths, laid out over the leaves of the params; calling it applies
the proximal map with a threshold scale per leaf (a step size, ``alpha_t``,
``tau_n``) or per coordinate (a diagonal metric, as Adam's). ``rda``,
``prox_sgd``, ``rmda``, ``grda`` and ``prox_adam`` all threshold through it,
so a new penalty is one change here.

The target-sparsity machinery shared by the methods whose threshold is one
``lambda`` lives here too (:func:`target_lambdas`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from rda_optax import _allocation
from rda_optax import _common
from rda_optax import _target
from rda_optax._common import at_step, guard
from rda_optax._group import (GroupsOrFn, check_group_args, prox_leaves,
                              resolve_groups)
from rda_optax._masks import MaskOrFn, resolve_mask


class Prox(NamedTuple):
  r"""A penalty over the leaves of the params, and its proximal map.

  .. math::
    R(w) = \ell_1 \sum_{l \in M} \|w_l\|_1
         + \ell_G \sum_g w_g \sqrt{|g|}\, \|w_g\|_2 ,

  with ``M`` the leaves where ``l1_flags`` is true and the groups given by
  ``specs`` (a :class:`rda_optax.GroupSpec` or ``None`` per leaf; ``w_g`` its
  weight). ``group_l1=None`` is the plain l1 penalty (one soft threshold
  per coordinate), ``l1=0`` with groups the group lasso, both the sparse
  group lasso. Calling it on a list of leaves ``z`` with ``scale = s``
  returns

  .. math::
    \mathrm{prox}(z) = \arg\min_w \sum_i \frac{(w_i - z_i)^2}{2 s_i} + R(w),

  i.e. the thresholds ``s l1`` and ``s l_G w_g sqrt(|g|)``: ``s`` is a
  step size (prox-SGD's ``alpha``) or, per coordinate, the inverse of a
  diagonal metric (Adam's ``alpha / (sqrt(v) + eps)``). The group term is
  exact where ``s`` is constant over each group. Zeros are exact ``+0.0``
  and NaN stays NaN (see :func:`rda_optax.soft_threshold`).

  Attributes:
    l1_flags: per leaf, whether it carries the element-wise term.
    specs: per leaf, its :class:`rda_optax.GroupSpec` or ``None``.
    l1: element-wise strength, >= 0 (a scalar, possibly traced).
    group_l1: group strength, >= 0, or ``None`` (no group term).

  Examples:
    >>> import jax.numpy as jnp
    >>> import rda_optax
    >>> params = {"w": jnp.array([[3.0, 0.1], [0.5, 0.1]]),
    ...           "b": jnp.array([0.5, -0.5])}
    >>> prox = rda_optax.Prox.of(params, l1=1.0)  # l1 on ndim >= 2 only
    >>> prox.kind
    'l1'
    >>> b, w = prox([params["b"], params["w"]], scale=0.5)
    >>> print(w, b)
    [[2.5 0. ]
     [0.  0. ]] [ 0.5 -0.5]
    >>> sg = rda_optax.Prox.of(params, l1=1.0, groups={
    ...     "w": rda_optax.GroupSpec("w"), "b": None}, group_l1=1.0)
    >>> sg.kind
    'sparse_group'
  """
  l1_flags: tuple
  specs: tuple
  l1: Any = 0.0
  group_l1: Any = None

  @classmethod
  def of(cls, params: Any, l1: Any = 0.0, *, l1_mask: MaskOrFn = None,
         groups: GroupsOrFn = None, group_l1: Any = None) -> "Prox":
    """The penalty laid out over ``params`` (masks and specs resolved)."""
    treedef = jax.tree.structure(params)
    flags = tuple(treedef.flatten_up_to(resolve_mask(l1_mask, params)))
    specs = (tuple(resolve_groups(groups, params)) if groups is not None
             else (None,) * treedef.num_leaves)
    return cls(flags, specs, l1, group_l1)

  @property
  def kind(self) -> str:
    """``"l1"``, ``"group"``, ``"sparse_group"`` or ``"none"``."""
    grouped = self.group_l1 is not None and any(
        s is not None for s in self.specs)
    if not grouped:
      return "l1" if any(self.l1_flags) else "none"
    return "sparse_group" if any(self.l1_flags) else "group"

  def penalized(self, i: int) -> bool:
    """Whether leaf ``i`` takes any threshold."""
    return bool(self.l1_flags[i]) or (
        self.group_l1 is not None and self.specs[i] is not None)

  def __call__(self, leaves: Sequence[Any], scale: Any = None) -> list:
    """The proximal map of the leaves (all of them, in leaf order).

    ``scale``: ``None`` (1), a scalar, or a list with per leaf a scalar or
    an array broadcastable to the leaf.
    """
    leaves = list(leaves)
    per_leaf = isinstance(scale, (list, tuple))
    glam = 0.0 if self.group_l1 is None else self.group_l1
    specs = list(self.specs) if self.group_l1 is not None else [None] * len(
        leaves)
    if scale is None or per_leaf:
      l1, tau = self.l1, glam
    else:
      l1, tau = self.l1 * scale, glam * scale
    return prox_leaves(leaves, specs, list(self.l1_flags), l1, tau,
                       list(scale) if per_leaf else None)


def check_penalty(l1: Any, groups: GroupsOrFn, group_l1: Any,
                  target_sparsity: Any, who: str, l1_name: str = "l1") -> None:
  """The checks every proximal transformation makes on its penalty."""
  if target_sparsity is None:
    if l1 is None:
      raise ValueError(
          f"{who}: {l1_name} is None; pass {l1_name}, or target_sparsity")
  elif l1 is not None:
    raise ValueError(f"{who}: pass {l1_name}=None with target_sparsity: the "
                     "threshold is then chosen to reach the target")
  _common.check_hyper(l1_name, l1, positive=False)
  check_group_args(groups, group_l1)
  if groups is not None and target_sparsity is not None:
    # The target picks lambda_t from element-wise scores; a group threshold
    # would then zero other entries than the ones it counted.
    raise ValueError(f"{who}: groups and target_sparsity cannot be combined")


def check_target_args(target_sparsity: Any, sparsity_distribution: str,
                      threshold_every: Any, threshold_samples: Any) -> None:
  """Concrete values are checked; traced ones are guarded at each step."""
  if target_sparsity is None:
    return
  if not callable(target_sparsity) and not _common.is_tracer(
      target_sparsity):
    _allocation.check_target(target_sparsity, "target_sparsity")
  _allocation.check_distribution(sparsity_distribution)
  check_count("threshold_every", threshold_every)
  if threshold_samples is not None:
    check_count("threshold_samples", threshold_samples)


def check_count(name: str, v: Any) -> None:
  """An int >= 1: a Python int, or a concrete integer array (as
  ``optax.inject_hyperparams`` passes it); a traced one is not checked."""
  _common.check_int(name, v, 1)


def static_samples(threshold_samples: Any) -> Optional[int]:
  """``threshold_samples`` as a Python int: it sets a gather's shape."""
  if threshold_samples is None or isinstance(threshold_samples, int):
    return threshold_samples
  if _common.is_tracer(threshold_samples):
    raise ValueError(
        "threshold_samples sets a sample size (a shape) and cannot be "
        "traced: name it in optax.inject_hyperparams(static_args=...)")
  return int(threshold_samples)


def target_lambdas(scores: list, held: list, count: jax.Array,
                   target_sparsity: Any, distribution: str,
                   every: Any, samples: Any) -> list:
  """Per penalized leaf, the ``lambda_t`` that zeros the target's share of
  ``scores`` (an entry is zero exactly when its score is ``<= lambda_t``),
  recomputed every ``every`` steps and ``held`` in between."""

  def choose():
    s_t = at_step(target_sparsity, count)
    s_t = guard(s_t, (s_t >= 0) & (s_t <= 1))
    # A Python target gives exact Python counts; an array (a schedule's or
    # an injected value) the same counts from jnp arithmetic.
    target = (target_sparsity if isinstance(target_sparsity, (int, float))
              else s_t)
    lams = _target.thresholds(scores, target, distribution,
                              static_samples(samples))
    # A NaN target (guarded above) poisons lambda, hence the iterate.
    return [jnp.where(jnp.isnan(s_t), jnp.nan, l) for l in lams]

  if not scores:
    return []
  if isinstance(every, int) and every == 1:
    return choose()
  every = jnp.asarray(every, jnp.int32)
  lams = jax.lax.cond(count % jnp.maximum(every, 1) == 0, choose,
                      lambda: list(held))
  return [guard(l, every >= 1) for l in lams]


def lambda_state(params: Any, flags: Sequence[bool]) -> Any:
  """The per-leaf ``lambda_t`` of a target-sparsity state: float32 scalars
  on the penalized leaves, ``optax.MaskedNode`` elsewhere."""
  treedef = jax.tree.structure(params)
  return jax.tree.unflatten(treedef, [
      jnp.zeros([], jnp.float32) if f else optax.MaskedNode()
      for f in flags])
