"""The soft-threshold operator, equation (10)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def soft_threshold(x: jax.Array, tau: jax.Array | float) -> jax.Array:
  r"""Elementwise soft threshold, equation (10).

  .. math::
    S_\tau(x) = \mathrm{sign}(x) \max(|x| - \tau, 0)

  Entries with ``|x| <= tau`` come out as exactly ``+0.0`` (never ``-0.0`` or
  a rounding residue), because sparsity is counted as exact zeros. XLA
  flushes subnormal floats to zero, so ``|x| < 1.2e-38`` (float32) also
  gives 0 even when ``tau = 0``.
  """
  x = jnp.asarray(x)
  tau = jnp.asarray(tau, dtype=x.dtype)
  return jnp.where(jnp.abs(x) > tau, x - jnp.sign(x) * tau, jnp.zeros_like(x))
