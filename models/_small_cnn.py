"""A small CNN for 8x8 digits (scikit-learn) and 28x28 MNIST."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models._layers import as_nhwc, batch_norm, chain_units
from models._layers import default_kernel_init


# (kernel, BatchNorm) in order: the channel units.
_LAYERS = (("conv0", "bn0"), ("conv1", "bn1"), ("hidden", "bn_hidden"))


class SmallCNN(nn.Module):
  """[3x3 conv, BN, ReLU] x2 (widths 32, 64), Dense(128)-BN-ReLU, classifier.

  Feature maps larger than 8x8 are max-pooled after each conv, so 28x28 MNIST
  reaches the flatten at 7x7 while 8x8 digits keep full resolution; the
  flatten keeps the spatial layout that small digit images depend on.

  Every kernel but the classifier's feeds a BatchNorm, so the activations do
  not depend on the kernels' scale: a large initialization scale (the paper's
  ``s`` up to 60) changes the gradients, not the forward pass.

  Attributes:
    num_classes: width of the classifier ("classifier" Dense, with bias).
    dtype: compute dtype; parameters are always float32.
    kernel_init: initializer of every conv and dense kernel.
    widths: ``(conv0, conv1, hidden)`` widths; default ``(32, 64, 128)``.
      Slimmed models (``models.slim``) set it.
  """
  num_classes: int
  dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init
  widths: Optional[Sequence[int]] = None

  def channel_units(self) -> tuple:
    """The channel units (``rda_optax.ChannelUnit``): each kernel with its
    BatchNorm, read by the next kernel (``hidden`` through the flatten)."""
    return chain_units(_LAYERS)

  def widths_for(self, counts: Mapping[str, int]) -> tuple[int, ...]:
    """``widths`` for ``counts[unit key]`` channels per unit."""
    return tuple(counts[k] for k, _ in _LAYERS)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps an NHWC batch to float32 logits of shape (N, num_classes)."""
    x = as_nhwc(x, self.dtype)
    widths = tuple(self.widths or (32, 64, 128))
    if len(widths) != 3:
      raise ValueError(f"SmallCNN takes 3 widths, got {widths!r}")
    for i, width in enumerate(widths[:2]):
      # No conv bias: the following BatchNorm's offset subsumes it.
      x = nn.Conv(width, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                  param_dtype=jnp.float32, kernel_init=self.kernel_init,
                  name=f"conv{i}")(x)
      x = nn.relu(batch_norm(train, self.dtype, f"bn{i}")(x))
      if max(x.shape[1:3]) > 8:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(widths[2], use_bias=False, dtype=self.dtype,
                 param_dtype=jnp.float32, kernel_init=self.kernel_init,
                 name="hidden")(x)
    x = nn.relu(batch_norm(train, self.dtype, "bn_hidden")(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=self.kernel_init, name="classifier")(x)
    return x.astype(jnp.float32)
