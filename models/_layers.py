"""Pieces shared by every model in the package.

Keeping BatchNorm's settings and the input handling in one place makes the
models agree on them, so an optimizer comparison across architectures is not
confounded by, e.g., a different BatchNorm momentum.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rda_optax import ChannelUnit

# Flax's own default for ``nn.Conv`` and ``nn.Dense`` kernels (LeCun normal);
# referencing it rather than rebuilding it keeps "default" meaning exactly
# what Flax means.
default_kernel_init = nn.linear.default_kernel_init


def batch_norm(train: bool, dtype: Any,
               name: Optional[str] = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1 there, i.e. 0.9 here).

  Must be called inside a compact method: the layer binds to that module.
  """
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5,
      dtype=dtype, param_dtype=jnp.float32, name=name)


def as_nhwc(x: jax.Array, dtype: Any) -> jax.Array:
  """Checks for a 4-D NHWC batch and casts it to the compute dtype."""
  if jnp.ndim(x) != 4:
    raise ValueError(
        f"expected an NHWC batch (4-D), got shape {jnp.shape(x)}")
  return jnp.asarray(x, dtype)


def chain_units(layers: Sequence[tuple[str, str]], head: str = "classifier"
                ) -> tuple[ChannelUnit, ...]:
  """The channel units of a plain chain: ``(kernel module, BatchNorm)``
  pairs in order, each read by the next kernel and the last by ``head``."""
  readers = [k for k, _ in layers[1:]] + [head]
  return tuple(ChannelUnit(k, (f"{k}/kernel",), (bn,), (f"{r}/kernel",))
               for (k, bn), r in zip(layers, readers))
