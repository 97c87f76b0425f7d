"""Regularized dual averaging (RDA), Algorithm 2 of He et al. (2020)."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from rda_optax import _common
from rda_optax import _prox
from rda_optax._common import at_step, check_hyper, guard
from rda_optax._group import GroupsOrFn
from rda_optax._masks import MaskOrFn, resolve_mask

_CENTERS = ("zero", "init")


class RDAState(NamedTuple):
  """State of :func:`rda`.

  Attributes:
    count: number of updates applied so far (``t - 1`` in the paper's
      1-based step ``t``).
    gbar: running average of the gradients, ``gbar_t = (1/t) sum_k g_k``,
      float32 by default (see ``state_dtype``).
    init_params: the first iterate ``w_1``, in the params' dtype, for the
      leaves whose closed form reads it: the unpenalized leaves, and every
      leaf with ``center="init"``. Penalized leaves with ``center="zero"``
      hold an ``optax.MaskedNode`` instead, as ``optax.masked`` does for the
      leaves it skips, so the default state is about one params' worth of
      memory. ``optax.tree_utils.tree_map_params`` over this field with
      extra trees needs ``is_leaf=lambda v: isinstance(v, optax.MaskedNode)``,
      as for ``optax.masked``.
    lambda_t: with ``target_sparsity``, the ``lambda_t`` of the last step
      per leaf (float32 scalars like the params, ``optax.MaskedNode`` on
      unpenalized leaves; one value throughout for ``"global"``). Otherwise
      ``()``, so a plain ``rda`` state has the same leaves as before the
      field existed. Not named ``l1``: a field named like a
      hyper-parameter would make ``optax.tree_utils.tree_get(state, "l1")``
      ambiguous under ``optax.inject_hyperparams``.
  """
  count: jax.Array
  gbar: optax.Updates
  init_params: optax.Params
  lambda_t: Any = ()


def rda(
    gamma: optax.ScalarOrSchedule,
    l1: optax.ScalarOrSchedule,
    *,
    center: str = "zero",
    l1_mask: MaskOrFn = None,
    l2: float | jax.Array = 0.0,
    state_dtype: Optional[DTypeLike] = None,
    groups: GroupsOrFn = None,
    group_l1: Optional[optax.ScalarOrSchedule] = None,
    target_sparsity: Optional[optax.ScalarOrSchedule] = None,
    sparsity_distribution: str = "global",
    threshold_every: int = 1,
    threshold_samples: Optional[int] = None,
    target_flops: Optional[optax.ScalarOrSchedule] = None,
    group_costs: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""l1-regularized dual averaging, Algorithm 2 / equation (13).

  At step ``t = 1, 2, ...`` with stochastic gradient ``g_t``:

  .. math::
    \bar g_t &= \bar g_{t-1} + (g_t - \bar g_{t-1}) / t \\
    w_{t+1} &= \arg\min_w \langle \bar g_t, w\rangle + \lambda \|w\|_1
              + \frac{\gamma}{2\sqrt t}\|w - c\|^2 + \frac{\ell_2}{2}\|w\|^2
             = \frac{S_\lambda(b_t c - \bar g_t)}{b_t + \ell_2},
             \quad b_t = \gamma / \sqrt t .

  With ``c = 0`` and ``l2 = 0`` this is the forward-backward form (15),
  ``w_{t+1} = -(\sqrt t/\gamma) S_\lambda(\bar g_t)``, and a weight is zero
  exactly when ``|gbar_t| <= lambda`` (criterion 18): a threshold on the
  averaged gradient that does not decay, unlike prox-SGD's (19).

  Leaves selected by ``l1_mask`` get the l1 term with centre ``c = 0``
  (``center="zero"``, the paper's) or ``c = w_1`` (``center="init"``, as in
  gRDA/RMDA). Other leaves (biases, BatchNorm) get plain dual averaging
  centred at their initial value, ``w_{t+1} = w_1 - (\sqrt t/\gamma)\bar
  g_t``, so a BatchNorm scale starts from 1 rather than from 0.

  The returned updates are ``w_{t+1} - w_t`` in the params' dtype, so
  ``optax.apply_updates`` lands on the closed-form iterate. The iterate is
  computed in float32 from the state and rounded once to the params'
  dtype; the update is that rounded iterate minus ``w_t``. A thresholded
  weight becomes exactly 0.0 (``w + (-w)``), and the sum ``w_t + u`` is
  exact whenever ``w_{t+1}`` is within a factor 2 of ``w_t`` (Sterbenz's
  lemma); otherwise it is off by at most one rounding of the params' dtype
  at the scale of ``max(|w_t|, |w_{t+1}|)``. That error never accumulates,
  because each iterate is rebuilt from the float32 average, not from
  ``w_t``.

  Composition (README, "What composes with optax"): the update is
  ``w_{t+1} - w_t``, so a zero is exact only if nothing changes the update
  after ``rda``. Before it, on the gradient, anything may go: it changes
  what is averaged, never whether a zero is exact
  (``optax.chain(optax.add_decayed_weights(wd), rda(...))`` averages the
  decay into ``gbar``; ``optax.chain(optax.clip_by_global_norm(c),
  rda(...))`` clips each gradient before it is averaged); weight decay can
  also enter the subproblem as ``l2``. After it only
  :func:`rda_optax.freeze_zeros` may follow (it multiplies the update by 0
  or 1): anything that adds to or rescales the update
  (``add_decayed_weights``, ``clip``, ``clip_by_global_norm``, ``scale``)
  moves every thresholded weight off 0 (``optax.chain(rda(1.0, 0.5),
  optax.add_decayed_weights(1e-4))`` ends at sparsity 0). ``optax.masked``,
  ``optax.partition``, ``optax.MultiSteps``, ``optax.apply_if_finite`` and
  ``optax.inject_hyperparams`` around it keep the zeros.

  Params must be real floating point; complex leaves are refused
  (``ValueError`` naming the leaf). The complex l1 step exists
  (:func:`rda_optax.soft_threshold` shrinks the modulus and keeps the
  phase), but the running average, the centre, ``l2`` and the target's
  radix select over ``|z|`` are not derived or tested for complex weights
  yet; to train such a leaf, split it into real and imaginary parts (l1
  then acts on each part).

  Structured sparsity (beyond the paper): with ``groups`` (e.g.
  :func:`rda_optax.channel_groups`, one group per output channel with its
  BatchNorm scale and bias) the penalty becomes ``lambda ||w_M||_1 +
  sum_g lambda_g ||w_g||_2`` with ``lambda_g = group_l1 w_g sqrt(|g|)``
  (``w_g``: the spec's weight, default 1), and the subproblem (13) is
  still solved in closed form by the sparse-group threshold ``P``
  (:func:`rda_optax.sparse_group_soft_threshold`):

  .. math::
    w_{t+1} = \frac{P_{\lambda, \lambda_G}(b_t c - \bar g_t)}{b_t + \ell_2}

  (``P`` is positively homogeneous in its thresholds, so dividing by
  ``b_t + l2`` commutes with it). A group is zero exactly when
  ``||S_lambda(b_t c - gbar_t)_g|| <= lambda_g``; with ``c = 0`` and
  ``lambda = 0`` that is ``||gbar_{t,g}|| <= lambda_g``, criterion (18) per
  group, again a threshold on the average that does not decay. Grouped
  leaves outside ``l1_mask`` (BatchNorm, biases) keep their centre
  ``c = w_1`` and get no element-wise term, and ``l2`` applies to every
  grouped leaf (one quadratic weight per group keeps the closed form).
  ``l1 = 0`` gives the pure group lasso.

  Schedules: ``gamma``, ``l1`` and ``group_l1`` may be optax schedules of
  the 0-based step. Because the iterate is rebuilt from ``gbar_t`` at every
  step, a step change of ``gamma`` rescales the whole displacement ``w -
  c`` at once and a change of ``l1`` re-thresholds the whole average at
  once (section 5.2's schedules act this way; nothing is accumulated per
  step).

  Non-finite gradients never zero a weight: a NaN or inf entry enters
  ``gbar`` and, since ``gbar`` is an average over all steps, that entry of
  every later iterate is non-finite (``soft_threshold`` maps NaN to NaN),
  so the loss shows it at once. To skip such steps and leave the state
  untouched, wrap it: ``optax.apply_if_finite(rda(...),
  max_consecutive_errors)``; the trainer does.

  Target sparsity: with ``target_sparsity = s_t`` (a float or a schedule of
  the step, e.g. a cubic ramp as in gradual pruning) and ``l1=None``,
  ``lambda`` is chosen at each step from the data. Write
  ``z_t = b_t c - \bar g_t`` for the argument of :math:`S_\lambda` (``-gbar``
  with ``center="zero"``); a penalized weight is zero exactly when
  :math:`|z_t| \le \lambda`, whatever ``l2``. So with ``k_t`` the number of
  entries the allocation says to zero,

  .. math::
    \lambda_t = |z_t|_{(k_t)}, \quad \text{the } k_t\text{-th smallest}

  gives exactly ``k_t`` zeros (more only where ``|z|`` ties at
  ``lambda_t``), at once, with no controller lag: the iterate is rebuilt
  from ``gbar_t`` each step. It is l1-RDA with a data-chosen
  ``lambda_t``: ``rda(gamma, l1=f)`` with a schedule ``f(t) = lambda_t``
  read from ``state.lambda_t`` produces the same iterates bit for bit, and
  ``lambda_t`` is the smallest l1 that reaches ``s_t`` at step ``t``, so
  the kept weights are shrunk as little as that sparsity allows.
  Allocation over the penalized leaves (``rda_optax.keep_counts``):
  ``"global"`` one threshold over all of them, ``k_t = N - round(N(1 -
  s_t))``; ``"uniform"`` each leaf at ``s_t``; ``"erk"`` per-leaf counts
  from Erdos-Renyi-Kernel densities; ``"magnitude"`` per-leaf counts
  from the weights, recomputed each step: those that one global
  threshold on the current iterate's ``|w_t|`` (the ``params`` given to
  ``update``, penalized leaves only) would zero, i.e. the allocation
  global gradual magnitude pruning would choose, each leaf then getting
  its own ``lambda`` (the order statistic of its own ``|z_t|`` at its
  count). Why: ``"global"``'s one ``lambda`` ranks the dual variable
  ``|z_t|``, not the weights; on the trainer's small CIFAR-10 CNN at 0.98
  it zeroed 0.55-0.60 of the first conv and 0.62-0.72 of the classifier
  where global GMP (one threshold on the weights) zeroed 0.34 and 0.39,
  and the dual methods ended 3.5 to 7.5 points of validation accuracy
  below GMP (``docs/RESULTS.md``, "Issue 24 on CPU"). With
  ``"magnitude"`` the weights set how many zeros each layer has, and the
  dual variable which ones. A zero of ``w_t`` is the smallest magnitude, so at a fixed
  target the counts stay where they are and a rising one takes the new
  zeros from the smallest kept weights, as GMP's masks do. The order
  statistic is a radix select
  (two histogram passes, no sort), or, with ``threshold_samples``, an
  estimate from a fixed random sample. ``threshold_every = k > 1``
  recomputes it only every ``k`` steps and holds ``lambda`` in between,
  trading exactness for cost: between recomputes the sparsity moves with ``gbar`` (by the
  entries whose ``|z|`` crosses the held ``lambda``; each entry of
  ``gbar`` moves by at most ``(k/t) max|g - gbar|`` in ``k`` steps).

  Cost target for the groups: with ``groups``, ``group_l1=None``,
  ``target_flops = F_t`` (a float or schedule in ``(0, 1]``) and
  ``group_costs`` (per family, the cost of one group: e.g. the FLOPs a
  channel accounts for), each step keeps the groups of highest score
  ``r_g = ||S_l1(z)_g|| / (w_g sqrt(|g|))`` whose cost fits ``F_t`` of the
  total (sorting the scores in decreasing order and keeping the longest
  run whose cost fits: one sort of the groups, not of the weights) and
  zeroes the others. The kept groups are not shrunk: this is the
  projection onto the budget, not a group prox (shrinking every survivor
  by the score of the first group left out left them near 0, because a
  layer's channel norms are close to each other: the network stopped
  learning). A prefix of the score order is not a knapsack optimum.
  ``group_costs`` may be linear (a cost per group) or a
  :class:`rda_optax.FlopsModel`, whose pairwise terms give a network's
  FLOPs exactly (``models.flops_polynomial``: a conv costs its kept
  inputs times its kept outputs).

  Hyper-parameters: Python numbers and concrete arrays are checked here
  (``ValueError``). A traced value (``optax.inject_hyperparams`` under
  ``jit``) or a schedule's value cannot be checked; ``gamma <= 0``,
  ``l1 < 0``, ``l2 < 0`` or a target outside ``[0, 1]`` there make the
  iterate NaN rather than steer it. ``optax.inject_hyperparams(rda)`` works
  as is, a target included: ``target_sparsity`` and ``threshold_every``
  may be injected (traced); ``threshold_samples`` sets a shape and must be
  named in ``static_args``.

  Args:
    gamma: ``gamma`` of ``beta_t = gamma sqrt(t)``, > 0; float, array or
      schedule. It plays the role of an inverse learning rate: the first
      step moves by ``1/gamma`` times the thresholded gradient.
    l1: ``lambda``, the l1 strength, >= 0; float, array or schedule. Must
      be ``None`` with ``target_sparsity``.
    center: ``"zero"`` (the paper's) or ``"init"``.
    l1_mask: pytree of bools like the params (or a prefix of them), or a
      callable of the params returning one; default: every leaf with
      ``ndim >= 2`` (conv and dense kernels).
    l2: optional ``l2/2 ||w||^2`` added to the subproblem of the penalized
      leaves, >= 0.
    state_dtype: floating dtype of ``gbar``; default: the parameter dtype
      promoted to at least float32, because a running average in bfloat16
      stops moving once ``1/t`` is below its precision. ``w_1`` is kept in
      the params' dtype, which holds it exactly.
    groups: a group-spec tree (a :class:`rda_optax.GroupSpec` or ``None``
      per params leaf) or a callable of the params returning one; default
      ``None``: no groups, the paper's algorithm. Under
      ``optax.inject_hyperparams`` pass the tree (``channel_groups(params)``)
      or name ``"groups"`` in ``static_args``: it takes a callable argument
      for a schedule.
    group_l1: ``group_l1`` of ``lambda_g = group_l1 w_g sqrt(|g|)``, >= 0;
      float, array or schedule; given exactly when ``groups`` is (``None``
      otherwise, so that ``optax.inject_hyperparams`` does not inject an
      argument without effect).
    target_sparsity: fraction of the penalized entries that are zero after
      each step, in ``[0, 1]``; a float (a numpy or jax scalar too), an
      array, or a schedule of the 0-based step (a traced value outside
      ``[0, 1]`` makes the iterate NaN).
      ``None`` (default): the fixed ``l1``.
    sparsity_distribution: how the target is spread over the penalized
      leaves: ``"global"`` (default; one ``lambda`` for all, on the
      dual variable), ``"uniform"`` (every leaf at the target), ``"erk"``
      (Erdos-Renyi-Kernel counts from the shapes), or ``"magnitude"``
      (each step, the counts one global magnitude threshold on the
      current ``params`` gives, as global GMP would prune them, then one
      ``lambda`` per leaf at its count; see "Target sparsity" above: one
      ``lambda`` on the dual variable over-prunes the first conv and the
      classifier).
    threshold_every: recompute ``lambda_t`` every this many steps (an int
      >= 1, or an integer array; default 1, exact at every step).
    threshold_samples: ``None`` (default): ``lambda_t`` is the exact order
      statistic. An int ``m``: estimated from ``m`` fixed random entries
      (per leaf for ``"uniform"``, ``"erk"`` and ``"magnitude"``, whose
      global threshold on ``|w|`` is then estimated from ``m`` entries
      too, so its counts miss the total by the same sampling error), a
      gather of ``m`` values and their radix select instead of two
      histogram passes over every entry; exact for leaves (``"global"``: all penalized entries) of at most
      ``m`` entries, and otherwise off the target by about ``sqrt(s(1-s)/m)``
      (``rda_optax._target.sampled_kth_smallest`` states the tail bound).
    target_flops: with ``groups`` and ``group_l1=None``: the share of the
      total ``group_costs`` the surviving groups may cost, in ``(0, 1]``;
      a float, array or schedule of the step. ``None`` (default): the
      fixed ``group_l1``.
    group_costs: with ``target_flops``: ``{family key: cost}``, each cost
      a number >= 0 (every group of the family) or a 1-D array with one per
      group; every family of ``groups`` needs one, and the total must be
      > 0. Or a :class:`rda_optax.FlopsModel`: a cost with products
      ``p_ab n_a n_b`` of the kept groups of two families (a conv's FLOPs
      between two channel units, ``models.flops_polynomial``), exact where
      a per-group cost is only a linearization.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs
    ``params`` (extra keyword arguments are accepted and ignored). ``init``
    refuses integer params. Given abstract params (``jax.ShapeDtypeStruct``
    leaves), ``init`` returns the abstract state, as ``jax.eval_shape``
    would: ``w_1`` has no values to copy.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rda_optax
    >>> params = {"kernel": jnp.array([[0.5, -0.2], [0.1, 0.3]]),
    ...           "bias": jnp.zeros(2)}
    >>> tx = rda_optax.rda(gamma=1.0, l1=0.15)
    >>> state = tx.init(params)
    >>> grads = {"kernel": jnp.array([[0.4, -0.1], [0.05, -0.3]]),
    ...          "bias": jnp.array([0.1, -0.1])}
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> params["kernel"]  # -(1/gamma) S_l1(g_1); |g| <= l1 gives exact zeros
    Array([[-0.25,  0.  ],
           [ 0.  ,  0.15]], dtype=float32)
    >>> params["bias"]  # unpenalized: w_1 - g_1/gamma
    Array([-0.1,  0.1], dtype=float32)
    >>> rda_optax.sparsity(params)
    Array(0.5, dtype=float32)

    Asking for a sparsity instead of an l1 strength: 3 of the 4 kernel
    entries at zero, lambda_t the 3rd smallest ``|gbar|``:

    >>> tx = rda_optax.rda(gamma=1.0, l1=None, target_sparsity=0.75)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grads, state, params)
    >>> rda_optax.sparsity(optax.apply_updates(params, updates))
    Array(0.75, dtype=float32)
    >>> state.lambda_t["kernel"]
    Array(0.3, dtype=float32)

    A cost target for the groups: two channel families, ``a`` (two
    channels costing 1 each) and ``b`` (one channel costing 2); half the
    total cost keeps the channel of largest norm, ``b``'s (4), unshrunk
    (RDA's first iterate ``-gbar`` there), and zeroes ``a``:

    >>> w = {"a": jnp.ones((1, 2)), "b": jnp.ones((1, 1))}
    >>> g = {"a": jnp.array([[-1.0, -2.0]]), "b": jnp.array([[-4.0]])}
    >>> tx = rda_optax.rda(1.0, 0.0, target_flops=0.5, groups={
    ...     "a": rda_optax.GroupSpec("a"), "b": rda_optax.GroupSpec("b")},
    ...     group_costs={"a": 1.0, "b": 2.0})
    >>> updates, _ = tx.update(g, tx.init(w), w)
    >>> print(optax.apply_updates(w, updates))
    {'a': Array([[0., 0.]], dtype=float32), 'b': Array([[4.]], dtype=float32)}

  References:
    He, Jia, Xu, Zhang, Zhao, "Make l1 regularization effective in training
    sparse CNN", Comput. Optim. Appl. 77 (2020); Xiao, "Dual averaging
    methods for regularized stochastic learning and online optimization",
    JMLR 11 (2010).
  """
  check_hyper("gamma", gamma, positive=True)
  pen = _prox.Penalty.checked("rda", l1, l1_mask, groups, group_l1,
                              target_sparsity, sparsity_distribution,
                              threshold_every, threshold_samples,
                              target_flops, group_costs)
  check_hyper("l2", l2, positive=False)
  if center not in _CENTERS:
    raise ValueError(f"center must be one of {_CENTERS}, got {center!r}")
  state_dtype = _common.check_state_dtype(state_dtype, "rda")

  def init_fn(params):
    if _common.has_abstract_leaves(params):
      return jax.eval_shape(init_fn, params)
    _common.check_float_params(params, "rda")
    mask = resolve_mask(l1_mask, params)
    pen.layout(params)  # bad specs fail here, not mid-training
    _warn_if_all_zero(params, mask)
    # zeros_like, not zeros: the state follows the params' sharding.
    gbar = jax.tree.map(
        lambda p: jnp.zeros_like(p, dtype=_gbar_dtype(p, state_dtype)),
        params)
    # A copy, not an alias: callers may donate the params buffer to a step.
    init_params = jax.tree.map(
        lambda p, m: jnp.array(p, copy=True) if _keeps_w1(center, m)
        else optax.MaskedNode(), params, mask)
    return RDAState(count=jnp.zeros([], jnp.int32), gbar=gbar,
                    init_params=init_params,
                    lambda_t=pen.init_lambda(params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    treedef, prox = pen.start(params, state.count)
    t = (state.count + 1).astype(jnp.float32)
    g_t = at_step(gamma, state.count)
    b = guard(g_t / jnp.sqrt(t), g_t > 0)
    l2_t = jnp.asarray(l2, jnp.float32)
    l2_t = guard(l2_t, l2_t >= 0)

    gbar = [_average(g, avg, t) for g, avg in zip(
        treedef.flatten_up_to(updates), treedef.flatten_up_to(state.gbar))]
    w1s = [None if isinstance(w1, optax.MaskedNode) else w1
           for w1 in treedef.flatten_up_to(state.init_params)]
    lambda_t = ()
    if target_sparsity is None:
      new_w = _iterates(pen, prox, gbar, w1s, b, l2_t, center, state.count)
    else:
      new_w, lambda_t = _target_iterates(pen, prox, gbar, w1s, b, l2_t,
                                         state, treedef,
                                         treedef.flatten_up_to(params))
    # Round the iterate once, then step onto it in the params' dtype.
    new_updates = [w_new.astype(w.dtype) - w
                   for w_new, w in zip(new_w, treedef.flatten_up_to(params))]
    return jax.tree.unflatten(treedef, new_updates), RDAState(
        count=optax.safe_increment(state.count),
        gbar=jax.tree.unflatten(treedef, gbar),
        init_params=state.init_params, lambda_t=lambda_t)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _gbar_dtype(p, state_dtype):
  if state_dtype is not None:
    return state_dtype
  return _common.compute_dtype(_common.leaf_dtype(p))


def _keeps_w1(center, penalized):
  """``w_1`` is read by the unpenalized leaves, and by all with
  ``center="init"``."""
  return center == "init" or not penalized


def _average(g, gbar, t):
  """``gbar_t = gbar_{t-1} + (g_t - gbar_{t-1}) / t``, in the state dtype."""
  sd = gbar.dtype
  ct = _common.compute_dtype(sd)
  avg = gbar.astype(ct)
  return (avg + (g.astype(ct) - avg) / t.astype(ct)).astype(sd)


def _argument(gbar, w1, b):
  """``z_t = b_t c - gbar_t``, the argument of the threshold (``c = 0``
  when the leaf does not keep ``w_1``)."""
  ct = _common.compute_dtype(gbar.dtype)
  avg = gbar.astype(ct)
  return -avg if w1 is None else b.astype(ct) * w1.astype(ct) - avg


def _iterates(pen, prox, gbar, w1s, b, l2, center, count):
  """``w_{t+1}`` of every leaf from its average, equation (13).

  Penalized leaves: ``prox(z_t) / (b_t + l2)``; the others ``w_1 -
  gbar_t / b_t``. Ungrouped leaves are thresholded one by one in their
  compute dtype; grouped ones jointly (a group spans leaves).
  """
  grouped = prox.kind in ("group", "sparse_group")
  out = [None] * len(gbar)
  joint = []
  for i, (avg, w1) in enumerate(zip(gbar, w1s)):
    ct = _common.compute_dtype(avg.dtype)
    if grouped and prox.specs[i] is not None:
      joint.append(i)
      out[i] = _argument(avg, w1, b)
    else:
      out[i] = closed_form(
          avg.astype(ct), None if w1 is None else w1.astype(ct),
          b.astype(ct), prox.l1, l2.astype(ct),
          penalized=prox.l1_flags[i], center=center)
  if joint:
    sub = _prox.Prox(tuple(prox.l1_flags[i] for i in joint),
                     tuple(prox.specs[i] for i in joint), prox.l1,
                     prox.group_l1)
    for i, w in zip(joint, pen.group_prox(sub, [out[i] for i in joint],
                                          None, count)):
      out[i] = w / (b + l2).astype(w.dtype)
  return out


def _target_iterates(pen, prox, gbar, w1s, b, l2, state, treedef, ws):
  """The iterates ``S_lambda(z) / (b + l2)`` with ``lambda_t`` chosen per
  penalized leaf from its ``z = b c - gbar``, and the ``lambda_t`` tree
  (``ws``: the current iterate ``w_t``, which ``"magnitude"`` ranks)."""
  flags = prox.l1_flags
  zs = [_argument(avg, w1, b) if f else None
        for avg, w1, f in zip(gbar, w1s, flags)]
  shrunk, lambda_t = pen.targeted(zs, flags, state.lambda_t, treedef,
                                  state.count, weights=ws)
  out = []
  for avg, w1, f, w in zip(gbar, w1s, flags, shrunk):
    if f:
      out.append(w / (b + l2).astype(w.dtype))
    else:
      ct = _common.compute_dtype(avg.dtype)
      out.append(closed_form(avg.astype(ct), w1.astype(ct), b.astype(ct),
                             None, None, penalized=False, center="zero"))
  return out, lambda_t


def closed_form(gbar: jax.Array, w1: Optional[jax.Array], b: jax.Array,
                lam: Any, l2: Any, *, penalized: bool,
                center: str) -> jax.Array:
  """The iterate ``w_{t+1}`` of one ungrouped leaf, equation (13), from its
  average.

  ``w1`` is ``None`` when the leaf does not keep ``w_1`` (penalized with
  ``center="zero"``).
  """
  if penalized:
    z = -gbar if center == "zero" else b * w1 - gbar
    return _prox.Prox((True,), (None,), lam)([z])[0] / (b + l2)
  # Unpenalized leaves: w_1 - gbar/b, written so that w stays at w_1
  # exactly while gbar is zero.
  return w1 - gbar / b


def _warn_if_all_zero(params: Any, mask: Any) -> None:
  leaves = jax.tree.leaves(params)
  sel = [p for p, m in zip(leaves, jax.tree.leaves(mask)) if m]
  if not sel or any(_common.is_tracer(p) for p in sel):
    return
  if all(not bool(jnp.any(jnp.asarray(p) != 0)) for p in sel):
    warnings.warn(
        "rda: every penalized leaf of the initial params is zero. In a ReLU "
        "network their gradients are then zero (Proposition 1 of He et al. "
        "2020) and RDA can never move them; initialize with "
        "rda_optax.scaled_uniform(s) or rda_optax.rescale(...).",
        RuntimeWarning, stacklevel=3)
