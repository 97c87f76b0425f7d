"""Proximal SGD (FOBOS), Algorithm 1 of He et al. (2020): the baseline."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from rda_optax._common import NO_PARAMS_MSG, at_step, check_hyper
from rda_optax._masks import MaskOrFn, resolve_mask
from rda_optax._soft_threshold import soft_threshold


class ProxSGDState(NamedTuple):
  """State of :func:`prox_sgd`.

  Attributes:
    count: number of updates applied so far.
    trace: heavy-ball momentum buffer; an empty tuple when ``momentum == 0``.
  """
  count: jax.Array
  trace: optax.Updates


def prox_sgd(
    learning_rate: optax.ScalarOrSchedule,
    l1: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.0,
    l1_mask: MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""Proximal SGD, Algorithm 1 / equations (11)-(12).

  .. math::
    v_t &= \mu v_{t-1} + g_t \\
    w_{t+1/2} &= w_t - \alpha_t v_t \\
    w_{t+1} &= S_{\alpha_t \lambda}(w_{t+1/2})

  on leaves selected by ``l1_mask`` (default: ``ndim >= 2``); other leaves
  take the plain SGD step ``w_{t+1/2}``. With ``momentum = 0`` this is the
  paper's Algorithm 1. A weight is zeroed when ``|w_t - alpha_t g_t| <=
  alpha_t lambda`` (criterion 19): as ``alpha_t -> 0`` the threshold
  vanishes, which is why prox-SGD finds little sparsity.

  Args:
    learning_rate: ``alpha_t``, float or schedule.
    l1: ``lambda`` >= 0, float or schedule.
    momentum: heavy-ball coefficient ``mu`` in [0, 1).
    l1_mask: as in :func:`rda_optax.rda`.

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` needs ``params``.
  """
  check_hyper("learning_rate", learning_rate, positive=True)
  check_hyper("l1", l1, positive=False)
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")

  def init_fn(params):
    resolve_mask(l1_mask, params)
    trace = (jax.tree.map(jnp.zeros_like, params) if momentum else ())
    return ProxSGDState(count=jnp.zeros([], jnp.int32), trace=trace)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    mask = resolve_mask(l1_mask, params)
    lr = at_step(learning_rate, state.count)
    lam = at_step(l1, state.count)
    if momentum:
      trace = jax.tree.map(lambda g, v: momentum * v + g, updates, state.trace)
    else:
      trace = ()
    direction = trace if momentum else updates

    def leaf(d, w, penalized):
      w32 = w.astype(jnp.promote_types(w.dtype, jnp.float32))
      half = w32 - lr * d.astype(w32.dtype)
      w_new = soft_threshold(half, lr * lam) if penalized else half
      return w_new - w32

    new_updates = jax.tree.map(leaf, direction, params, mask)
    return new_updates, ProxSGDState(
        count=optax.safe_increment(state.count), trace=trace)

  return optax.GradientTransformation(init_fn, update_fn)
