"""Regularized dual averaging (RDA), Algorithm 2 of He et al. (2020)."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from rda_optax._common import NO_PARAMS_MSG, at_step, check_hyper, is_tracer
from rda_optax._masks import MaskOrFn, resolve_mask
from rda_optax._soft_threshold import soft_threshold

_CENTERS = ("zero", "init")


class RDAState(NamedTuple):
  """State of :func:`rda`.

  Attributes:
    count: number of updates applied so far (``t - 1`` in the paper's
      1-based step ``t``).
    gbar: running average of the gradients, ``gbar_t = (1/t) sum_k g_k``.
    init_params: the first iterate ``w_1``; the proximal centre of the
      unpenalized leaves (and of all leaves with ``center="init"``).
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
    l2: float = 0.0,
    state_dtype: Optional[DTypeLike] = None,
) -> optax.GradientTransformation:
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

  The returned updates are ``w_{t+1} - w_t`` in the state dtype, so
  ``optax.apply_updates`` lands on the closed-form iterate (rounded once to
  the parameter dtype); a thresholded weight becomes exactly 0.0.
  The transformation must be the first of a chain (it needs raw gradients,
  and it rebuilds the iterate from its state, so nothing before it may
  rescale the gradient in a way that is not meant to be averaged).

  Schedules: ``gamma`` and ``l1`` may be optax schedules of the 0-based
  step. Because the iterate is rebuilt from ``gbar_t`` at every step, a step
  change of ``gamma`` rescales the whole displacement ``w - c`` at once and a
  change of ``l1`` re-thresholds the whole average at once (section 5.2's
  schedules act this way; nothing is accumulated per step).

  Non-finite gradients: a NaN or inf enters ``gbar`` and, since ``gbar`` is
  an average over all steps, every later iterate is non-finite: the loss
  shows it at once. To skip such steps and leave the state untouched, wrap
  it: ``optax.apply_if_finite(rda(...), max_consecutive_errors)``; the
  trainer does.

  Args:
    gamma: ``gamma`` of ``beta_t = gamma sqrt(t)``, > 0; float or schedule.
      It plays the role of an inverse learning rate: the first step moves by
      ``1/gamma`` times the thresholded gradient.
    l1: ``lambda``, the l1 strength, >= 0; float or schedule.
    center: ``"zero"`` (the paper's) or ``"init"``.
    l1_mask: pytree of bools like the params, or a callable of the params
      returning one; default: every leaf with ``ndim >= 2`` (conv and dense
      kernels).
    l2: optional ``l2/2 ||w||^2`` added to the subproblem of the penalized
      leaves, >= 0.
    state_dtype: dtype of ``gbar`` and ``init_params``; default: the
      parameter dtype promoted to at least float32, because a running
      average in bfloat16 stops moving once ``1/t`` is below its precision.

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

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
  if state_dtype is not None:
    state_dtype = jnp.dtype(state_dtype)

  def _sdtype(p):
    if state_dtype is not None:
      return state_dtype
    return jnp.promote_types(jnp.asarray(p).dtype, jnp.float32)

  def init_fn(params):
    mask = resolve_mask(l1_mask, params)
    _warn_if_all_zero(params, mask)
    gbar = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), _sdtype(p)), params)
    # A copy, not an alias: callers may donate the params buffer to a step.
    init_params = jax.tree.map(
        lambda p: jnp.array(p, dtype=_sdtype(p), copy=True), params)
    return RDAState(count=jnp.zeros([], jnp.int32), gbar=gbar,
                    init_params=init_params)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    mask = resolve_mask(l1_mask, params)
    t = (state.count + 1).astype(jnp.float32)
    g_t = at_step(gamma, state.count)
    lam = at_step(l1, state.count)
    b = g_t / jnp.sqrt(t)

    def leaf(g, gbar, w1, w, penalized):
      gbar = gbar + (g.astype(gbar.dtype) - gbar) / t
      if penalized:
        center_term = b * w1 if center == "init" else None
        z = -gbar if center_term is None else center_term - gbar
        w_new = soft_threshold(z, lam) / (b + l2)
      else:
        # Unpenalized leaves: w_1 - gbar/b, written so that w stays at w_1
        # exactly while gbar is zero.
        w_new = w1 - gbar / b
      # Updates stay in the state dtype: rounding them to bfloat16 params
      # first would make ``apply_updates`` miss the closed-form iterate.
      return gbar, w_new - w.astype(w_new.dtype)

    out = jax.tree.map(leaf, updates, state.gbar, state.init_params, params,
                       mask)
    treedef = jax.tree.structure(params)
    gbar, new_updates = _unzip2(out, treedef)
    return new_updates, RDAState(count=optax.safe_increment(state.count),
                                 gbar=gbar, init_params=state.init_params)

  return optax.GradientTransformation(init_fn, update_fn)


def _unzip2(tree_of_pairs: Any, treedef: Any) -> tuple[Any, Any]:
  pairs = treedef.flatten_up_to(tree_of_pairs)
  return (jax.tree.unflatten(treedef, [a for a, _ in pairs]),
          jax.tree.unflatten(treedef, [b for _, b in pairs]))


def _warn_if_all_zero(params: Any, mask: Any) -> None:
  leaves = jax.tree.leaves(params)
  sel = [p for p, m in zip(leaves, jax.tree.leaves(mask)) if m]
  if not sel or any(is_tracer(p) for p in sel):
    return
  if all(not bool(jnp.any(jnp.asarray(p) != 0)) for p in sel):
    warnings.warn(
        "rda: every penalized leaf of the initial params is zero. In a ReLU "
        "network their gradients are then zero (Proposition 1 of He et al. "
        "2020) and RDA can never move them; initialize with "
        "rda_optax.scaled_uniform(s) or rda_optax.rescale(...).",
        RuntimeWarning, stacklevel=3)
