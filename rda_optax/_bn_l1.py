"""Network slimming's sparsity term on normalization scales (Liu et al. 2017).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rda_optax._common import NO_PARAMS_MSG, check_hyper
from rda_optax._masks import MaskOrFn, resolve_mask


def _key_name(entry: Any) -> str:
  # Dict entries (Linen variables, NNX state) carry ``key``; attribute
  # entries (dataclass-style pytrees) carry ``name``.
  return str(getattr(entry, "key", getattr(entry, "name", "")))


def _scale_leaves(params: Any) -> Any:
  # Flax names the scale of BatchNorm, LayerNorm and GroupNorm "scale" in
  # both Linen and NNX; a 1-D shape keeps a user leaf of another kind that
  # happens to share the name (a kernel called "scale") out.
  return jax.tree_util.tree_map_with_path(
      lambda path, p: bool(path) and _key_name(path[-1]) == "scale"
      and np.ndim(p) == 1, params)


def add_bn_l1(strength: optax.ScalarOrSchedule, *,
              mask: MaskOrFn = None) -> optax.GradientTransformationExtraArgs:
  r"""Adds the l1 subgradient of the normalization scales: network slimming.

  Liu et al. (2017), eq. (1), train with the penalty
  :math:`s \sum_{\gamma \in \Gamma} |\gamma|` on the BatchNorm scales
  :math:`\Gamma`; channels whose scale ends small are pruned. This adds its
  subgradient to the incoming updates (gradients):

  .. math::
    g_\gamma \leftarrow g_\gamma + s \operatorname{sign}(\gamma),
    \qquad \operatorname{sign}(0) = 0,

  so chain it **before** the optimizer, e.g.
  ``optax.chain(add_bn_l1(1e-4), optax.sgd(0.1, momentum=0.9))``. Leaves
  outside ``mask`` pass through unchanged; updates keep their dtype.

  Args:
    strength: ``s``, >= 0; float, array or schedule of the 0-based step
      (e.g. 0 after the pruning step, to fine-tune without the penalty).
    mask: which leaves are scales; a pytree of bools like the params (or a
      prefix of them), or a callable of the params returning one. Default:
      every 1-D leaf whose last path entry is named ``"scale"``: the scales
      of Flax BatchNorm (and LayerNorm, GroupNorm), Linen or NNX, whatever
      the module names. Other libraries name them differently (Equinox's
      ``BatchNorm.weight``): pass a mask there.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs
    ``params`` (extra keyword arguments are accepted and ignored). Its
    state is ``optax.ScaleByScheduleState``: the step count.

  Examples:
    >>> import jax, jax.numpy as jnp, rda_optax
    >>> params = {"bn": {"scale": jnp.array([0.5, -2.0, 0.0]),
    ...                  "bias": jnp.ones(3)},
    ...           "conv": {"kernel": jnp.ones((3, 3))}}
    >>> tx = rda_optax.add_bn_l1(0.1)
    >>> grads = jax.tree.map(jnp.zeros_like, params)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["bn"]["scale"]  # s sign(gamma); a zero scale gets nothing
    Array([ 0.1, -0.1,  0. ], dtype=float32)
    >>> float(jnp.abs(updates["conv"]["kernel"]).sum())
    0.0

  References:
    Liu, Li, Shen, Huang, Yan, Zhang, "Learning efficient convolutional
    networks through network slimming", ICCV 2017.
  """
  check_hyper("strength", strength, positive=False)
  select = _scale_leaves if mask is None else mask

  def init_fn(params):
    resolve_mask(select, params, name="mask")
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    s = strength(state.count) if callable(strength) else strength
    m = resolve_mask(select, params, name="mask")
    updates = jax.tree.map(
        lambda u, w, sel: u + (s * jnp.sign(w)).astype(u.dtype) if sel else u,
        updates, params, m)
    return updates, optax.ScaleByScheduleState(
        count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
