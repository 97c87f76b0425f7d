"""Group soft thresholds: the proximal maps of the group lasso and the sparse
group lasso, and the channel groups of the models in ``models/``.

He et al. (2020) penalize single weights. Replacing the element-wise soft
threshold (10) by a group one zeroes whole groups, e.g. every weight of an
output channel, which is what makes a network physically smaller (see
``models.slim``). The dual-averaging argument of criterion (18) carries over
group by group: the group threshold acts on the averaged gradient and does
not decay.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from rda_optax._common import check_hyper
from rda_optax._masks import MaskOrFn, resolve_mask
from rda_optax._soft_threshold import shrink
from rda_optax._units import ChannelUnit
from rda_optax._units import path_name
from rda_optax._units import sibling
from rda_optax._units import units_by_name


@dataclasses.dataclass(frozen=True)
class GroupSpec:
  """Puts a leaf's entries into the groups of the family ``key``.

  Group ``i`` of a family holds, from every leaf labelled with that ``key``,
  the slice ``i`` along the leaf's ``axis``; so all leaves of a family must
  have the same length along their axes. ``axis=None`` puts the whole leaf
  into one group (the family then has one group).

  ``weight`` multiplies the family's threshold, ``lambda_g = tau weight
  sqrt(|g|)``; every leaf of a family must give the same weight (>= 0).

  Not a pytree node: a spec is a leaf of the group-spec tree, which has the
  structure of the params with a ``GroupSpec`` or ``None`` (no group) at
  each leaf.
  """
  key: str
  axis: Optional[int] = -1
  weight: float = 1.0


GroupsOrFn = Union[Any, Callable[[Any], Any]]


def group_norms(tree: Any, groups: GroupsOrFn) -> dict[str, jax.Array]:
  r"""The Euclidean norm of every group, ``{key: ||z_g||}`` per family.

  Each value is a 1-D array with one entry per group of the family.

  Examples:
    >>> import jax.numpy as jnp
    >>> import rda_optax
    >>> w = jnp.array([[3.0, 0.0], [4.0, 1.0]])
    >>> rda_optax.group_norms(w, rda_optax.GroupSpec("w"))  # columns
    {'w': Array([5., 1.], dtype=float32)}
  """
  specs = resolve_groups(groups, tree)
  return {k: jnp.sqrt(v)
          for k, v in _sumsq(jax.tree.leaves(tree), specs).items()}


def group_sizes(tree: Any, groups: GroupsOrFn) -> dict[str, int]:
  """The number of scalars ``|g|`` in each group, ``{key: |g|}`` (static).

  Examples:
    >>> import jax.numpy as jnp
    >>> import rda_optax
    >>> tree = {"kernel": jnp.ones((3, 3, 8, 16)), "scale": jnp.ones(16)}
    >>> spec = {"kernel": rda_optax.GroupSpec("c"),
    ...         "scale": rda_optax.GroupSpec("c")}
    >>> rda_optax.group_sizes(tree, spec)  # 3 * 3 * 8 + 1 per channel
    {'c': 73}
  """
  return _sizes(jax.tree.leaves(tree), resolve_groups(groups, tree))


def _sizes(leaves, specs):
  sizes: dict[str, int] = {}
  for x, spec in zip(leaves, specs):
    if spec is not None:
      n = _count(x, spec)
      sizes[spec.key] = sizes.get(spec.key, 0) + math.prod(jnp.shape(x)) // n
  return sizes


def group_soft_threshold(tree: Any, groups: GroupsOrFn,
                         tau: jax.Array | float) -> Any:
  r"""Group soft threshold: the proximal map of the weighted l2,1 norm.

  For every group ``g`` (see :class:`GroupSpec`) with ``|g|`` scalars,

  .. math::
    T_\tau(z)_g = z_g \max\Big(0,\ 1 - \frac{\lambda_g}{\|z_g\|_2}\Big),
    \qquad \lambda_g = \tau\, w_g \sqrt{|g|},

  which is ``argmin_w (1/2)||w - z||^2 + sum_g lambda_g ||w_g||_2``
  (``w_g``: the family's :attr:`GroupSpec.weight`, default 1). The
  ``sqrt(|g|)`` scaling (Yuan & Lin, 2006) makes the threshold of a group of
  ``|g|`` entries of typical size ``tau`` equal to its norm, so groups of
  different sizes (a 3x3x512 kernel column vs a 3x3x3 one) are thresholded
  alike; ``w_g = 1 / sqrt(|g|)`` undoes it (``channel_groups(...,
  weighting="uniform")``). A group is zero exactly when ``||z_g|| <=
  lambda_g`` (the group form of criterion (18)); zeros are exact ``+0.0``.
  A group of zeros gives zeros (never NaN); a NaN in a group makes the
  whole group NaN. Leaves whose spec is ``None`` are returned unchanged
  (no penalty).

  Args:
    tree: a pytree of arrays.
    groups: a group-spec tree (the structure of ``tree``, a
      :class:`GroupSpec` or ``None`` per leaf), or a callable of ``tree``
      returning one, e.g. :func:`channel_groups`.
    tau: the base threshold ``tau >= 0``.

  Returns:
    A pytree like ``tree``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import rda_optax
    >>> z = {"w": jnp.array([[2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 0.0, 0.0]])}
    >>> spec = {"w": rda_optax.GroupSpec("w", axis=0)}  # groups: rows
    >>> # lambda_g = 1 * sqrt(4) = 2; the row norms are 4 and sqrt(2).
    >>> print(rda_optax.group_soft_threshold(z, spec, 1.0)["w"])
    [[1. 1. 1. 1.]
     [0. 0. 0. 0.]]
  """
  check_hyper("tau", tau, positive=False)
  specs = resolve_groups(groups, tree)
  leaves = jax.tree.leaves(tree)
  return jax.tree.unflatten(jax.tree.structure(tree), prox_leaves(
      leaves, specs, [False] * len(leaves), 0.0, tau))


def sparse_group_soft_threshold(tree: Any, groups: GroupsOrFn,
                                l1: jax.Array | float,
                                tau: jax.Array | float,
                                l1_mask: MaskOrFn = None) -> Any:
  r"""Sparse-group soft threshold: element-wise, then group shrinkage.

  The proximal map of ``l1 ||w_M||_1 + sum_g lambda_g ||w_g||_2`` (``M``: the
  leaves selected by ``l1_mask``, default ``ndim >= 2``, i.e. kernels) is

  .. math::
    P(z) = T_\tau\big(S_{\ell_1 M}(z)\big),

  with ``S`` the element-wise soft threshold (10) on the masked leaves (the
  identity elsewhere) and ``T`` :func:`group_soft_threshold`. (The
  composition is exact because ``S`` keeps signs and ``T`` scales each group
  by a factor in ``[0, 1]``: the optimality conditions of both add up;
  Friedman, Hastie & Tibshirani, 2010.) A group is zero exactly when
  ``||S_l1(z)_g|| <= lambda_g``; inside a surviving group, entries with
  ``|z_i| <= l1`` are zero. Ungrouped masked leaves get the plain soft
  threshold.

  Args:
    tree: a pytree of arrays.
    groups: as in :func:`group_soft_threshold`.
    l1: element-wise threshold, >= 0.
    tau: base group threshold, >= 0 (``lambda_g = tau sqrt(|g|)``).
    l1_mask: pytree of bools like ``tree`` or a callable returning one;
      default: leaves with ``ndim >= 2``.

  Returns:
    A pytree like ``tree``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import rda_optax
    >>> z = jnp.array([[3.0, 0.1], [0.5, 0.1]])  # groups: columns (axis -1)
    >>> # After S_1 the first column is (2, 0), above lambda_g = sqrt(2).
    >>> out = rda_optax.sparse_group_soft_threshold(
    ...     z, rda_optax.GroupSpec("w"), l1=1.0, tau=1.0)
    >>> print(out.round(3))
    [[0.586 0.   ]
     [0.    0.   ]]
  """
  check_hyper("l1", l1, positive=False)
  check_hyper("tau", tau, positive=False)
  treedef = jax.tree.structure(tree)
  mask = treedef.flatten_up_to(resolve_mask(l1_mask, tree))
  return jax.tree.unflatten(treedef, prox_leaves(
      jax.tree.leaves(tree), resolve_groups(groups, tree), mask, l1, tau))


def prox_leaves(leaves: list, specs: list, l1_flags: list,
                l1: jax.Array | float, tau: jax.Array | float,
                scales: Optional[list] = None,
                keep: Optional[dict] = None) -> list:
  """:func:`sparse_group_soft_threshold` on flat lists (for the optimizers).

  ``specs`` and ``l1_flags`` give each leaf's group spec and whether it has
  the element-wise term; leaves in no group get ``S_l1`` or the identity.
  ``scales`` (optional) gives per leaf an array broadcastable to it that
  multiplies both thresholds coordinate by coordinate: the proximal map in
  the diagonal metric ``diag(1 / scale)``. It is exact for the group term
  only where the scale is constant over each group (the caller's duty).
  ``keep`` (optional, ``{key: bool per group}``) decides which groups
  survive instead of ``||z_g|| > lambda_g``: a target that chose ``tau``
  from the order of the groups' scores (:func:`group_scores`) makes the
  decision by that order, which a recomputed ``lambda_g`` could round
  against at the cut; a kept group's factor is then floored at 0.
  """
  leaves = _l1_shrunk(leaves, l1_flags, l1, scales)
  sumsq = _sumsq(leaves, specs)
  sizes = _sizes(leaves, specs)
  weights = _weights(specs)
  factors = {}
  for key, s in sumsq.items():
    lam = jnp.asarray(tau, s.dtype) * (weights[key] * math.sqrt(sizes[key]))
    norm = jnp.sqrt(s)
    # ``~(norm <= lam)`` rather than ``norm > lam``: a NaN norm keeps its
    # group, whose entries then all become NaN instead of silently zero.
    k = ~(norm <= lam) if keep is None else keep[key]
    safe = jnp.where(k, norm, 1.0)
    factors[key] = (k, 1.0 - lam / safe, lam, norm)
  out = []
  for i, (x, spec) in enumerate(zip(leaves, specs)):
    if spec is None:
      out.append(x)
      continue
    k, f, lam, norm = factors[spec.key]
    shape = [1] * jnp.ndim(x)
    if spec.axis is not None:
      shape[_axis(x, spec)] = -1
    if scales is None:
      k, f = k.reshape(shape), f.reshape(shape)
    else:
      # Per coordinate; with a scale constant over each group, every
      # coordinate of a group takes the same decision.
      lam_x = lam.reshape(shape) * jnp.asarray(scales[i], lam.dtype)
      norm_x = norm.reshape(shape)
      k = ~(norm_x <= lam_x) if keep is None else k.reshape(shape)
      f = 1.0 - lam_x / jnp.where(k, norm_x, 1.0)
    if keep is not None:
      f = jnp.maximum(f, 0.0)
    out.append(jnp.where(k, x * f.astype(x.dtype), jnp.zeros_like(x)))
  return out


def _l1_shrunk(leaves, l1_flags, l1, scales):
  """The element-wise step of the sparse-group prox (``l1`` times the
  scale on the flagged leaves)."""
  if scales is None:
    return [shrink(x, jnp.asarray(l1, jnp.asarray(x).dtype)) if m else x
            for x, m in zip(leaves, l1_flags)]
  return [shrink(x, (jnp.asarray(l1, jnp.asarray(x).dtype)
                    * jnp.asarray(s, jnp.asarray(x).dtype)))
          if m else x for x, m, s in zip(leaves, l1_flags, scales)]


def group_scores(leaves: list, specs: list, l1_flags: list,
                 l1: jax.Array | float,
                 scales: Optional[list] = None) -> dict[str, jax.Array]:
  r"""Per family, each group's ``||S(z)_g|| / (w_g sqrt(|g|) s_g)``: the
  smallest group strength ``tau`` at which :func:`prox_leaves` (same
  arguments) zeros the group, so ``tau`` zeros exactly the groups whose
  score is ``<= tau``. ``S``: the element-wise step; ``s_g``: the group's
  scale (its mean, for per-coordinate scales constant over the group).
  A family of weight 0 is never thresholded: its scores are ``inf``.
  """
  leaves = _l1_shrunk(leaves, l1_flags, l1, scales)
  sizes, weights = _sizes(leaves, specs), _weights(specs)
  sg = None
  if scales is not None:
    sg = _group_sums([jnp.broadcast_to(jnp.asarray(s, jnp.float32),
                                       jnp.shape(x))
                      for x, s in zip(leaves, scales)], specs)
  out = {}
  for key, s in _sumsq(leaves, specs).items():
    c = weights[key] * math.sqrt(sizes[key])
    if sg is not None:
      c = c * (sg[key] / sizes[key])
    out[key] = jnp.where(c > 0, jnp.sqrt(s) / jnp.where(c > 0, c, 1.0),
                         jnp.inf)
  return out


def group_counts(leaves: list, specs: list) -> dict[str, int]:
  """{key: number of groups} per family, in leaf order (static)."""
  out: dict[str, int] = {}
  for x, spec in zip(leaves, specs):
    if spec is not None:
      out.setdefault(spec.key, _count(x, spec))
  return out


def _group_sums(values: list, specs: list) -> dict[str, jax.Array]:
  """{key: per-group sum of the entries}."""
  out: dict[str, jax.Array] = {}
  for v, spec in zip(values, specs):
    if spec is None:
      continue
    ax = None if spec.axis is None else _axis(v, spec)
    red = tuple(i for i in range(jnp.ndim(v)) if i != ax)
    t = jnp.sum(v, axis=red).reshape(-1)
    out[spec.key] = t if spec.key not in out else out[spec.key] + t
  return out


def group_mean_leaves(values: list, specs: list) -> list:
  """Each grouped leaf of ``values`` replaced by its group means, broadcast
  back to the leaf's shape; ungrouped leaves pass through.

  Used to make a per-coordinate metric constant over each group, where the
  group proximal map is closed-form.
  """
  sums = _group_sums(values, specs)
  counts: dict[str, int] = {}
  for v, spec in zip(values, specs):
    if spec is not None:
      counts[spec.key] = counts.get(spec.key, 0) + (
          math.prod(jnp.shape(v)) // _count(v, spec))
  out = []
  for v, spec in zip(values, specs):
    if spec is None:
      out.append(v)
      continue
    shape = [1] * jnp.ndim(v)
    if spec.axis is not None:
      shape[_axis(v, spec)] = -1
    mean = (sums[spec.key] / counts[spec.key]).reshape(shape)
    out.append(jnp.broadcast_to(mean, jnp.shape(v)).astype(v.dtype))
  return out


def check_group_args(groups: GroupsOrFn, group_l1: Any) -> None:
  """``groups`` and ``group_l1`` come together, and ``group_l1 >= 0``."""
  if groups is None and group_l1 is not None:
    raise ValueError(
        "group_l1 needs groups= (e.g. rda_optax.channel_groups)")
  if groups is not None and group_l1 is None:
    raise ValueError("groups= needs group_l1, the group strength (>= 0)")
  if group_l1 is not None:
    check_hyper("group_l1", group_l1, positive=False)


def resolve_groups(groups: GroupsOrFn, tree: Any) -> list:
  """The group spec (or ``None``) of each leaf of ``tree``, in leaf order.

  Raises:
    ValueError: if the spec tree does not match ``tree`` or holds something
      other than :class:`GroupSpec` or ``None``.
  """
  treedef = jax.tree.structure(tree)
  spec_tree = groups(tree) if callable(groups) and not isinstance(
      groups, GroupSpec) else groups
  try:
    specs = treedef.flatten_up_to(spec_tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f"groups: the group-spec tree does not match the params' structure "
        f"{treedef}: {e}") from None
  for s in specs:
    if s is not None and not isinstance(s, GroupSpec):
      raise ValueError(
          f"groups: leaves must be GroupSpec or None, got {type(s).__name__}")
  _weights(specs)
  return specs


def _weights(specs: list) -> dict[str, float]:
  """{key: weight}, checking that each weight is finite, >= 0 and the same
  over a family."""
  out: dict[str, float] = {}
  for s in specs:
    if s is None:
      continue
    w = s.weight
    if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
      raise ValueError(f"groups: the weight of family {s.key!r} must be a "
                       f"finite number >= 0, got {w!r}")
    if out.setdefault(s.key, w) != w:
      raise ValueError(f"groups: family {s.key!r} has weight {out[s.key]} "
                       f"in one leaf and {w} in another")
  return out


def _axis(x, spec):
  nd = jnp.ndim(x)
  if not -nd <= spec.axis < nd:
    raise ValueError(
        f"groups: axis {spec.axis} of family {spec.key!r} is out of range "
        f"for a leaf of shape {jnp.shape(x)}")
  return spec.axis % nd


def _count(x, spec):
  return 1 if spec.axis is None else jnp.shape(x)[_axis(x, spec)]


def _sumsq(leaves, specs):
  """{key: per-group sum of squares}, checking that each family agrees."""
  out: dict[str, jax.Array] = {}
  for x, spec in zip(leaves, specs):
    if spec is None:
      continue
    x = jnp.asarray(x)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if spec.axis is None:
      s = jnp.sum(jnp.square(x)).reshape(1)
    else:
      ax = _axis(x, spec)
      s = jnp.sum(jnp.square(x), axis=tuple(i for i in range(x.ndim)
                                              if i != ax))
    if spec.key in out:
      if out[spec.key].shape != s.shape:
        raise ValueError(
            f"groups: family {spec.key!r} has {out[spec.key].shape[0]} "
            f"groups in one leaf and {s.shape[0]} in another")
      s = out[spec.key] + s
    out[spec.key] = s
  return out


GROUP_WEIGHTINGS = ("size", "uniform")


def channel_groups(params: Any, *,
                   units: Optional[Sequence[ChannelUnit]] = None,
                   tie_residual: bool = True,
                   weighting: Union[str, dict[str, float]] = "size") -> Any:
  """One group per channel of each :class:`ChannelUnit`.

  Family ``unit.key``, group ``c``: every writer's kernel ``[..., c]`` (its
  last axis) and bias ``[c]`` if it has one, and every normalization's
  ``scale[c]`` and ``bias[c]``. A residual stream is one unit with several
  writers, so its channel ``c`` is one group. The units come from the model:
  declared (``models.channel_units(model)``) or traced
  (:func:`trace_channel_units`). Without ``units``, pairs are found by name
  within a module, as the models in ``models/`` name them
  (:func:`rda_optax._units.units_by_name`): kernel ``conv1`` with BatchNorm
  ``bn1``, ``stem_conv``/``stem_bn``, ``shortcut_conv``/``shortcut_bn``,
  ``hidden``/``bn_hidden``. Kernels in no unit (the classifier, whose
  outputs are the logits) belong to no group.

  When a whole group is zero, the channel's BatchNorm output is exactly 0 for
  any input, so ``models.slim`` can remove the channel exactly.

  Args:
    params: the ``"params"`` collection of a model.
    units: the model's channel units; default: found by name.
    tie_residual: only without ``units``: in a ResNet (``stem_conv`` and ``layer{i}_{j}`` blocks),
      make channel ``c`` of a stage's residual stream one group over every
      layer writing into it (the stem or the stage's projection, and each
      block's ``conv2``), because the stream channel is removable only when
      all of them are zero. ``False``: one group per layer.
    weighting: how ``lambda_g`` varies between layers. ``"size"``: ``tau
      sqrt(|g|)`` (Yuan & Lin), the default. ``"uniform"``: ``tau`` for
      every channel (weight ``1 / sqrt(|g|)``). A group holding a BatchNorm
      scale ``s_1`` cannot be zero while ``s_1 / (step size) > lambda_g``;
      for RDA that is the first ``(gamma s_1 / lambda_g)^2`` steps, so under
      ``"size"`` the widest groups (a Dense layer's channels, the last
      convs of a VGG) lose that protection first, whatever their share of
      the FLOPs, and under ``"uniform"`` every layer loses it at the same
      step. A dict ``{family key: weight}`` sets the weights directly
      (families left out: 1).

  Returns:
    A group-spec tree for :func:`group_soft_threshold` and ``rda(groups=)``.

  Raises:
    ValueError: for a unit partly in ``params`` (a writer that is not a
      kernel there, a norm without ``scale`` or ``bias``), a leaf in two
      units, or an unknown ``weighting``. A unit with no leaf in ``params``
      is skipped: ``params`` may be a part of the model's (under
      ``optax.masked``).

  Examples:
    >>> import jax.numpy as jnp
    >>> import rda_optax
    >>> params = {"conv0": {"kernel": jnp.ones((3, 3, 1, 32))},
    ...           "bn0": {"scale": jnp.ones(32), "bias": jnp.zeros(32)},
    ...           "classifier": {"kernel": jnp.ones((32, 10)),
    ...                          "bias": jnp.zeros(10)}}
    >>> spec = rda_optax.channel_groups(params)
    >>> spec["conv0"]["kernel"], spec["bn0"]["scale"], spec["classifier"]
    (GroupSpec(key='conv0', axis=-1, weight=1.0), \
GroupSpec(key='conv0', axis=-1, weight=1.0), {'bias': None, 'kernel': None})
    >>> rda_optax.group_sizes(params, spec)  # 3 * 3 * 1 + 2 per channel
    {'conv0': 11}
    >>> u = rda_optax.channel_groups(params, weighting="uniform")
    >>> round(u["conv0"]["kernel"].weight, 4)  # 1 / sqrt(11)
    0.3015

    Any names, with the units given (here two writers summed, a residual):

    >>> p = {"a": {"kernel": jnp.ones((4, 8))}, "b": {"kernel": jnp.ones((8, 8))},
    ...      "n": {"scale": jnp.ones(8), "bias": jnp.zeros(8)}}
    >>> unit = rda_optax.ChannelUnit("s", writers=("a/kernel", "b/kernel"),
    ...                              norms=("n",))
    >>> rda_optax.group_sizes(p, rda_optax.channel_groups(p, units=[unit]))
    {'s': 14}
  """
  if isinstance(weighting, str) and weighting not in GROUP_WEIGHTINGS:
    raise ValueError(
        f"channel_groups: weighting must be one of "
        f"{', '.join(GROUP_WEIGHTINGS)} or a dict, got {weighting!r}")
  flat = {path_name(p): leaf
          for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  if units is None:
    units = units_by_name(params, tie_residual)
  specs = _unit_specs(flat, units)
  if weighting == "uniform":
    names = [k for k, s in specs.items() if s is not None]
    sizes = _sizes([flat[k] for k in names], [specs[k] for k in names])
    weighting = {k: 1.0 / math.sqrt(n) for k, n in sizes.items()}
  if isinstance(weighting, dict):
    specs = {k: s if s is None else dataclasses.replace(
        s, weight=float(weighting.get(s.key, 1.0)))
             for k, s in specs.items()}
  return jax.tree_util.tree_map_with_path(lambda p, _: specs[path_name(p)],
                                         params)


def _unit_specs(flat: dict, units: Sequence[ChannelUnit]
                ) -> dict[str, Optional[GroupSpec]]:
  """``{leaf path: GroupSpec or None}`` for the leaves of ``flat``."""
  specs: dict[str, Optional[GroupSpec]] = {k: None for k in flat}

  def claim(path, unit):
    if specs[path] is not None:
      raise ValueError(f"channel_groups: {path!r} is in unit "
                       f"{specs[path].key!r} and in unit {unit.key!r}")
    specs[path] = GroupSpec(unit.key, -1)

  for unit in units:
    if not isinstance(unit, ChannelUnit):
      raise ValueError(f"channel_groups: units must be ChannelUnit, got "
                       f"{type(unit).__name__}")
    if not any(w in flat for w in unit.writers) and not any(
        f"{n}/{f}" in flat for n in unit.norms for f in ("scale", "bias")):
      continue  # params is a part of the model's (optax.masked, a subtree)
    for w in unit.writers:
      if w not in flat or len(jnp.shape(flat[w])) < 2:
        raise ValueError(f"channel_groups: unit {unit.key!r}: writer {w!r} "
                         "is not a kernel (ndim >= 2) of the params")
      claim(w, unit)
      if sibling(w, "bias") in flat:
        claim(sibling(w, "bias"), unit)
    for n in unit.norms:
      members = [f"{n}/{f}" for f in ("scale", "bias") if f"{n}/{f}" in flat]
      if not members:
        raise ValueError(f"channel_groups: unit {unit.key!r}: norm {n!r} has "
                         "no scale or bias in the params")
      for m in members:
        claim(m, unit)
  return specs
