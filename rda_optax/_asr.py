"""Adaptive sparse retraining (ASR), section 4.2 of He et al. (2020)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from rda_optax._common import NO_PARAMS_MSG
from rda_optax._masks import MaskOrFn, resolve_mask


class FreezeZerosState(NamedTuple):
  """State of :func:`freeze_zeros`: the number of updates seen."""
  count: jax.Array


def freeze_zeros(start_step: int = 0, *,
                 mask: MaskOrFn = None) -> optax.GradientTransformation:
  r"""Keeps exact zeros at zero from ``start_step`` on: ASR, section 4.2.

  Chained after an optimizer that returns ``w_{t+1} - w_t``
  (``optax.chain(rda(...), freeze_zeros(start_step=N))``):

  .. math::
    u_t \leftarrow u_t \odot [w_t \neq 0] \quad \text{for } t \ge N

  on the leaves selected by ``mask`` (default ``ndim >= 2``: the kernels;
  biases start at zero and must stay free). The mask is recomputed from the
  params at every step, so it needs no storage, and a weight that the
  optimizer zeroes during the retraining phase is frozen from the next step
  on. The wrapped optimizer's state is untouched: switching on at step ``N``
  keeps RDA's running average, and nothing is re-initialized.

  Args:
    start_step: first 0-based step at which zeros are frozen (the first
      step of the retraining phase); >= 0.
    mask: which leaves to freeze; as ``l1_mask`` in :func:`rda_optax.rda`.

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` needs ``params``.
  """
  if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
    raise ValueError(f"start_step must be an int >= 0, got {start_step!r}")

  def init_fn(params):
    resolve_mask(mask, params, name="mask")
    return FreezeZerosState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    m = resolve_mask(mask, params, name="mask")
    active = state.count >= start_step

    def leaf(u, w, sel):
      if not sel:
        return u
      return jnp.where(active & (w == 0), jnp.zeros_like(u), u)

    new_updates = jax.tree.map(leaf, updates, params, m)
    return new_updates, FreezeZerosState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)
