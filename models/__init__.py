"""Flax Linen models for the experiments: ResNet-18, VGG-16/19-bn, a small CNN.

Linen keeps parameters and BatchNorm statistics as plain dict pytrees
(``variables["params"]``, ``variables["batch_stats"]``), so a training step
stays a pure jitted function of pytrees.

Every model takes an NHWC float batch of any size and channel count, is called
as ``model.apply(variables, x, train=...)``, returns float32 logits, and names
its last Dense ``"classifier"``. Conv and dense kernels are the only parameters
with ``ndim >= 2``, which is what the default l1 mask selects.

Each model takes optional per-layer ``widths`` (default: the standard ones).
Each declares its channel units (``model.channel_units()``, see
:func:`channel_units`): which kernels write a set of channels, which
BatchNorms scale it and which kernels read it. From them
``rda_optax.channel_groups`` forms the channel groups and :func:`slim` cuts
the dead channels (BatchNorm scale and bias both 0) out of a model and its
variables exactly; :func:`flops` counts multiply-adds from shapes, and
:func:`flops_polynomial` writes them as a polynomial of the kept channels.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models._layers import default_kernel_init
from models._resnet import BasicBlock, ResNet18
from models._slim import (Slicing, channel_units, dead_channels, flops,
                          flops_polynomial, layer_flops, slicer, slim)
from models._small_cnn import SmallCNN
from models._vgg import VGG

# name -> (class, keyword arguments the name fixes).
_REGISTRY = {
    "resnet18": (ResNet18, {"stem": "cifar"}),
    "resnet18_imagenet": (ResNet18, {"stem": "imagenet"}),
    "vgg16bn": (VGG, {"depth": 16}),
    "vgg19bn": (VGG, {"depth": 19}),
    "small_cnn": (SmallCNN, {}),
}


def names() -> tuple[str, ...]:
  """The names :func:`get` accepts."""
  return tuple(_REGISTRY)


def get(name: str, num_classes: int = 10, **kw: Any) -> nn.Module:
  """Builds a model by name.

  Args:
    name: one of :func:`names`.
    num_classes: classifier width, >= 1.
    **kw: further module fields, e.g. ``dtype`` or ``kernel_init``.

  Returns:
    An unbound ``flax.linen.Module``.

  Raises:
    ValueError: for an unknown name, ``num_classes < 1``, or a keyword that
      the name already fixes (e.g. ``depth`` for "vgg16bn").
  """
  if name not in _REGISTRY:
    raise ValueError(
        f"unknown model {name!r}; valid: {', '.join(names())}")
  if (isinstance(num_classes, bool) or not isinstance(num_classes, int)
      or num_classes < 1):
    raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
  cls, fixed = _REGISTRY[name]
  clash = sorted(set(fixed) & set(kw))
  if clash:
    raise ValueError(f"model {name!r} fixes {clash}; pick another name")
  return cls(num_classes=num_classes, **fixed, **kw)


def init(model: nn.Module, key: jax.Array,
         input_shape: Sequence[int]) -> dict[str, Any]:
  """Initializes ``model`` on a zero batch of one ``input_shape`` (H, W, C).

  Runs in eval mode under ``jax.jit``, so no BatchNorm statistics are
  updated and the initializers run as one compiled program.

  Returns:
    The variables dict: ``"params"`` and, for models with BatchNorm,
    ``"batch_stats"``.
  """
  x = jnp.zeros((1, *input_shape), jnp.float32)
  return jax.jit(functools.partial(model.init, train=False))(key, x)


def param_count(params: Any) -> int:
  """Number of scalars in ``params`` (arrays or ``jax.ShapeDtypeStruct``)."""
  # ``.shape`` first: np.shape would try to materialize a ShapeDtypeStruct.
  return sum(math.prod(p.shape if hasattr(p, "shape") else np.shape(p))
             for p in jax.tree.leaves(params))


__all__ = (
    "BasicBlock", "ResNet18", "SmallCNN", "Slicing", "VGG", "channel_units",
    "default_kernel_init", "dead_channels", "flops", "flops_polynomial",
    "get", "init", "layer_flops", "names",
    "param_count", "slicer", "slim",
)
