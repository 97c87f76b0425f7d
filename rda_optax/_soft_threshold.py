"""The soft-threshold operator, equation (10)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rda_optax._common import check_hyper


def soft_threshold(x: jax.Array, tau: jax.Array | float) -> jax.Array:
  r"""Elementwise soft threshold, equation (10).

  .. math::
    S_\tau(x) = \mathrm{sign}(x) \max(|x| - \tau, 0)

  Entries with ``|x| <= tau`` come out as exactly ``+0.0`` (never ``-0.0`` or
  a rounding residue), because sparsity is counted as exact zeros. XLA
  flushes subnormal floats to zero, so ``|x| < 1.2e-38`` (float32) also
  gives 0 even when ``tau = 0``.

  Complex ``x``: the standard complex form, ``sign(x) = x / |x|``, i.e. the
  modulus is shrunk by ``tau`` and the phase kept (the proximal map of
  ``tau * |x|`` with ``|x|`` the modulus); ``tau`` is real.

  Non-finite in, non-finite out: a NaN in ``x`` or ``tau`` gives NaN, never
  0, so a NaN gradient cannot pass for a thresholded weight. ``tau`` must be
  ``>= 0``: a concrete negative ``tau`` raises ``ValueError``; a traced one
  (under ``jit``) cannot be checked and gives NaN.

  Args:
    x: input array, real or complex.
    tau: threshold ``>= 0``; a real scalar or an array broadcastable to
      ``x``.

  Returns:
    ``S_tau(x)``, with the dtype of ``x``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import rda_optax
    >>> rda_optax.soft_threshold(jnp.array([-3.0, -0.5, 0.5, 2.0]), 1.0)
    Array([-2.,  0.,  0.,  1.], dtype=float32)
    >>> rda_optax.soft_threshold(jnp.array([jnp.nan, 0.5]), 1.0)
    Array([nan,  0.], dtype=float32)
    >>> rda_optax.soft_threshold(jnp.array([3 + 4j, 0.3 + 0.4j]), 1.0)
    Array([2.4+3.2j, 0. +0.j ], dtype=complex64)
  """
  check_hyper("soft_threshold: tau", tau, positive=False)
  x = jnp.asarray(x)
  # A complex tau would make "tau >= 0" meaningless; the threshold applies
  # to the modulus, which has the real dtype.
  tau = jnp.asarray(tau, dtype=jnp.real(x).dtype)
  return shrink(x, jnp.where(tau >= 0, tau, jnp.nan))


def shrink(x: jax.Array, tau: jax.Array) -> jax.Array:
  """:func:`soft_threshold` without the concrete check on ``tau``.

  For callers that guard ``tau`` themselves; the check would force a host
  round-trip per leaf when they run eagerly. Complex ``x`` is shrunk in
  modulus with its phase kept, as in :func:`soft_threshold`.
  """
  # The zero branch is taken only on a true comparison, so NaN (in x or tau)
  # falls through to the arithmetic and stays NaN.
  if jnp.iscomplexobj(x):
    mod = jnp.abs(x)
    # x / |x| is the phase; the zero branch covers |x| = 0, where it is 0/0.
    safe = jnp.where(mod > 0, mod, jnp.ones_like(mod))
    return jnp.where(mod <= tau, jnp.zeros_like(x),
                     x * ((mod - tau) / safe).astype(x.dtype))
  return jnp.where(jnp.abs(x) <= tau, jnp.zeros_like(x),
                   x - jnp.sign(x) * tau)
