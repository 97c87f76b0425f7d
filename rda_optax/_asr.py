"""Adaptive sparse retraining (ASR), section 4.2 of He et al. (2020)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from rda_optax._common import NO_PARAMS_MSG, check_int
from rda_optax._masks import MaskOrFn, resolve_mask


class FreezeZerosState(NamedTuple):
  """State of :func:`freeze_zeros`: the number of updates seen."""
  count: jax.Array


def freeze_zeros(start_step: int | jax.Array = 0, *,
                 mask: MaskOrFn = None) -> optax.GradientTransformationExtraArgs:
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

  Updates keep their dtype; a NaN update of a non-zero weight passes
  through (``w == 0`` is false for NaN weights, so nothing is hidden).
  Only exact zeros are frozen (``-0.0`` included, ``1e-30`` not).

  Place it last, directly after the sparsifier: it multiplies updates by
  0 or 1, so it keeps their exact zeros, but anything after it that adds to
  or rescales updates (``add_decayed_weights``, ``clip_by_global_norm``,
  ``scale``) moves the frozen weights off 0 again. Weight decay goes before
  the sparsifier, or as ``rda(..., l2=)`` (README, "What composes with
  optax").

  Args:
    start_step: first 0-based step at which zeros are frozen (the first
      step of the retraining phase); an int >= 0, or an integer array (as
      ``optax.inject_hyperparams`` passes it). A concrete value is checked;
      a traced one (injected, under ``jit``) cannot be, and a negative one
      then acts as 0.
    mask: which leaves to freeze; as ``l1_mask`` in :func:`rda_optax.rda`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs
    ``params`` (extra keyword arguments are accepted and ignored).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rda_optax
    >>> params = {"kernel": jnp.array([[0.0, 0.5]])}
    >>> tx = optax.chain(rda_optax.prox_sgd(0.1, 0.0),
    ...                  rda_optax.freeze_zeros(start_step=0))
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"kernel": jnp.ones((1, 2))}, state, params)
    >>> optax.apply_updates(params, updates)["kernel"]  # the zero stays
    Array([[0. , 0.4]], dtype=float32)
  """
  _check_start_step(start_step)

  def init_fn(params):
    resolve_mask(mask, params, name="mask")
    return FreezeZerosState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
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

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_start_step(start_step) -> None:
  check_int("start_step", start_step, 0)
