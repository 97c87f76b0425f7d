"""Adam(W)-preconditioned proximal steps (ProxGen), Yun et al. (2021)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from rda_optax import _common
from rda_optax import _prox
from rda_optax._common import at_step, check_hyper, guard
from rda_optax._group import GroupsOrFn, group_mean_leaves
from rda_optax._masks import MaskOrFn


class ProxAdamState(NamedTuple):
  """State of :func:`prox_adam`.

  Attributes:
    count: number of updates applied so far (``t - 1`` for step ``t``).
    mu: Adam's first moment ``m_t``, float32 (or wider with wider params).
    nu: Adam's second moment ``v_t``, same dtype.
    lambda_t: with ``target_sparsity``, the l1 strength chosen at the last
      step per penalized leaf (``optax.MaskedNode`` elsewhere); otherwise
      ``()``.
  """
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates
  lambda_t: Any = ()


def prox_adam(
    learning_rate: optax.ScalarOrSchedule,
    l1: Optional[optax.ScalarOrSchedule],
    b1: float | jax.Array = 0.9,
    b2: float | jax.Array = 0.999,
    eps: float | jax.Array = 1e-8,
    weight_decay: float | jax.Array = 0.0,
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
  r"""Proximal Adam(W): the l1 prox in Adam's diagonal metric (ProxGen).

  At step ``t = 1, 2, ...`` with gradient ``g_t``:

  .. math::
    m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \\
    d_t &= \sqrt{v_t / (1 - \beta_2^t)} + \epsilon, \\
    w_{t+1/2} &= w_t - \alpha_t \Big(\frac{m_t / (1 - \beta_1^t)}{d_t}
                 + \omega w_t\Big), \\
    w_{t+1} &= \arg\min_w \tfrac12 \|w - w_{t+1/2}\|^2_{D_t / \alpha_t}
               + \lambda \|w_M\|_1
             = S_{\alpha_t \lambda / d_t}(w_{t+1/2}),

  with ``D_t = diag(d_t)``: a soft threshold per coordinate at ``alpha_t
  lambda / (sqrt(v_hat) + eps)`` on the leaves of ``l1_mask`` (default
  ``ndim >= 2``); the other leaves take the AdamW step ``w_{t+1/2}``
  (``omega``: decoupled weight decay, on every leaf). A weight is zero
  exactly when ``|w_{t+1/2}| d_t <= alpha_t lambda``; a coordinate whose
  gradients have all been zero has ``d_t = eps`` and is zeroed at once (in
  a flat direction the penalty wins). At a fixed point
  ``m_hat = g`` and the metric cancels: ``g in -lambda d|w|``, the
  l1-regularized stationarity condition, whatever ``d``.

  With ``groups``, the group term of :class:`rda_optax.Prox` in a diagonal
  metric has no closed form unless the metric is constant over each group;
  so on grouped leaves ``d_t`` is replaced by its mean over the group (in
  the step and in the threshold alike: a proximal step in that per-group
  metric, with the same fixed points).

  Target sparsity: the per-coordinate thresholds share one ``lambda``, so
  with ``target_sparsity`` (and ``l1=None``) ``lambda_t`` is chosen each
  step as the order statistic of ``|w_{t+1/2}| d_t / alpha_t``, which zeros
  the target's share (see :func:`rda_optax.rda`).

  The step is computed in float32 (or wider) and rounded once to the
  params' dtype; zeros are exact, NaN gradients give NaN weights. Traced
  hyper-parameters out of range make the update NaN.

  Args:
    learning_rate: ``alpha_t`` > 0; float, array or schedule.
    l1: ``lambda`` >= 0; float, array or schedule. ``None`` with
      ``target_sparsity``.
    b1: ``beta_1`` in ``[0, 1)``.
    b2: ``beta_2`` in ``[0, 1)``.
    eps: ``epsilon`` >= 0, added to ``sqrt(v_hat)`` (0 only where no
      gradient entry is ever exactly 0).
    weight_decay: ``omega`` >= 0, decoupled (AdamW).
    l1_mask: as in :func:`rda_optax.rda`.
    groups: as in :func:`rda_optax.rda`.
    group_l1: as in :func:`rda_optax.rda`; given exactly when ``groups``
      is.
    target_sparsity: the share of zeros to reach, spread over the leaves by
      ``sparsity_distribution``, recomputed every ``threshold_every``
      steps, from ``threshold_samples`` entries if given: all as in
      :func:`rda_optax.rda`, in Adam's metric.
    target_flops: with ``group_costs``: the groups kept each step are the
      highest-scoring ones whose cost fits this share, as in
      :func:`rda_optax.rda`.
    group_costs: as in :func:`rda_optax.rda`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`rda_optax.ProxAdamState`, whose ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rda_optax
    >>> params = {"kernel": jnp.array([[0.5, -0.2], [0.1, 0.3]])}
    >>> tx = rda_optax.prox_adam(learning_rate=0.1, l1=1.0, eps=0.0)
    >>> state = tx.init(params)
    >>> grads = {"kernel": jnp.array([[2.0, -2.0], [0.5, -0.5]])}
    >>> updates, state = tx.update(grads, state, params)
    >>> # Step 1: m_hat / d = sign(g); thresholds 0.1 / |g| = 0.05, 0.2
    >>> optax.apply_updates(params, updates)["kernel"]
    Array([[ 0.35, -0.05],
           [ 0.  ,  0.2 ]], dtype=float32)

  References:
    Yun, Lozano, Yang, "Adaptive proximal gradient methods for structured
    neural networks", NeurIPS 2021; Kingma & Ba, "Adam", ICLR 2015;
    Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019.
  """
  check_hyper("learning_rate", learning_rate, positive=True)
  pen = _prox.Penalty.checked("prox_adam", l1, l1_mask, groups, group_l1,
                              target_sparsity, sparsity_distribution,
                              threshold_every, threshold_samples,
                              target_flops, group_costs)
  _common.check_range("b1", b1, 0.0, 1.0)
  _common.check_range("b2", b2, 0.0, 1.0)
  check_hyper("eps", eps, positive=False)
  check_hyper("weight_decay", weight_decay, positive=False)

  def init_fn(params):
    if _common.has_abstract_leaves(params):
      return jax.eval_shape(init_fn, params)
    _common.check_float_params(params, "prox_adam")
    pen.layout(params)  # bad specs fail here, not mid-training
    zeros = lambda p: jnp.zeros_like(p, dtype=_moment_dtype(p))
    return ProxAdamState(count=jnp.zeros([], jnp.int32),
                         mu=jax.tree.map(zeros, params),
                         nu=jax.tree.map(zeros, params),
                         lambda_t=pen.init_lambda(params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    treedef, prox = pen.start(params, state.count)
    lr = at_step(learning_rate, state.count)
    lr = guard(lr, lr >= 0)
    beta1, beta2, eps_t, wd = (jnp.asarray(v, jnp.float32)
                               for v in (b1, b2, eps, weight_decay))
    ok = ((beta1 >= 0) & (beta1 < 1) & (beta2 >= 0) & (beta2 < 1)
          & (eps_t >= 0) & (wd >= 0))
    lr = guard(lr, ok)
    t = (state.count + 1).astype(jnp.float32)
    c1 = 1 - jnp.power(beta1, t)
    c2 = 1 - jnp.power(beta2, t)

    ms, vs, ds = [], [], []
    for g, m, v in zip(treedef.flatten_up_to(updates),
                       treedef.flatten_up_to(state.mu),
                       treedef.flatten_up_to(state.nu)):
      ct = m.dtype
      g = g.astype(ct)
      m = beta1.astype(ct) * m + (1 - beta1).astype(ct) * g
      v = beta2.astype(ct) * v + (1 - beta2).astype(ct) * g * g
      ms.append(m)
      vs.append(v)
      ds.append(jnp.sqrt(v / c2.astype(ct)) + eps_t.astype(ct))
    if prox.kind in ("group", "sparse_group"):
      # A metric constant over each group keeps the group prox exact.
      ds = group_mean_leaves(ds, list(prox.specs))
    ws = treedef.flatten_up_to(params)
    half, scales = [], []
    for w, m, d in zip(ws, ms, ds):
      ct = m.dtype
      step = (m / c1.astype(ct)) / d + wd.astype(ct) * w.astype(ct)
      half.append(w.astype(ct) - lr.astype(ct) * step)
      scales.append(lr.astype(ct) / d)
    lambda_t = ()
    if target_sparsity is None:
      new_w = pen.group_prox(prox, half, scales, state.count)
    else:
      # Scores in units of lambda: |h| d / alpha <= lambda_t is exactly a
      # zero, so the zeros are the counted ones.
      new_w, lambda_t = pen.targeted(half, prox.l1_flags, state.lambda_t,
                                     treedef, state.count, scales=scales,
                                     weights=ws)
    new_updates = [wn.astype(w.dtype) - w for wn, w in zip(new_w, ws)]
    return jax.tree.unflatten(treedef, new_updates), ProxAdamState(
        count=optax.safe_increment(state.count),
        mu=jax.tree.unflatten(treedef, ms),
        nu=jax.tree.unflatten(treedef, vs), lambda_t=lambda_t)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _moment_dtype(p):
  return _common.compute_dtype(_common.leaf_dtype(p))
