"""One proximal interface for every transformation of the package.

The penalties of the library are the element-wise l1 norm on the leaves
selected by ``l1_mask``, the (weighted) group l2,1 norm of a group-spec tree,
and their sum, the sparse group lasso. :class:`Prox` holds one of them, with
its strengths, laid out over the leaves of the params; calling it applies
the proximal map with a threshold scale per leaf (a step size, ``alpha_t``,
``tau_n``) or per coordinate (a diagonal metric, as Adam's). ``rda``,
``prox_sgd``, ``rmda``, ``grda`` and ``prox_adam`` all threshold through it,
so a new penalty is one change here.

The penalty arguments the proximal transformations share (``l1``,
``groups``, ``group_l1`` and the target-sparsity ones), their checks and the
step-by-step plumbing of a target (``lambda_t`` chosen from an order
statistic) live here too, in :class:`Penalty`, so each transformation only
says what its threshold acts on.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rda_optax import _allocation
from rda_optax import _common
from rda_optax import _target
from rda_optax._common import at_step, guard
from rda_optax._group import (GroupsOrFn, check_group_args, group_counts,
                              group_scores, prox_leaves, resolve_groups)
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

  def __call__(self, leaves: Sequence[Any], scale: Any = None,
               keep: Optional[dict] = None) -> list:
    """The proximal map of the leaves (all of them, in leaf order).

    ``scale``: ``None`` (1), a scalar, or a list with per leaf a scalar or
    an array broadcastable to the leaf. ``keep``: ``{family: bool per
    group}``, which groups survive, when a target decided it (see
    ``rda_optax._group.prox_leaves``).
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
                       list(scale) if per_leaf else None, keep)


def check_penalty(l1: Any, groups: GroupsOrFn, group_l1: Any,
                  target_sparsity: Any, who: str, l1_name: str = "l1",
                  target_flops: Any = None, group_costs: Any = None) -> None:
  """The checks every proximal transformation makes on its penalty."""
  if target_sparsity is None:
    if l1 is None:
      raise ValueError(
          f"{who}: {l1_name} is None; pass {l1_name}, or target_sparsity")
  elif l1 is not None:
    raise ValueError(f"{who}: pass {l1_name}=None with target_sparsity: the "
                     "threshold is then chosen to reach the target")
  _common.check_hyper(l1_name, l1, positive=False)
  if target_flops is None:
    check_group_args(groups, group_l1)
    if group_costs is not None:
      raise ValueError(f"{who}: group_costs is read only with target_flops")
  else:
    check_flops_args(groups, group_l1, target_flops, group_costs, who)
  if groups is not None and target_sparsity is not None:
    # The target picks lambda_t from element-wise scores; a group threshold
    # would then zero other entries than the ones it counted.
    raise ValueError(f"{who}: groups and target_sparsity cannot be combined")


def check_flops_args(groups: GroupsOrFn, group_l1: Any, target_flops: Any,
                     group_costs: Any, who: str) -> None:
  """``target_flops`` in ``(0, 1]`` (when concrete), with ``groups``, without
  ``group_l1``, and ``group_costs`` a dict of finite costs >= 0 (a number
  per family, or one per group; lengths are checked against the params at
  ``init``)."""
  if groups is None:
    raise ValueError(f"{who}: target_flops needs groups= (e.g. "
                     "rda_optax.channel_groups) and group_costs=")
  if group_l1 is not None:
    raise ValueError(f"{who}: pass group_l1=None with target_flops: the "
                     "group strength is then chosen to reach the target")
  if not callable(target_flops) and not _common.is_tracer(target_flops):
    try:
      f = float(np.asarray(target_flops, np.float64))
    except (TypeError, ValueError):
      f = math.nan
    if not 0 < f <= 1:
      raise ValueError(f"target_flops must be in (0, 1], got {target_flops!r}")
  if isinstance(group_costs, _target.FlopsModel):
    check_flops_model(group_costs)
    return
  if not isinstance(group_costs, dict) or not group_costs:
    raise ValueError(f"{who}: target_flops needs group_costs, a dict "
                     "{family key: cost per group} or a "
                     "rda_optax.FlopsModel, got "
                     f"{type(group_costs).__name__}")
  check_linear_costs(group_costs, "group_costs")


def check_linear_costs(costs: dict, name: str) -> None:
  """Each cost a finite number >= 0 or a 1-D array of them."""
  for key, c in costs.items():
    a = _floats(c)
    if a.ndim > 1 or a.size == 0 or not np.all(np.isfinite(a)) or np.any(
        a < 0):
      raise ValueError(f"{name}[{key!r}] must be a finite cost >= 0 or "
                       f"a 1-D array of them, got {c!r}")


def check_flops_model(m: Any) -> None:
  """A :class:`rda_optax.FlopsModel`'s coefficients: finite and >= 0 (so
  the cost never falls as a group is kept, which the prefix rule needs),
  pairs keyed by 2-tuples of families."""
  const = _floats(m.const)
  if const.ndim or not np.isfinite(const) or const < 0:
    raise ValueError(f"group_costs: FlopsModel.const must be a finite "
                     f"number >= 0, got {m.const!r}")
  check_linear_costs(dict(m.linear or {}), "group_costs.linear")
  for key, c in dict(m.pairwise or {}).items():
    a = _floats(c)
    if not (isinstance(key, tuple) and len(key) == 2) or a.ndim or not (
        np.isfinite(a) and a >= 0):
      raise ValueError("group_costs.pairwise: keys (family a, family b), "
                       f"values finite numbers >= 0; got {key!r}: {c!r}")


def _floats(c: Any) -> np.ndarray:
  try:
    return np.asarray(c, np.float64)
  except (TypeError, ValueError):
    return np.asarray(math.nan)


def check_target_args(target_sparsity: Any, sparsity_distribution: str,
                      threshold_every: Any, threshold_samples: Any) -> None:
  """Concrete values are checked; traced ones are guarded at each step."""
  if target_sparsity is None:
    return
  if not callable(target_sparsity) and not _common.is_tracer(
      target_sparsity):
    _allocation.check_target(target_sparsity, "target_sparsity")
  _allocation.check_distribution(sparsity_distribution,
                                 _allocation.TARGET_DISTRIBUTIONS)
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
                   every: Any, samples: Any,
                   weights: Optional[list] = None) -> list:
  """Per penalized leaf, the ``lambda_t`` that zeros the target's share of
  ``scores`` (an entry is zero exactly when its score is ``<= lambda_t``),
  recomputed every ``every`` steps and ``held`` in between. ``weights``:
  per score, the current iterate's leaf, which ``"magnitude"`` ranks."""

  def choose():
    s_t = at_step(target_sparsity, count)
    s_t = guard(s_t, (s_t >= 0) & (s_t <= 1))
    # A Python target gives exact Python counts; an array (a schedule's or
    # an injected value) the same counts from jnp arithmetic.
    target = (target_sparsity if isinstance(target_sparsity, (int, float))
              else s_t)
    lams = _target.thresholds(scores, target, distribution,
                              static_samples(samples), weights)
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


def _per_group(c: Any, key: str, n: int) -> np.ndarray:
  """A family's linear cost as one float64 per group."""
  c = np.asarray(c, np.float64)
  if c.ndim == 1 and c.shape[0] != n:
    raise ValueError(f"group_costs[{key!r}]: {c.shape[0]} costs for "
                     f"{n} groups")
  return np.broadcast_to(c, (n,))


def lambda_state(params: Any, flags: Sequence[bool]) -> Any:
  """The per-leaf ``lambda_t`` of a target-sparsity state: float32 scalars
  on the penalized leaves, ``optax.MaskedNode`` elsewhere."""
  treedef = jax.tree.structure(params)
  return jax.tree.unflatten(treedef, [
      jnp.zeros([], jnp.float32) if f else optax.MaskedNode()
      for f in flags])


class Penalty(NamedTuple):
  r"""The penalty arguments of a proximal transformation, checked, and the
  plumbing every one of them repeats.

  ``rda``, ``rmda``, ``grda`` and ``prox_adam`` each take ``l1`` (or
  ``target_sparsity``, which chooses it), ``l1_mask``, ``groups`` and
  ``group_l1``. Each step they need the :class:`Prox` at the step's
  strengths (:meth:`at`) and, with a target, the thresholds that zero the
  target's share of the penalized entries (:meth:`targeted`). What differs
  between them is only what the threshold acts on (the argument ``z`` of
  the prox) and in which units the threshold is counted, which the caller
  passes.

  Attributes:
    who: the transformation's name, for error messages.
    l1, l1_mask, groups, group_l1, target_sparsity: as the transformation
      was given them.
    distribution, every, samples: ``sparsity_distribution``,
      ``threshold_every`` and ``threshold_samples``.
    target_flops, group_costs: the cost target of the group term (see
      :meth:`group_prox`), or ``None``.
  """
  who: str
  l1: Any
  l1_mask: MaskOrFn
  groups: GroupsOrFn
  group_l1: Any
  target_sparsity: Any
  distribution: str
  every: Any
  samples: Any
  target_flops: Any = None
  group_costs: Any = None

  @classmethod
  def checked(cls, who: str, l1: Any, l1_mask: MaskOrFn, groups: GroupsOrFn,
              group_l1: Any, target_sparsity: Any, distribution: str,
              every: Any, samples: Any, target_flops: Any = None,
              group_costs: Any = None) -> "Penalty":
    """Checks the arguments (``ValueError`` naming the bad one)."""
    check_penalty(l1, groups, group_l1, target_sparsity, who,
                  target_flops=target_flops, group_costs=group_costs)
    check_target_args(target_sparsity, distribution, every, samples)
    return cls(who, l1, l1_mask, groups, group_l1, target_sparsity,
               distribution, every, samples, target_flops, group_costs)

  def layout(self, params: Any) -> Prox:
    """The penalty's layout over ``params``: masks and specs resolved (bad
    specs, and costs that do not fit them, fail here, at ``init``, not
    mid-training); zero strengths."""
    prox = Prox.of(params, l1_mask=self.l1_mask, groups=self.groups,
                   group_l1=None if self.groups is None else 0.0)
    if self.target_flops is not None:
      leaves = jax.tree.structure(params).flatten_up_to(params)
      self.prefix_cost(group_counts(leaves, list(prox.specs)), prox.specs)
    return prox

  def prefix_cost(self, counts: dict, specs: Sequence[Any]
                  ) -> _target.PrefixCost:
    """``group_costs`` laid out over the groups of every family (in
    ``counts``' order) and scaled so that keeping every group costs 1
    (``rda_optax._target.PrefixCost``); ``ValueError`` where the costs do
    not fit the families."""
    model = self.group_costs
    if not isinstance(model, _target.FlopsModel):
      model = _target.FlopsModel(0.0, model, {})
    linear, pairwise = dict(model.linear or {}), dict(model.pairwise or {})
    named = set(linear) | {f for pair in pairwise for f in pair}
    extra = sorted(map(str, named - set(counts)))
    missing = [k for k in counts if k not in named]
    if extra or missing:
      raise ValueError(
          f"group_costs: keys must be the group families {list(counts)}; "
          + (f"missing {missing}" if missing else f"unknown {extra}"))
    for s in specs:
      if s is not None and s.weight == 0:
        raise ValueError(f"target_flops: family {s.key!r} has weight 0 (no "
                         "threshold), so its channels cannot be chosen; "
                         "leave it out of groups")
    lin = np.concatenate([_per_group(linear.get(k, 0.0), k, n)
                          for k, n in counts.items()])
    index = {k: i for i, k in enumerate(counts)}
    family = np.repeat(np.arange(len(counts)), list(counts.values()))
    pairs = tuple((index[a], index[b], float(p))
                  for (a, b), p in pairwise.items() if p)
    full = float(model.const) + lin.sum() + sum(
        p * counts[a] * counts[b] for (a, b), p in pairwise.items())
    if not full > 0:
      raise ValueError("group_costs: the total cost must be > 0")
    return _target.PrefixCost(lin / full, family,
                              tuple((a, b, p / full) for a, b, p in pairs),
                              float(model.const) / full)

  def init_lambda(self, params: Any) -> Any:
    """The ``lambda_t`` field of a fresh state: ``()`` without a target."""
    if self.target_sparsity is None:
      return ()
    return lambda_state(params, self.layout(params).l1_flags)

  def start(self, params: Any, count: jax.Array) -> tuple[Any, Prox]:
    """What every ``update`` begins with: the checks on the params it was
    given (passed, since the closed forms read them, and real floating
    point), their treedef, and the :class:`Prox` at step ``count``."""
    if params is None:
      raise ValueError(_common.NO_PARAMS_MSG)
    _common.check_float_params(params, self.who)
    return jax.tree.structure(params), self.at(params, count)

  def at(self, params: Any, count: jax.Array) -> Prox:
    """The :class:`Prox` at step ``count``, its strengths guarded (a
    negative traced one is NaN). With a target, ``l1`` is 0 here: the
    thresholds then come from :meth:`targeted`."""
    lam = at_step(0.0 if self.l1 is None else self.l1, count)
    lam = guard(lam, lam >= 0)
    glam = None
    if self.target_flops is not None:
      glam = 0.0  # chosen in group_prox
    elif self.groups is not None:
      glam = at_step(self.group_l1, count)
      glam = guard(glam, glam >= 0)
    return Prox.of(params, lam, l1_mask=self.l1_mask, groups=self.groups,
                   group_l1=glam)

  def group_prox(self, prox: Prox, leaves: Sequence[Any], scale: Any,
                 count: jax.Array) -> list:
    r"""``prox(leaves, scale)``; with ``target_flops``, at the group
    strength that keeps the target's share of the groups' cost.

    Each group ``g`` has a score ``r_g = ||S(z)_g|| / (w_g sqrt(|g|) s_g)``
    (``rda_optax._group.group_scores``: the strength at which this prox
    zeros it), and the strength is

    .. math::
      \tau_t = r_{(m^*)}, \quad m^* = \max\{m : \textstyle\sum_{j < m}
      c_{(j)} \le F_t \sum_g c_g\},

    with the groups in decreasing score order: the longest run of the
    highest scores whose cost ``c`` (``group_costs``) fits ``F_t``. The
    groups above ``tau_t`` survive unshrunk and the others are zero: the
    projection onto the budget, not the group prox at ``tau_t``. Shrinking
    the survivors by ``tau_t`` (the first version) left them near 0,
    because a layer's channel norms are close to each other: on CIFAR-10
    the small CNN's loss stayed at ``ln 10`` for a whole epoch and on
    digits its validation top-1 at 8% until the target was lifted. The
    element-wise ``l1`` of a sparse-group penalty still shrinks. As with
    ``target_sparsity``, there is no controller and no lag.
    """
    if self.target_flops is None:
      return prox(leaves, scale)
    f_t = jnp.asarray(at_step(self.target_flops, count), jnp.float32)
    f_t = guard(f_t, (f_t > 0) & (f_t <= 1))
    flags, specs = list(prox.l1_flags), list(prox.specs)
    if isinstance(scale, (list, tuple)) or scale is None:
      scores = group_scores(list(leaves), specs, flags, prox.l1, scale)
    else:
      # A scalar scale multiplies both thresholds (Prox.__call__).
      scores = {k: r / scale for k, r in group_scores(
          list(leaves), specs, flags, prox.l1 * scale).items()}
    costs = self.prefix_cost({k: r.shape[0] for k, r in scores.items()},
                             specs)
    tau = _target.cost_threshold(
        jnp.concatenate([r.astype(jnp.float32) for r in scores.values()]),
        costs, f_t)
    keep = {k: ~(r <= tau.astype(r.dtype)) for k, r in scores.items()}
    return prox._replace(group_l1=0.0)(leaves, scale, keep=keep)

  def targeted(self, zs: Sequence[Any], flags: Sequence[bool],
               lambda_t: Any, treedef: Any, count: jax.Array, *,
               scales: Optional[Sequence[Any]] = None,
               unit: Any = None,
               weights: Optional[Sequence[Any]] = None) -> tuple[list, Any]:
    r"""The target's thresholds applied: ``(outs, lambda_t)``.

    ``zs`` holds, per leaf, the argument of the prox (anything on the
    leaves whose flag is false: it is passed through as is). A penalized
    entry is zero exactly when its score ``|z| / s <= lambda`` (``s``: its
    entry of ``scales``, 1 without), so ``lambda`` is chosen as the order
    statistic of those scores (:func:`target_lambdas`), and the penalized
    leaves come back as ``S_{lambda s}(z)``, with a zero wherever the score
    is at most ``lambda`` (so the zeros are exactly the counted ones, even
    where ``lambda s`` rounds below ``|z|``). ``unit``: a scalar by which
    the stored ``lambda_t`` is divided (and the held one multiplied), for a
    transformation whose threshold is ``unit * lambda`` (rmda's
    ``alpha_k``). ``lambda_t``: the state's field, of the last step; the
    returned one has the same structure. ``treedef``: the params'
    structure (a ``MaskedNode`` is an empty node, not a leaf, of its own).
    ``weights``: per leaf, the current iterate (the ``params`` given to
    ``update``), needed by ``sparsity_distribution="magnitude"``: its
    per-leaf counts are those of one global threshold on ``|weights|``
    over the penalized leaves, and each leaf's ``lambda`` is then the
    order statistic of its own scores at its count.
    """
    if self.distribution == "magnitude" and weights is None:
      raise ValueError(f"{self.who}: sparsity_distribution='magnitude' "
                       "ranks the current params; none were passed")
    old = [l for l, f in zip(treedef.flatten_up_to(lambda_t), flags) if f]
    if unit is not None:
      old = [l * unit for l in old]
    sel = [i for i, f in enumerate(flags) if f]
    if scales is None:
      scores = [jnp.abs(zs[i]) for i in sel]
    else:
      # Scores in units of lambda: |z| / s <= lambda_t is exactly a zero.
      scores = [jnp.abs(zs[i]) / scales[i] for i in sel]
    ranked = None if weights is None else [weights[i] for i in sel]
    lams = target_lambdas(scores, old, count, self.target_sparsity,
                          self.distribution, self.every, self.samples,
                          ranked)
    outs, lambdas = list(zs), [optax.MaskedNode()] * len(flags)
    for i, score, lam in zip(sel, scores, lams):
      z = zs[i]
      one = Prox((True,), (None,), lam.astype(z.dtype))
      if scales is None:
        outs[i] = one([z])[0]
      else:
        shrunk = one([z], [scales[i]])[0]
        outs[i] = jnp.where(score <= lam.astype(z.dtype), jnp.zeros_like(z),
                            shrunk)
      lambdas[i] = lam if unit is None else lam / unit
    return outs, jax.tree.unflatten(treedef, lambdas)
