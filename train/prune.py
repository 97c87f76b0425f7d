"""Magnitude pruning (Han et al. 2015), the prune-finetune baseline."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import rda_optax


def magnitude_prune(params: Any, target: float, scope: str = "layer") -> Any:
  """Zeroes the smallest-magnitude kernel weights to reach ``target``.

  ``scope="layer"`` prunes every kernel to ``target`` on its own (Han et
  al.'s per-layer thresholds with one rate); ``"global"`` uses one threshold
  over all kernels, so small layers may be pruned less or more. Leaves
  outside the default l1 mask (biases, BatchNorm) are kept.
  """
  if not 0 <= target < 1:
    raise ValueError(f"target must be in [0, 1), got {target!r}")
  mask = rda_optax.default_l1_mask(params)
  leaves, treedef = jax.tree.flatten(params)
  sel = treedef.flatten_up_to(mask)
  if scope == "global":
    mags = np.concatenate([np.abs(np.asarray(p, np.float32)).ravel()
                           for p, s in zip(leaves, sel) if s])
    k = int(round(target * mags.size))
    thr = np.partition(mags, k - 1)[k - 1] if k > 0 else -1.0
    thresholds = [thr if s else None for s in sel]
  elif scope == "layer":
    thresholds = []
    for p, s in zip(leaves, sel):
      if not s:
        thresholds.append(None)
        continue
      m = np.abs(np.asarray(p, np.float32)).ravel()
      k = int(round(target * m.size))
      thresholds.append(np.partition(m, k - 1)[k - 1] if k > 0 else -1.0)
  else:
    raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
  out = [p if t is None else jnp.where(jnp.abs(p) <= t, jnp.zeros_like(p), p)
         for p, t in zip(leaves, thresholds)]
  return jax.tree.unflatten(treedef, out)
