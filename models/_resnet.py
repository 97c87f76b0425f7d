"""ResNet-18 (He et al., 2016) in its CIFAR and ImageNet forms."""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rda_optax import ChannelUnit
from models._layers import as_nhwc, batch_norm, default_kernel_init

# (blocks, width) per stage of ResNet-18.
_STAGES = ((2, 64), (2, 128), (2, 256), (2, 512))
_STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
  """Two 3x3 convs plus a shortcut.

  The shortcut is the identity unless the block changes the resolution or the
  width, in which case it is a strided 1x1 conv + BatchNorm ("option B").

  Attributes:
    features: output channels.
    strides: stride of the first conv and of the projection.
    dtype: compute dtype.
    kernel_init: initializer of both conv kernels and the projection kernel.
    inner: width of ``conv1`` (inside the block); default ``features``.
  """
  features: int
  strides: int = 1
  dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init
  inner: Optional[int] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(
        nn.Conv, use_bias=False, dtype=self.dtype,
        param_dtype=jnp.float32, kernel_init=self.kernel_init)
    # Explicit padding 1 (not "SAME") so strided convs sample the same pixels
    # as the PyTorch reference models the paper's numbers come from.
    y = conv(self.inner or self.features, (3, 3), strides=self.strides,
             padding=1, name="conv1")(x)
    y = nn.relu(batch_norm(train, self.dtype, "bn1")(y))
    y = conv(self.features, (3, 3), padding=1, name="conv2")(y)
    y = batch_norm(train, self.dtype, "bn2")(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = conv(self.features, (1, 1), strides=self.strides, padding=0,
               name="shortcut_conv")(x)
      x = batch_norm(train, self.dtype, "shortcut_bn")(x)
    return nn.relu(y + x)


class ResNet18(nn.Module):
  """ResNet-18: BasicBlocks [2, 2, 2, 2] with widths 64/128/256/512.

  ``stem="cifar"`` is the usual small-image form (3x3 stride-1 stem, no
  max-pool; 11,173,962 parameters for 10 classes); ``stem="imagenet"`` is the
  original (7x7 stride-2 stem and 3x3 stride-2 max-pool; 11,689,512 for 1000
  classes). Both end in global average pooling, so any input size works.

  Attributes:
    num_classes: width of the classifier ("classifier" Dense, with bias).
    stem: "cifar" or "imagenet".
    dtype: compute dtype; parameters are always float32.
    kernel_init: initializer of every conv and dense kernel.
    widths: per stage ``(stream, inner_0, inner_1)``: the residual stream's
      width (the stem's, each block's ``conv2`` and projection) and the
      ``conv1`` width of each block; default ``(w, w, w)`` with ``w`` =
      64/128/256/512. Slimmed models (``models.slim``) set it.
  """
  num_classes: int
  stem: str = "cifar"
  dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init
  widths: Optional[Sequence[Sequence[int]]] = None

  def channel_units(self) -> tuple[ChannelUnit, ...]:
    """The channel units (``rda_optax.ChannelUnit``).

    Stage ``i``'s residual stream is one unit, ``stream{i}``: its writers
    are the stem (stage 1) or the projection, and each block's ``conv2``,
    whose BatchNorm outputs are summed into it; the stage's blocks read it
    (``conv1``; but the first block of stages 2-4 reads the previous
    stream), and so does the next stage's first block (``conv1`` and
    projection) or the classifier. Each block's ``conv1``
    with ``bn1`` is a unit read by its ``conv2``.
    """
    units = []
    for i, (blocks, _) in enumerate(_STAGES):
      blk = [f"layer{i + 1}_{j}" for j in range(blocks)]
      first = "stem" if i == 0 else f"{blk[0]}/shortcut"
      if i + 1 < len(_STAGES):
        nxt = f"layer{i + 2}_0"
        after = (f"{nxt}/conv1/kernel", f"{nxt}/shortcut_conv/kernel")
      else:
        after = ("classifier/kernel",)
      units.append(ChannelUnit(
          f"stream{i + 1}",
          writers=(f"{first}_conv/kernel", *(f"{b}/conv2/kernel" for b in blk)),
          norms=(f"{first}_bn", *(f"{b}/bn2" for b in blk)),
          # Block 0 of stages 2-4 reads the previous stage's stream.
          readers=(*(f"{b}/conv1/kernel" for b in blk[1 if i else 0:]),
                   *after)))
      units += [ChannelUnit(f"{b}/conv1", (f"{b}/conv1/kernel",), (f"{b}/bn1",),
                            (f"{b}/conv2/kernel",)) for b in blk]
    return tuple(units)

  def widths_for(self, counts: Mapping[str, int]) -> tuple:
    """``widths`` for ``counts[unit key]`` channels per unit."""
    return tuple((counts[f"stream{i + 1}"],
                  *(counts[f"layer{i + 1}_{j}/conv1"] for j in range(blocks)))
                 for i, (blocks, _) in enumerate(_STAGES))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps an NHWC batch to float32 logits of shape (N, num_classes)."""
    if self.stem not in _STEMS:
      raise ValueError(f"stem must be one of {_STEMS}, got {self.stem!r}")
    x = as_nhwc(x, self.dtype)
    widths = tuple(tuple(w) for w in (
        self.widths or [(w, w, w) for _, w in _STAGES]))
    if len(widths) != len(_STAGES) or any(len(w) != 3 for w in widths):
      raise ValueError(
          f"widths must be 4 stages of (stream, inner_0, inner_1), got "
          f"{self.widths!r}")
    conv = functools.partial(
        nn.Conv, widths[0][0], use_bias=False, dtype=self.dtype,
        param_dtype=jnp.float32, kernel_init=self.kernel_init,
        name="stem_conv")
    if self.stem == "cifar":
      x = conv((3, 3), padding=1)(x)
    else:
      x = conv((7, 7), strides=2, padding=3)(x)
    x = nn.relu(batch_norm(train, self.dtype, "stem_bn")(x))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, (blocks, _) in enumerate(_STAGES):
      for j in range(blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = BasicBlock(widths[i][0], strides, self.dtype, self.kernel_init,
                       inner=widths[i][1 + j],
                       name=f"layer{i + 1}_{j}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=self.kernel_init, name="classifier")(x)
    return x.astype(jnp.float32)
