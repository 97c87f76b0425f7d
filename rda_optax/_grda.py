"""Generalized regularized dual averaging (gRDA), Chao et al. (2020)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from rda_optax import _common
from rda_optax import _prox
from rda_optax._common import at_step, check_hyper, guard
from rda_optax._group import GroupsOrFn
from rda_optax._masks import MaskOrFn


class GRDAState(NamedTuple):
  """State of :func:`grda`.

  Attributes:
    count: number of updates applied so far (``n - 1`` for the ``n``-th).
    accumulator: ``A_n = w_0 - sum_k alpha_k g_k``, float32 (or wider with
      wider params), on the leaves that take a threshold (``l1_mask`` or a
      group); ``optax.MaskedNode`` on the others, whose iterate ``A_n`` is
      the params themselves (plain SGD). About one params' worth.
    lr_power_sum: ``sum_k alpha_k^(1/2 + mu) (k^mu - (k-1)^mu)``, a float32
      scalar: ``tau_n`` divided by ``c``. With a constant rate it is
      ``alpha^(1/2 + mu) n^mu``.
    lambda_t: with ``target_sparsity``, the threshold ``tau_n`` chosen at
      the last step per penalized leaf (``optax.MaskedNode`` elsewhere);
      otherwise ``()``.
  """
  count: jax.Array
  accumulator: optax.Updates
  lr_power_sum: jax.Array
  lambda_t: Any = ()


def grda(
    learning_rate: optax.ScalarOrSchedule,
    l1: Optional[optax.ScalarOrSchedule],
    mu: float | jax.Array = 0.7,
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
  r"""Generalized regularized dual averaging (gRDA), Chao et al. (2020).

  At step ``n = 1, 2, ...`` with gradient ``g_n`` and rate ``alpha``:

  .. math::
    A_n &= A_{n-1} - \alpha g_n, \qquad A_0 = w_0, \\
    \tau_n &= c\, \alpha^{1/2 + \mu} n^\mu, \\
    w_n &= S_{\tau_n}(A_n),

  on the leaves selected by ``l1_mask`` (default ``ndim >= 2``); the others
  take the plain SGD step ``w_n = A_n``. It is l1 dual averaging with a
  constant proximal weight ``1/alpha`` centred at ``w_0`` and the l1
  strength ``tau_n / (alpha n) = c alpha^(mu - 1/2) n^(mu - 1)``: for the
  paper's ``1/2 < mu < 1`` the threshold grows like ``n^mu`` but the
  penalty per step fades, so on a convex problem the iterates tend to the
  unpenalized minimizer, and the sparsity comes from the accumulator
  ``A_n`` staying below ``tau_n`` (the paper's "directional pruning").
  ``mu = 1`` gives a fixed strength ``c sqrt(alpha)``, whose fixed points
  are the l1-regularized minimizers. With a schedule for ``alpha``, ``tau_n``
  accumulates ``c alpha_n^(1/2 + mu) (n^mu - (n-1)^mu)`` per step, as in the
  authors' code; with a schedule for ``c``, the current ``c`` multiplies
  the sum (the whole threshold follows it, as ``rda``'s ``l1`` does).

  With ``groups`` the threshold is :class:`rda_optax.Prox`'s sparse-group
  one with ``tau_n`` and ``group_l1 / c`` times it for the groups, i.e.
  ``lambda_g = group_l1 alpha^(1/2 + mu) n^mu w_g sqrt(|g|)``.

  Target sparsity: ``tau_n`` is one threshold, so with ``target_sparsity``
  (and ``l1=None``) it is chosen each step as the order statistic of
  ``|A_n|`` that zeros the target's share (see :func:`rda_optax.rda`).

  The iterate is computed in float32 (or wider) and rounded once to the
  params' dtype; zeros are exact, NaN gradients give NaN weights. Traced
  hyper-parameters out of range (``alpha < 0``, ``c < 0``, ``mu <= 0``)
  make the iterate NaN.

  Args:
    learning_rate: ``alpha`` > 0; float, array or schedule.
    l1: ``c`` of the paper, >= 0; float, array or schedule. ``None`` with
      ``target_sparsity``.
    mu: the exponent ``mu > 0`` of ``tau_n`` (the paper: ``1/2 < mu < 1``).
    l1_mask: as in :func:`rda_optax.rda`.
    groups: as in :func:`rda_optax.rda`.
    group_l1: the group ``c``, >= 0; given exactly when ``groups`` is.
    target_sparsity: as in :func:`rda_optax.rda`, and so are
      ``sparsity_distribution``, ``threshold_every`` and
      ``threshold_samples``, which say how it is spread and computed.
    target_flops: as in :func:`rda_optax.rda` (the group strength chosen
      so that the surviving groups cost at most this share of
      ``group_costs``'s total).
    group_costs: as in :func:`rda_optax.rda`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`rda_optax.GRDAState`, whose ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rda_optax
    >>> params = {"kernel": jnp.array([[0.5, -0.2], [0.1, 0.3]])}
    >>> tx = rda_optax.grda(learning_rate=0.25, l1=0.4, mu=1.0)
    >>> state = tx.init(params)
    >>> grads = {"kernel": jnp.array([[0.4, -0.4], [0.4, -0.4]])}
    >>> updates, state = tx.update(grads, state, params)
    >>> # A_1 = w_0 - g/4; tau_1 = 0.4 * 0.25^1.5 = 0.05
    >>> optax.apply_updates(params, updates)["kernel"]
    Array([[ 0.35, -0.05],
           [ 0.  ,  0.35]], dtype=float32)

  References:
    Chao, Wang, Xing, Cheng, "Directional pruning of deep neural networks",
    NeurIPS 2020; the authors' ``gRDA-Optimizer`` code.
  """
  check_hyper("learning_rate", learning_rate, positive=True)
  pen = _prox.Penalty.checked("grda", l1, l1_mask, groups, group_l1,
                              target_sparsity, sparsity_distribution,
                              threshold_every, threshold_samples,
                              target_flops, group_costs)
  check_hyper("mu", mu, positive=True)

  def init_fn(params):
    if _common.has_abstract_leaves(params):
      return jax.eval_shape(init_fn, params)
    _common.check_float_params(params, "grda")
    prox = pen.layout(params)
    treedef = jax.tree.structure(params)
    acc = [jnp.array(p, dtype=_acc_dtype(p), copy=True)
           if prox.penalized(i) else optax.MaskedNode()
           for i, p in enumerate(treedef.flatten_up_to(params))]
    return GRDAState(count=jnp.zeros([], jnp.int32),
                     accumulator=jax.tree.unflatten(treedef, acc),
                     lr_power_sum=jnp.zeros([], jnp.float32),
                     lambda_t=pen.init_lambda(params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    treedef, prox = pen.start(params, state.count)
    lr = at_step(learning_rate, state.count)
    lr = guard(lr, lr >= 0)
    mu_t = jnp.asarray(mu, jnp.float32)
    mu_t = guard(mu_t, mu_t > 0)
    power_sum = state.lr_power_sum + _tau_increment(lr, mu_t, state.count)

    ws = treedef.flatten_up_to(params)
    acc = []
    for g, a, w in zip(treedef.flatten_up_to(updates),
                       treedef.flatten_up_to(state.accumulator), ws):
      base = w if isinstance(a, optax.MaskedNode) else a
      ct = _common.compute_dtype(_common.leaf_dtype(base))
      acc.append(base.astype(ct) - lr.astype(ct) * g.astype(ct))
    lambda_t = ()
    if target_sparsity is None:
      idx = [i for i in range(len(acc)) if prox.penalized(i)]
      sub = _prox.Prox(tuple(prox.l1_flags[i] for i in idx),
                       tuple(prox.specs[i] for i in idx), prox.l1,
                       prox.group_l1)
      new_w = list(acc)
      for i, w in zip(idx, pen.group_prox(sub, [acc[i] for i in idx],
                                          power_sum, state.count)):
        new_w[i] = w
    else:
      # tau_n itself is the order statistic of |A_n|.
      new_w, lambda_t = pen.targeted(acc, prox.l1_flags, state.lambda_t,
                                     treedef, state.count, weights=ws)
    new_acc = [a if prox.penalized(i) else optax.MaskedNode()
               for i, a in enumerate(acc)]
    new_updates = [wn.astype(w.dtype) - w for wn, w in zip(new_w, ws)]
    return jax.tree.unflatten(treedef, new_updates), GRDAState(
        count=optax.safe_increment(state.count),
        accumulator=jax.tree.unflatten(treedef, new_acc),
        lr_power_sum=power_sum, lambda_t=lambda_t)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _acc_dtype(p):
  return _common.compute_dtype(_common.leaf_dtype(p))


def _tau_increment(lr, mu, count):
  """``alpha^(1/2 + mu) (n^mu - (n-1)^mu)`` with ``n = count + 1``.

  The difference is written ``-n^mu expm1(mu log1p(-1/n))``: the plain
  difference of two nearly equal powers loses most of its float32 digits
  once ``n`` is in the thousands.
  """
  n = (count + 1).astype(jnp.float32)
  diff = jnp.where(n == 1, 1.0,
                   -jnp.power(n, mu) * jnp.expm1(mu * jnp.log1p(-1.0 / n)))
  return jnp.power(lr, 0.5 + mu) * diff
