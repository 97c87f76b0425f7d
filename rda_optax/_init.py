"""The paper's scaled initialization, equation (29).

RDA's second iterate is ``w_2 = -(1/gamma) S_l1(g_1)``: the initial weights
enter only through the first gradient, so their scale decides whether anything
survives the threshold (Proposition 1, Tables 1-2). The paper therefore draws
``w_1`` larger than the usual He initialization.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from rda_optax._masks import MaskOrFn, resolve_mask


def _check_scale(scale: float) -> None:
  if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
    raise ValueError(f"scale must be a finite number > 0, got {scale!r}")


def scaled_uniform(scale: float) -> jax.nn.initializers.Initializer:
  r"""Uniform initializer of equation (29).

  .. math::
    w \sim U(-c, c), \qquad c = s \sqrt{3 / n}

  with ``n`` the fan-in (``k*k*C_in`` for a conv kernel in HWIO layout, the
  input width for a dense kernel) and ``s = scale``. The standard deviation is
  ``s / sqrt(n)``: ``s = sqrt(2)`` is He-uniform; the paper uses ``s`` from 2
  to 60 (Table 3). ``c = s sqrt(3/n)`` is our reading of (29), whose formula
  was lost in the paper's text.

  Args:
    scale: ``s`` in (29), > 0.

  Returns:
    A ``jax.nn.initializers``-style ``init(key, shape, dtype)``.

  Examples:
    >>> import jax
    >>> import rda_optax
    >>> init = rda_optax.scaled_uniform(2.0)
    >>> w = init(jax.random.key(0), (3, 3, 16, 32))  # HWIO: fan-in 144
    >>> bool(abs(w).max() <= 2.0 * (3 / 144) ** 0.5)
    True
  """
  _check_scale(scale)
  # variance_scaling(v, "fan_in", "uniform") draws U(-sqrt(3v/n), sqrt(3v/n)),
  # which is (29) with v = s^2.
  return jax.nn.initializers.variance_scaling(
      float(scale) ** 2, "fan_in", "uniform")


def rescale(params: Any, key: jax.Array, scale: float,
            mask: MaskOrFn = None) -> Any:
  """Re-draws the masked leaves of ``params`` with :func:`scaled_uniform`.

  Useful for models built with another initializer. Leaves outside ``mask``
  (default: every leaf with ``ndim >= 2``) are returned unchanged; the dtype
  and shape of each leaf are kept. Fan-in assumes the last axis is the output
  axis (Flax's HWIO conv and (in, out) dense layouts).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import rda_optax
    >>> params = {"kernel": jnp.zeros((64, 10)), "bias": jnp.zeros(10)}
    >>> out = rda_optax.rescale(params, jax.random.key(0), scale=2.0)
    >>> bool(jnp.all(out["kernel"] != 0)), bool(jnp.all(out["bias"] == 0))
    (True, True)
  """
  _check_scale(scale)
  m = resolve_mask(mask, params, name="mask")
  init = scaled_uniform(scale)
  leaves, treedef = jax.tree.flatten(params)
  m_leaves = treedef.flatten_up_to(m)
  keys = jax.random.split(key, max(len(leaves), 1))
  out = [init(k, jnp.shape(p), jnp.asarray(p).dtype) if sel else p
         for k, p, sel in zip(keys, leaves, m_leaves)]
  return jax.tree.unflatten(treedef, out)
