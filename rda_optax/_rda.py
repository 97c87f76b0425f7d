"""Regularized dual averaging (RDA), Algorithm 2 of He et al. (2020)."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from rda_optax import _common
from rda_optax._common import NO_PARAMS_MSG, at_step, check_hyper, guard
from rda_optax._masks import MaskOrFn, resolve_mask
from rda_optax._soft_threshold import shrink

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
  """
  count: jax.Array
  gbar: optax.Updates
  init_params: optax.Params


def rda(
    gamma: optax.ScalarOrSchedule,
    l1: optax.ScalarOrSchedule,
    *,
    center: str = "zero",
    l1_mask: MaskOrFn = None,
    l2: float | jax.Array = 0.0,
    state_dtype: Optional[DTypeLike] = None,
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
  ``w_t``. The transformation must be the first of a chain (it needs raw
  gradients, and it rebuilds the iterate from its state, so nothing before
  it may rescale the gradient in a way that is not meant to be averaged).

  Schedules: ``gamma`` and ``l1`` may be optax schedules of the 0-based
  step. Because the iterate is rebuilt from ``gbar_t`` at every step, a step
  change of ``gamma`` rescales the whole displacement ``w - c`` at once and a
  change of ``l1`` re-thresholds the whole average at once (section 5.2's
  schedules act this way; nothing is accumulated per step).

  Non-finite gradients never zero a weight: a NaN or inf entry enters
  ``gbar`` and, since ``gbar`` is an average over all steps, that entry of
  every later iterate is non-finite (``soft_threshold`` maps NaN to NaN),
  so the loss shows it at once. To skip such steps and leave the state
  untouched, wrap it: ``optax.apply_if_finite(rda(...),
  max_consecutive_errors)``; the trainer does.

  Hyper-parameters: Python numbers and concrete arrays are checked here
  (``ValueError``). A traced value (``optax.inject_hyperparams`` under
  ``jit``) or a schedule's value cannot be checked; ``gamma <= 0``,
  ``l1 < 0`` or ``l2 < 0`` there make the iterate NaN rather than steer it.

  Args:
    gamma: ``gamma`` of ``beta_t = gamma sqrt(t)``, > 0; float, array or
      schedule. It plays the role of an inverse learning rate: the first
      step moves by ``1/gamma`` times the thresholded gradient.
    l1: ``lambda``, the l1 strength, >= 0; float, array or schedule.
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

  References:
    He, Jia, Xu, Zhang, Zhao, "Make l1 regularization effective in training
    sparse CNN", Comput. Optim. Appl. 77 (2020); Xiao, "Dual averaging
    methods for regularized stochastic learning and online optimization",
    JMLR 11 (2010).
  """
  check_hyper("gamma", gamma, positive=True)
  check_hyper("l1", l1, positive=False)
  check_hyper("l2", l2, positive=False)
  if center not in _CENTERS:
    raise ValueError(f"center must be one of {_CENTERS}, got {center!r}")
  state_dtype = _common.check_state_dtype(state_dtype, "rda")

  def gbar_dtype(p):
    if state_dtype is not None:
      return state_dtype
    return _common.compute_dtype(_common.leaf_dtype(p))

  def keeps_w1(penalized):
    return center == "init" or not penalized

  def init_fn(params):
    if _common.has_abstract_leaves(params):
      return jax.eval_shape(init_fn, params)
    _common.check_float_params(params, "rda")
    mask = resolve_mask(l1_mask, params)
    _warn_if_all_zero(params, mask)
    # zeros_like, not zeros: the state follows the params' sharding.
    gbar = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=gbar_dtype(p)),
                        params)
    # A copy, not an alias: callers may donate the params buffer to a step.
    init_params = jax.tree.map(
        lambda p, m: jnp.array(p, copy=True) if keeps_w1(m)
        else optax.MaskedNode(), params, mask)
    return RDAState(count=jnp.zeros([], jnp.int32), gbar=gbar,
                    init_params=init_params)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    _common.check_float_params(params, "rda")
    mask = resolve_mask(l1_mask, params)
    t = (state.count + 1).astype(jnp.float32)
    g_t = at_step(gamma, state.count)
    b = guard(g_t / jnp.sqrt(t), g_t > 0)
    lam = at_step(l1, state.count)
    lam = guard(lam, lam >= 0)
    l2_t = jnp.asarray(l2, jnp.float32)
    l2_t = guard(l2_t, l2_t >= 0)

    treedef = jax.tree.structure(params)
    new_gbar, new_updates = [], []
    for g, gbar, w1, w, penalized in zip(
        treedef.flatten_up_to(updates), treedef.flatten_up_to(state.gbar),
        treedef.flatten_up_to(state.init_params), treedef.flatten_up_to(params),
        treedef.flatten_up_to(mask)):
      sd = gbar.dtype
      ct = _common.compute_dtype(sd)
      avg = gbar.astype(ct)
      gbar = (avg + (g.astype(ct) - avg) / t.astype(ct)).astype(sd)
      w1 = None if isinstance(w1, optax.MaskedNode) else w1.astype(ct)
      w_new = closed_form(gbar.astype(ct), w1, b.astype(ct), lam.astype(ct),
                          l2_t.astype(ct), penalized=penalized, center=center)
      new_gbar.append(gbar)
      # Round the iterate once, then step onto it in the params' dtype.
      new_updates.append(w_new.astype(w.dtype) - w)
    return jax.tree.unflatten(treedef, new_updates), RDAState(
        count=optax.safe_increment(state.count),
        gbar=jax.tree.unflatten(treedef, new_gbar),
        init_params=state.init_params)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def closed_form(gbar: jax.Array, w1: Optional[jax.Array], b: jax.Array,
                lam: jax.Array, l2: jax.Array, *, penalized: bool,
                center: str) -> jax.Array:
  """The iterate ``w_{t+1}`` of one leaf, equation (13), from its average.

  ``w1`` is ``None`` when the leaf does not keep ``w_1`` (penalized with
  ``center="zero"``). One place for the per-leaf math, so that variants
  (other penalties, structured thresholds) change only this function.
  """
  if penalized:
    z = -gbar if center == "zero" else b * w1 - gbar
    return shrink(z, lam) / (b + l2)
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
