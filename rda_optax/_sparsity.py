"""Sparsity metrics: the fraction of exact zeros, as the paper counts it."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rda_optax._masks import MaskOrFn, resolve_mask


class LeafSparsity(NamedTuple):
  """One row of :func:`sparsity_report`."""
  path: str
  zeros: int
  size: int

  @property
  def sparsity(self) -> float:
    return self.zeros / self.size if self.size else 0.0


def sparsity(params: Any, mask: MaskOrFn = None) -> jax.Array:
  """Global fraction of exactly-zero entries among the masked leaves.

  Default mask: leaves with ``ndim >= 2`` (conv and dense kernels), the
  paper's definition. Pass ``mask=lambda p: jax.tree.map(lambda _: True, p)``
  for the fraction over all parameters. Returns a float32 0-d array so it can
  run inside ``jit`` on sharded params; ``float()`` it on the host. Empty
  selections give 0.0.

  Examples:
    >>> import jax.numpy as jnp
    >>> import rda_optax
    >>> params = {"kernel": jnp.array([[0.0, 1.0], [0.0, 0.0]]),
    ...           "bias": jnp.zeros(2)}
    >>> rda_optax.sparsity(params)  # kernels only: 3 zeros of 4
    Array(0.75, dtype=float32)
  """
  m = resolve_mask(mask, params, name="mask")
  sel = [p for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(m)) if s]
  if not sel:
    return jnp.zeros([], jnp.float32)
  zeros = sum(jnp.sum(p == 0, dtype=jnp.int32).astype(jnp.float32) for p in sel)
  size = float(sum(p.size for p in sel))
  return zeros / size


def sparsity_report(params: Any, mask: MaskOrFn = None) -> list[LeafSparsity]:
  """Per-leaf ``(path, zeros, size)`` for the masked leaves, in tree order.

  Runs on the host (it returns Python ints); paths use
  ``jax.tree_util.keystr``, e.g. ``['params']['Conv_0']['kernel']``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import rda_optax
    >>> params = {"conv": {"kernel": jnp.array([[0.0, 1.0], [0.0, 0.0]])},
    ...           "dense": {"kernel": jnp.ones((2, 3))}}
    >>> for row in rda_optax.sparsity_report(params):
    ...   print(row.path, row.zeros, row.size, row.sparsity)
    ['conv']['kernel'] 3 4 0.75
    ['dense']['kernel'] 0 6 0.0
  """
  m = resolve_mask(mask, params, name="mask")
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  rows = []
  for (path, p), s in zip(flat, jax.tree.leaves(m)):
    if s:
      rows.append(LeafSparsity(jax.tree_util.keystr(path),
                               int(jnp.sum(p == 0)), int(jnp.size(p))))
  return rows
