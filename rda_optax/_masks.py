"""Which leaves carry the l1 penalty.

Shared by every transformation in the package so that ``rda``, ``prox_sgd``,
``freeze_zeros`` and the sparsity metrics agree on what a "weight" is.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import jax
import numpy as np
import optax

MaskOrFn = Union[None, Any, Callable[[Any], Any]]


def default_l1_mask(params: Any) -> Any:
  """``True`` for leaves with ``ndim >= 2``: conv and dense kernels.

  Biases and BatchNorm scales/offsets are 1-D and stay unpenalized, as in the
  paper's sparsity counts (which are over weights only).

  Examples:
    >>> import jax.numpy as jnp
    >>> import rda_optax
    >>> rda_optax.default_l1_mask({"kernel": jnp.ones((3, 4)),
    ...                            "bias": jnp.ones(4)})
    {'bias': False, 'kernel': True}
  """
  return jax.tree.map(lambda p: len(np.shape(p)) >= 2, params)


def resolve_mask(mask: MaskOrFn, params: Any, *, name: str = "l1_mask") -> Any:
  """Returns a pytree of Python bools with the structure of ``params``.

  As optax's own ``mask`` arguments: ``mask`` may be a prefix of the params
  (a bool covers a whole sub-tree), or a callable of the params returning
  one. Placeholders that optax puts in the params are accepted: the
  ``optax.MaskedNode`` of ``optax.masked``/``optax.partition`` covers any
  part of the mask, and a params tree without leaves (the placeholder of
  ``optax.tree_utils.tree_map_params``, or everything masked out) selects
  nothing.

  Raises:
    ValueError: if the mask does not fit the params, or a leaf is not a
      boolean. The message names ``name`` so the caller's argument is clear.
  """
  if not jax.tree.leaves(params):
    # Nothing to select; a callable mask is not called on a placeholder.
    return jax.tree.map(lambda _: False, params)
  if mask is None:
    resolved = default_l1_mask(params)
  elif callable(mask):
    resolved = mask(params)
  else:
    resolved = mask
  try:
    return _align(resolved, params, name)
  except _Mismatch:
    raise ValueError(
        f"{name}: tree structure {jax.tree.structure(resolved)} does not "
        f"match the params' structure {jax.tree.structure(params)}") from None


class _Mismatch(Exception):
  pass


def _align(mask: Any, params: Any, name: str) -> Any:
  if isinstance(params, optax.MaskedNode):
    return params
  if isinstance(mask, (bool, np.bool_)):
    return jax.tree.map(lambda _: bool(mask), params)
  m_children, m_def = _one_level(mask)
  p_children, p_def = _one_level(params)
  if m_def.num_leaves == 1 and m_def.num_nodes == 1:
    # A leaf of the mask that is not a bool: a traced or array-valued mask
    # would need a dynamic branch per element; the mask must be static so
    # each leaf compiles to one code path.
    raise ValueError(
        f"{name}: leaves must be Python bools, got {type(mask).__name__}")
  if m_def != p_def:
    raise _Mismatch()
  return jax.tree.unflatten(
      p_def, [_align(m, p, name) for m, p in zip(m_children, p_children)])


def _one_level(tree: Any) -> tuple[list[Any], Any]:
  """The children of ``tree``'s root and the root's one-level treedef."""
  return jax.tree.flatten(tree, is_leaf=lambda x: x is not tree)
