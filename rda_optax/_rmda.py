"""Regularized modernized dual averaging (RMDA), Huang & Lee (2022)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rda_optax import _common
from rda_optax import _prox
from rda_optax._common import at_step, check_hyper, guard
from rda_optax._group import GroupsOrFn
from rda_optax._masks import MaskOrFn


class RMDAState(NamedTuple):
  """State of :func:`rmda`.

  Attributes:
    count: number of updates applied so far (``k`` of the next step).
    grad_sum: ``V_k = sum_j s_j g_j``, the gradients weighted by the step
      sizes ``s_j = alpha_j sqrt(j + 1)``; float32 (or wider with wider
      params).
    init_params: ``W_0``, in the params' dtype: every leaf reads it (the
      prox point is centred there, ``W0 - V_k / beta_k``).
    step_sum: ``sum_j s_j``, a float32 scalar (``alpha_k beta_k``).
    lambda_t: with ``target_sparsity``, the l1 strength chosen at the last
      step per penalized leaf (``optax.MaskedNode`` elsewhere); otherwise
      ``()``.

  Compared with :class:`rda_optax.RDAState`: ``grad_sum`` is ``rda``'s
  ``gbar`` with other weights, and ``init_params`` is kept for every leaf
  (``rda`` keeps ``w_1`` only where its closed form reads it), so the state
  is two params' worth, against about one for ``rda``. The momentum
  iterate ``W_k`` is the params themselves and is not stored.
  """
  count: jax.Array
  grad_sum: optax.Updates
  init_params: optax.Params
  step_sum: jax.Array
  lambda_t: Any = ()


def rmda(
    learning_rate: optax.ScalarOrSchedule,
    l1: Optional[optax.ScalarOrSchedule],
    momentum: optax.ScalarOrSchedule = 0.1,
    *,
    l1_mask: MaskOrFn = None,
    groups: GroupsOrFn = None,
    group_l1: Optional[optax.ScalarOrSchedule] = None,
    target_sparsity: Optional[optax.ScalarOrSchedule] = None,
    sparsity_distribution: str = "global",
    threshold_every: int = 1,
    threshold_samples: Optional[int] = None,
    target_flops: Optional[optax.ScalarOrSchedule] = None,
    group_costs: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Regularized modernized dual averaging (RMDA), Huang & Lee (2022).

  At step ``k = 0, 1, ...`` with gradient ``g_k`` at ``W_k`` (the params):

  .. math::
    \beta_k &= \sqrt{k + 1}, \quad s_k = \eta_k \beta_k, \quad
      \alpha_k = \textstyle\sum_{j \le k} s_j / \beta_k, \\
    V_k &= V_{k-1} + s_k g_k, \\
    \tilde W_k &= \arg\min_W \langle V_k, W\rangle
      + \frac{\beta_k}{2}\|W - W_0\|^2 + \alpha_k \beta_k R(W)
      = \mathrm{prox}_{\alpha_k R}(W_0 - V_k / \beta_k), \\
    W_{k+1} &= (1 - c) W_k + c \tilde W_k,

  with ``R`` the penalty (:class:`rda_optax.Prox`: ``lambda ||W_M||_1`` on
  the ``l1_mask`` leaves, plus the group term with ``groups``), ``eta`` the
  learning rate and ``c`` the momentum weight (``c = 1``: no momentum,
  ``W = W~``). This is the authors' code: dual averaging centred at
  ``W_0`` with the weights ``s_k``, and momentum as an average of the prox
  points. For ``l1``, ``W~`` is zero exactly where ``|W_0 - V_k/beta_k| <=
  alpha_k lambda``; ``alpha_k`` grows like ``(2/3) eta k``, so, as in
  ``rda``, the threshold on the weighted gradient average does not decay.
  ``W_k`` is an average of the ``W~``: a weight is exactly zero once
  ``(1 - c)^j`` times its last nonzero value falls below the smallest
  normal float, i.e. after the prox point has stayed zero for a while
  (``W~`` identifies the support first, Theorem 2 of the paper).

  Target sparsity: the threshold is one ``alpha_k lambda``, so with
  ``target_sparsity`` (and ``l1=None``) ``lambda`` is chosen each step so
  that ``W~`` has the target's share of zeros (the order statistic of
  ``|W_0 - V_k / beta_k|``, see :func:`rda_optax.rda`); ``W`` follows it
  through the momentum average.

  The iterate is computed in float32 (or wider) and rounded once to the
  params' dtype. NaN gradients give NaN weights. Traced hyper-parameters
  out of range (``eta < 0``, ``lambda < 0``, ``c`` outside ``(0, 1]``)
  make the iterate NaN.

  Args:
    learning_rate: ``eta`` > 0; float, array or schedule.
    l1: ``lambda`` >= 0; float, array or schedule. ``None`` with
      ``target_sparsity``.
    momentum: ``c`` in ``(0, 1]``, the weight of the new prox point (the
      authors' default ``0.1``; ``1`` turns momentum off); float, array or
      schedule. A schedule that reaches 1 makes ``W`` the prox point ``W~``
      at once, with its exact zeros (the trainer does that for the last
      step before ASR, whose mask is the exact zeros).
    l1_mask: as in :func:`rda_optax.rda`.
    groups: as in :func:`rda_optax.rda`.
    group_l1: as in :func:`rda_optax.rda` (``lambda_g = group_l1 w_g
      sqrt(|g|)``, times ``alpha_k``); given exactly when ``groups`` is.
    target_sparsity: as in :func:`rda_optax.rda`, and so are
      ``sparsity_distribution``, ``threshold_every`` and
      ``threshold_samples``, which say how it is spread and computed.
      ``"magnitude"`` ranks the params ``W_k``, an average of prox points
      (dense until ``momentum`` 1 takes the prox point itself): their
      magnitudes still rank the weights.
    target_flops: as in :func:`rda_optax.rda` (the group strength chosen
      so that the surviving groups cost at most this share of
      ``group_costs``'s total).
    group_costs: as in :func:`rda_optax.rda`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`rda_optax.RMDAState`, whose ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rda_optax
    >>> params = {"kernel": jnp.array([[0.5, -0.25], [0.125, 0.75]])}
    >>> tx = rda_optax.rmda(learning_rate=0.5, l1=0.25, momentum=0.5)
    >>> state = tx.init(params)
    >>> grads = {"kernel": jnp.array([[0.5, -0.5], [0.75, -0.5]])}
    >>> updates, state = tx.update(grads, state, params)
    >>> # k = 0: alpha = 0.5, W~ = S_0.125(W_0 - 0.5 g), W = (W_0 + W~) / 2
    >>> optax.apply_updates(params, updates)["kernel"]
    Array([[ 0.3125, -0.125 ],
           [ 0.    ,  0.8125]], dtype=float32)

  References:
    Huang & Lee, "Training structured neural networks through manifold
    identification and variance reduction", ICLR 2022; the authors' code
    (``zihsyuan1214/rmda``).
  """
  check_hyper("learning_rate", learning_rate, positive=True)
  pen = _prox.Penalty.checked("rmda", l1, l1_mask, groups, group_l1,
                              target_sparsity, sparsity_distribution,
                              threshold_every, threshold_samples,
                              target_flops, group_costs)
  check_hyper("momentum", momentum, positive=True)
  if not callable(momentum) and not _common.is_tracer(momentum) and np.any(
      np.asarray(momentum, np.float64) > 1):
    raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")

  def init_fn(params):
    if _common.has_abstract_leaves(params):
      return jax.eval_shape(init_fn, params)
    _common.check_float_params(params, "rmda")
    pen.layout(params)  # bad specs fail here, not mid-training
    grad_sum = jax.tree.map(
        lambda p: jnp.zeros_like(p, dtype=_sum_dtype(p)), params)
    # A copy, not an alias: callers may donate the params buffer to a step.
    init_params = jax.tree.map(lambda p: jnp.array(p, copy=True), params)
    return RMDAState(count=jnp.zeros([], jnp.int32), grad_sum=grad_sum,
                     init_params=init_params,
                     step_sum=jnp.zeros([], jnp.float32),
                     lambda_t=pen.init_lambda(params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    treedef, prox = pen.start(params, state.count)
    lr = at_step(learning_rate, state.count)
    lr = guard(lr, lr >= 0)
    c = jnp.asarray(at_step(momentum, state.count), jnp.float32)
    c = guard(c, (c > 0) & (c <= 1))
    beta = jnp.sqrt((state.count + 1).astype(jnp.float32))
    s = lr * beta
    step_sum = state.step_sum + s
    alpha = step_sum / beta

    grad_sum, zs = [], []
    for g, v, w0 in zip(treedef.flatten_up_to(updates),
                        treedef.flatten_up_to(state.grad_sum),
                        treedef.flatten_up_to(state.init_params)):
      ct = _common.compute_dtype(v.dtype)
      v = v.astype(ct) + s.astype(ct) * g.astype(ct)
      grad_sum.append(v)
      zs.append(w0.astype(ct) - v / beta.astype(ct))
    lambda_t = ()
    if target_sparsity is None:
      tilde = pen.group_prox(prox, zs, alpha, state.count)
    else:
      # Chosen on |z| directly (a threshold tau = alpha lambda), so that
      # the zeros are exactly the counted ones; lambda_t = tau / alpha.
      tilde, lambda_t = pen.targeted(zs, prox.l1_flags, state.lambda_t,
                                     treedef, state.count, unit=alpha,
                                     weights=treedef.flatten_up_to(params))
    ws = treedef.flatten_up_to(params)
    new_updates = []
    for w, wt in zip(ws, tilde):
      ct = wt.dtype
      w_new = (1 - c).astype(ct) * w.astype(ct) + c.astype(ct) * wt
      new_updates.append(w_new.astype(w.dtype) - w)
    return jax.tree.unflatten(treedef, new_updates), RMDAState(
        count=optax.safe_increment(state.count),
        grad_sum=jax.tree.unflatten(treedef, grad_sum),
        init_params=state.init_params, step_sum=step_sum,
        lambda_t=lambda_t)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _sum_dtype(p):
  return _common.compute_dtype(_common.leaf_dtype(p))
