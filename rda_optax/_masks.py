"""Which leaves carry the l1 penalty.

Shared by every transformation in the package so that ``rda``, ``prox_sgd``,
``freeze_zeros`` and the sparsity metrics agree on what a "weight" is.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import jax

MaskOrFn = Union[None, Any, Callable[[Any], Any]]


def default_l1_mask(params: Any) -> Any:
  """``True`` for leaves with ``ndim >= 2``: conv and dense kernels.

  Biases and BatchNorm scales/offsets are 1-D and stay unpenalized, as in the
  paper's sparsity counts (which are over weights only).
  """
  return jax.tree.map(lambda p: jax.numpy.ndim(p) >= 2, params)


def resolve_mask(mask: MaskOrFn, params: Any, *, name: str = "l1_mask") -> Any:
  """Returns a pytree of Python bools with the structure of ``params``.

  Raises:
    ValueError: if the mask's tree does not match ``params``, or a leaf is not
      a boolean. The message names ``name`` so the caller's argument is clear.
  """
  if mask is None:
    resolved = default_l1_mask(params)
  elif callable(mask):
    resolved = mask(params)
  else:
    resolved = mask
  p_def = jax.tree.structure(params)
  m_def = jax.tree.structure(resolved)
  if p_def != m_def:
    raise ValueError(
        f"{name}: tree structure {m_def} does not match the params' "
        f"structure {p_def}")
  leaves = jax.tree.leaves(resolved)
  bad = [type(l).__name__ for l in leaves if not isinstance(l, bool)]
  if bad:
    # A traced or array-valued mask would force a dynamic branch per element;
    # the mask must be static so each leaf compiles to one code path.
    raise ValueError(
        f"{name}: leaves must be Python bools, got {sorted(set(bad))}")
  return resolved
