"""VGG with BatchNorm (Simonyan & Zisserman, 2015) in the CIFAR form.

The CIFAR form keeps the conv stacks and replaces the three 4096-wide dense
layers with global average pooling and a single 512 -> num_classes Dense, as
in the CIFAR VGG-16/19 models the paper's experiments follow.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models._layers import as_nhwc, batch_norm, chain_units
from models._layers import default_kernel_init

# Conv widths; "M" is a 2x2 stride-2 max-pool.
CONFIGS = {
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
         512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class VGG(nn.Module):
  """VGG-``depth`` with BatchNorm: [3x3 conv (with bias), BN, ReLU] stacks.

  Attributes:
    num_classes: width of the classifier ("classifier" Dense, with bias).
    depth: 16 or 19.
    dtype: compute dtype; parameters are always float32.
    kernel_init: initializer of every conv and dense kernel.
    widths: the conv widths in order (13 for depth 16, 16 for depth 19);
      default: ``CONFIGS[depth]``. Slimmed models (``models.slim``) set it.
  """
  num_classes: int
  depth: int = 16
  dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init
  widths: Optional[Sequence[int]] = None

  def channel_units(self) -> tuple:
    """The channel units (``rda_optax.ChannelUnit``): ``conv{k}`` with
    ``bn{k}``, read by ``conv{k+1}`` (the last by the classifier)."""
    return chain_units([(f"conv{k}", f"bn{k}") for k in range(self._n())])

  def widths_for(self, counts: Mapping[str, int]) -> tuple[int, ...]:
    """``widths`` for ``counts[unit key]`` channels per unit."""
    return tuple(counts[f"conv{k}"] for k in range(self._n()))

  def _n(self) -> int:
    if self.depth not in CONFIGS:
      raise ValueError(
          f"depth must be one of {sorted(CONFIGS)}, got {self.depth!r}")
    return sum(v != "M" for v in CONFIGS[self.depth])

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps an NHWC batch to float32 logits of shape (N, num_classes)."""
    if self.depth not in CONFIGS:
      raise ValueError(
          f"depth must be one of {sorted(CONFIGS)}, got {self.depth!r}")
    x = as_nhwc(x, self.dtype)
    widths = tuple(self.widths or (v for v in CONFIGS[self.depth] if v != "M"))
    n_convs = sum(v != "M" for v in CONFIGS[self.depth])
    if len(widths) != n_convs:
      raise ValueError(
          f"VGG-{self.depth} takes {n_convs} widths, got {len(widths)}")
    k = 0
    for v in CONFIGS[self.depth]:
      if v == "M":
        # "SAME" pads with -inf, i.e. ceil mode: five pools would take a
        # 28x28 input to 0x0 with "VALID"; on even sizes the two agree.
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        continue
      x = nn.Conv(widths[k], (3, 3), padding=1, dtype=self.dtype,
                  param_dtype=jnp.float32, kernel_init=self.kernel_init,
                  name=f"conv{k}")(x)
      x = nn.relu(batch_norm(train, self.dtype, f"bn{k}")(x))
      k += 1
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=self.kernel_init, name="classifier")(x)
    return x.astype(jnp.float32)
