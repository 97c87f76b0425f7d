"""Exact channel slimming, and FLOPs from shapes.

A channel is *dead* when its BatchNorm has ``scale == 0`` and ``bias == 0``
exactly (in ``variables["params"]``). In eval mode BatchNorm computes
``(x - mean) * (scale * rsqrt(var + eps)) + bias``, which is then exactly 0
for every finite input, whatever the producing kernel holds; ReLU, max-pool
and mean-pool keep it 0, so every consumer multiplies it by its weights and
adds exact zeros. Removing the channel from the producing conv, from its
BatchNorm and from the consumer's input therefore leaves every remaining sum
the same up to the order of its terms.

Why not also remove channels with ``scale == 0`` but ``bias != 0``: such a
channel carries the constant ``relu(bias)``, and folding a constant input into
the next conv is exact only away from the borders, where zero padding makes
the conv see a mix of the constant and zeros (and in a ResNet it would add
to the residual stream). ``rda_optax.channel_groups`` puts the BatchNorm scale
and bias into the channel's group, so group RDA zeroes both together.

ResNet's residual stream: a stream channel is removed only where every layer
writing into it (the stem or the stage's projection, and each block's
``conv2``) has it dead; then ``relu(0 + 0)`` keeps it 0 through the whole
stage. A stream channel that one contributor still writes stays, with its
dead contributors' zeros (exact, but not smaller); ``channel_groups`` ties the
contributors into one group so that they die together. Channels inside a
block (``conv1``/``bn1``) are removed freely.

If every channel of a layer is dead, one (dead) channel is kept, so no array
has a zero-size axis; it still outputs exact zeros.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from rda_optax import ChannelUnit, FlopsModel


def slim(model: nn.Module, variables: Any, *,
         multiple: int = 1) -> tuple[nn.Module, dict]:
  """Removes every dead channel: a physically smaller model and variables.

  Args:
    model: a ``SmallCNN``, ``VGG`` or ``ResNet18`` (as from ``models.get``),
      possibly already slimmed; or any Flax module with a ``widths`` field
      and a ``channel_units()`` method, and optionally
      ``widths_for(counts)`` giving ``widths`` for ``counts[unit key]``
      channels per unit (default: the counts in unit order).
    variables: its variables, ``{"params": ..., "batch_stats": ...}``.
    multiple: keep enough dead channels (the first ones) that every width is
      a multiple of this, or the layer's full width. Kept dead channels
      still output exact zeros, so the result is as exact; widths such as 24
      or 41 can run slower on a CPU than the dense 32 or 64 (measured in
      ``docs/RESULTS.md``).

  Returns:
    ``(slim_model, slim_variables)``: the same class with per-layer
    ``widths``, and variables with the dead channels cut out of each
    producing kernel (and conv bias), its BatchNorm (scale, bias, mean, var)
    and the consuming kernel's input axis. In eval mode the slim model's
    outputs equal the original's up to float rounding (summation order).

  Raises:
    TypeError: for a model without ``channel_units()``.
    ValueError: if ``multiple < 1``.

  Examples:
    >>> import jax, models
    >>> m = models.get("small_cnn")
    >>> v = models.init(m, jax.random.key(0), (8, 8, 1))
    >>> v["params"]["bn0"]["scale"] = v["params"]["bn0"]["scale"].at[:8].set(0)
    >>> v["params"]["bn0"]["bias"] = v["params"]["bn0"]["bias"].at[:8].set(0)
    >>> small, sv = models.slim(m, v)
    >>> small.widths, sv["params"]["conv1"]["kernel"].shape
    ((24, 64, 128), (3, 3, 24, 64))
    >>> models.slim(m, v, multiple=16)[0].widths
    (32, 64, 128)
  """
  small, s = _plan(model, variables, multiple)
  return small, s.variables()


class Slicing(NamedTuple):
  """A slim model and the cuts that made it, for any tree shaped like the
  variables (:func:`slicer`).

  ``model`` is the slim model; ``cut(path, x)`` cuts the array ``x`` of
  the variable at ``path`` (``"conv1/kernel"`` of ``params``, or
  ``"bn1/mean"`` of ``batch_stats``) as that variable was cut; a path that
  was not cut returns ``x`` unchanged. ``uncut(path, small, shape)`` is its
  inverse: ``small`` put back at the kept positions of an array of the
  full ``shape``, zeros elsewhere (a removed channel's entries).
  """
  model: nn.Module
  cut: Callable[[str, Any], np.ndarray]
  uncut: Callable[[str, Any, Sequence[int]], np.ndarray]


def slicer(model: nn.Module, variables: Any, *, multiple: int = 1) -> Slicing:
  """:func:`slim`'s cuts as functions, to cut other trees of the params'
  shapes the same way: an optimizer's running averages and momenta, so
  that training goes on on the slim model with the state of the channels
  it kept.

  Examples:
    >>> import jax, jax.numpy as jnp, models
    >>> m = models.get("small_cnn")
    >>> v = models.init(m, jax.random.key(0), (8, 8, 1))
    >>> p = v["params"]["bn_hidden"]  # hidden channels 0-99 dead
    >>> p["scale"], p["bias"] = p["scale"].at[:100].set(0), p["bias"].at[:100].set(0)
    >>> s = models.slicer(m, v)
    >>> momentum = jnp.ones((128, 10))  # like classifier/kernel
    >>> s.model.widths, s.cut("classifier/kernel", momentum).shape
    ((32, 64, 28), (28, 10))
    >>> s.uncut("classifier/kernel", jnp.ones((28, 10)), (128, 10)).sum()
    np.float32(280.0)
  """
  small, s = _plan(model, variables, multiple)
  return Slicing(small, s.cut, s.uncut)


def _plan(model, variables, multiple):
  if not (isinstance(multiple, int) and multiple >= 1):
    raise ValueError(f"slim: multiple must be an int >= 1, got {multiple!r}")
  units = channel_units(model, "slim")
  s = _Slicer(variables, multiple)
  counts = {}
  for unit in units:
    keep = _keep(s.dead_unit(unit), multiple)
    s.unit(unit, keep)
    counts[unit.key] = len(keep)
  widths_for = getattr(model, "widths_for", None)
  widths = (widths_for(counts) if widths_for is not None
            else tuple(counts[u.key] for u in units))
  return model.clone(widths=widths), s


def channel_units(model: Any, caller: str = "channel_units"
                  ) -> tuple[ChannelUnit, ...]:
  """The channel units a model declares (its ``channel_units()``).

  ``rda_optax.channel_groups(params, units=...)`` groups each unit's
  channels; :func:`slim` cuts its dead ones.

  Raises:
    TypeError: for a model that declares none.

  Examples:
    >>> import models
    >>> u = models.channel_units(models.get("resnet18"))[0]
    >>> u.key, u.writers
    ('stream1', ('stem_conv/kernel', 'layer1_0/conv2/kernel', \
'layer1_1/conv2/kernel'))
  """
  fn = getattr(model, "channel_units", None)
  if not callable(fn):
    raise TypeError(
        f"{caller}: expected SmallCNN, VGG or ResNet18 (or a model with "
        f"channel_units()), got {type(model).__name__}")
  return tuple(fn())


def dead_channels(variables: Any) -> dict[str, np.ndarray]:
  """``{BatchNorm path: bool array}``: which channels are dead (see module)."""
  s = _Slicer(variables)
  return {p[:-len("/scale")]: s.dead(p[:-len("/scale")])
          for p in s.params if p.endswith("/scale")}


def flops(model: nn.Module, input_shape: Sequence[int]) -> int:
  """Multiply-adds of one image through the convs and dense layers.

  Counted from shapes alone (no compute): a conv producing ``H x W x C_out``
  with a ``k x k`` kernel over ``C_in`` channels costs ``H W C_out k^2
  C_in``; a dense layer ``C_in C_out``. BatchNorm (foldable into the conv at
  inference), ReLU, pooling and biases are not counted.

  Examples:
    >>> import models
    >>> models.flops(models.get("small_cnn"), (8, 8, 1))
    1723648
  """
  return int(sum(layer_flops(model, input_shape).values()))


def layer_flops(model: nn.Module, input_shape: Sequence[int]
                ) -> dict[str, int]:
  """``{kernel path: multiply-adds}`` of each conv and dense layer, as
  :func:`flops` counts them; the path is the params' (``"conv1/kernel"``).

  Examples:
    >>> import models
    >>> models.layer_flops(models.get("small_cnn"), (8, 8, 1))["conv1/kernel"]
    1179648
  """
  total: dict[str, int] = {}

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    m = context.module
    if context.method_name == "__call__" and isinstance(m, (nn.Conv,
                                                            nn.Dense)):
      fan_in = args[0].shape[-1]
      if isinstance(m, nn.Conv):
        fan_in = fan_in * math.prod(m.kernel_size) // m.feature_group_count
      # The module's scope path names its params (init: no reuse issue).
      path = "/".join((*m.scope.path, "kernel"))
      total[path] = total.get(path, 0) + math.prod(out.shape[1:]) * fan_in
    return out

  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  with nn.intercept_methods(count):
    jax.eval_shape(functools.partial(model.init, train=False),
                   jax.random.key(0), x)
  return total


def flops_polynomial(model: nn.Module, input_shape: Sequence[int]
                     ) -> FlopsModel:
  r"""FLOPs as an exact polynomial of the kept channels of each unit.

  A kernel layer's multiply-adds are proportional to its input channels
  times its output channels. With ``n_u`` the channels kept of unit ``u``
  (``models.channel_units``; width ``w_u``) and ``L`` a layer's FLOPs at
  full width,

  .. math::
    \mathrm{FLOPs}(n) = c + \sum_u l_u n_u + \sum_{(a, b)} p_{ab} n_a n_b,

  where a layer that reads unit ``a`` and writes unit ``b`` adds
  ``L / (w_a w_b)`` to ``p_ab``; one that only writes ``b`` (the first
  conv, on the image) adds ``L / w_b`` to ``l_b``; one that only reads
  ``a`` (the classifier; a Dense on a flatten of ``r`` rows per channel
  too, its FLOPs ``r w_a`` times its outputs) adds ``L / w_a`` to ``l_a``;
  any other adds ``L`` to ``c``. ``models.flops`` of the model slimmed to
  ``n`` is this polynomial at ``n`` (exact: each term is an integer
  there); at ``n = w`` it is ``models.flops(model)``.

  Returns:
    ``rda_optax.FlopsModel(const, linear, pairwise)``: ``linear`` keyed by
    unit key, ``pairwise`` by ``(read unit, written unit)``; the form
    ``rda_optax.rda(..., target_flops=F, group_costs=...)`` takes.

  Raises:
    TypeError: for a model without ``channel_units()``.
    ValueError: for a kernel that two units write (or read), or a grouped
      conv on a unit.

  Examples:
    >>> import models
    >>> m = models.get("small_cnn")
    >>> const, lin, pair = models.flops_polynomial(m, (8, 8, 1))
    >>> const, lin
    (0, {'conv0': 576, 'hidden': 10})
    >>> pair
    {('conv0', 'conv1'): 576, ('conv1', 'hidden'): 64}
    >>> n = {"conv0": 32, "conv1": 64, "hidden": 128}  # full widths
    >>> const + sum(c * n[u] for u, c in lin.items()) + sum(
    ...     c * n[a] * n[b] for (a, b), c in pair.items()) == models.flops(
    ...     m, (8, 8, 1))
    True
  """
  units = channel_units(model, "flops_polynomial")
  writes = _unit_of(units, "writers")
  reads = _unit_of(units, "readers")
  widths = _unit_widths(model, input_shape, units)
  const, lin, pair = 0, {}, {}
  for path, total in layer_flops(model, input_shape).items():
    a, b = reads.get(path), writes.get(path)
    if a is None and b is None:
      const += total
    elif a is None or b is None:
      u = b if a is None else a
      lin[u] = lin.get(u, 0) + _exact_div(total, widths[u], path)
    else:
      pair[a, b] = pair.get((a, b), 0) + _exact_div(
          total, widths[a] * widths[b], path)
  return FlopsModel(const, lin, pair)


def _unit_of(units, field):
  """``{kernel path: unit key}`` of the units' writers (or readers)."""
  out = {}
  for u in units:
    for path in getattr(u, field):
      if path in out:
        raise ValueError(f"flops_polynomial: {path!r} is one of the {field} "
                         f"of both {out[path]!r} and {u.key!r}")
      out[path] = u.key
  return out


def _unit_widths(model, input_shape, units):
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.key(0), jax.ShapeDtypeStruct(
                              (1, *input_shape), jnp.float32))
  flat = traverse_util.flatten_dict(shapes["params"], sep="/")
  return {u.key: flat[u.writers[0]].shape[-1] for u in units}


def _exact_div(total, width, path):
  # Every output (input) channel costs the same, so the share is an
  # integer; a remainder means the layer is not bilinear in its channels
  # (a grouped conv), and the polynomial would be wrong.
  if total % width:
    raise ValueError(f"flops_polynomial: {path!r}'s {total} FLOPs are not "
                     f"a multiple of its {width} channels (grouped conv?)")
  return total // width


def _keep(dead: np.ndarray, multiple: int = 1) -> np.ndarray:
  """Indices of the channels to keep: the alive ones, then the first dead
  ones up to a multiple of ``multiple`` (or all), at least one."""
  alive = np.flatnonzero(~dead)
  n = min(-(-max(alive.size, 1) // multiple) * multiple, dead.size)
  extra = np.flatnonzero(dead)[:n - alive.size]
  return np.sort(np.concatenate([alive, extra]))


class _Slicer:
  """Cuts channels out of flat ``path -> array`` copies of the variables."""

  def __init__(self, variables, multiple=1):
    self.multiple = multiple
    self.params = traverse_util.flatten_dict(variables["params"], sep="/")
    self.stats = traverse_util.flatten_dict(
        variables.get("batch_stats", {}), sep="/")
    self.cuts: dict[str, list[Callable]] = {}

  def _apply(self, table, path, f):
    # Recorded, so that cut() repeats it on another tree's leaf.
    self.cuts.setdefault(path, []).append(f)
    table[path] = f(table[path])

  def cut(self, path, x):
    for f in self.cuts.get(path, ()):
      x = f(x)
    return np.asarray(x)

  def uncut(self, path, small, shape):
    # The cuts only select entries, so cutting the entries' own flat
    # indices tells where each kept entry came from.
    where = self.cut(path, np.arange(math.prod(shape)).reshape(shape))
    out = np.zeros(math.prod(shape), np.asarray(small).dtype)
    out[where.ravel()] = np.asarray(small).ravel()
    return out.reshape(shape)

  def dead(self, bn):
    return ((np.asarray(self.params[f"{bn}/scale"]) == 0)
            & (np.asarray(self.params[f"{bn}/bias"]) == 0))

  def dead_unit(self, unit):
    """Channels that output exact zeros: every norm's scale and bias are 0
    (a norm without a scale never zeroes); without norms, every writer's
    kernel column and bias."""
    if unit.norms:
      dead = []
      for n in unit.norms:
        scale = self.params.get(f"{n}/scale")
        bias = self.params.get(f"{n}/bias")
        if scale is None:
          dead.append(np.zeros(np.shape(bias), bool))
        else:
          dead.append((np.asarray(scale) == 0) & (
              True if bias is None else np.asarray(bias) == 0))
    else:
      dead = [np.all(np.asarray(self.params[w]).reshape(
          -1, np.shape(self.params[w])[-1]) == 0, axis=0)
              for w in unit.writers]
      dead += [np.asarray(self.params[sibling(w, "bias")]) == 0
               for w in unit.writers if sibling(w, "bias") in self.params]
    return np.logical_and.reduce(dead)

  def unit(self, unit, keep):
    """Cuts a unit's channels but ``keep`` out of every array carrying
    them."""
    width = np.shape(self.params[unit.writers[0]])[-1]
    along = lambda axis: functools.partial(_take, idx=keep, axis=axis)  # noqa: E731
    for w in unit.writers:
      self._apply(self.params, w, along(-1))
      if sibling(w, "bias") in self.params:
        self._apply(self.params, sibling(w, "bias"), along(0))
    for n in unit.norms:
      self.bn(n, keep)
    for r in unit.readers:
      rows = np.shape(self.params[r])[-2]
      if rows % width:
        raise ValueError(f"slim: reader {r!r} has {rows} input rows, not a "
                         f"multiple of unit {unit.key!r}'s {width} channels")
      self._apply(self.params, r, functools.partial(
          _take_rows, keep=keep, width=width))

  def bn(self, bn, keep):
    cut = functools.partial(_take, idx=keep, axis=0)
    for name in ("scale", "bias"):
      if f"{bn}/{name}" in self.params:
        self._apply(self.params, f"{bn}/{name}", cut)
    for name in ("mean", "var"):
      if f"{bn}/{name}" in self.stats:
        self._apply(self.stats, f"{bn}/{name}", cut)

  def variables(self):
    out = {"params": traverse_util.unflatten_dict(self.params, sep="/")}
    if self.stats:
      out["batch_stats"] = traverse_util.unflatten_dict(self.stats, sep="/")
    return jax.tree.map(jnp.asarray, out)


def sibling(path: str, name: str) -> str:
  """The leaf ``name`` of the module holding ``path`` (a kernel's bias)."""
  up = path.rpartition("/")[0]
  return f"{up}/{name}" if up else name


def _take_rows(k, keep, width):
  # rows // width > 1: a Dense after a channels-last flatten of (H, W, C),
  # whose rows are (h, w, c) row-major: channel c is every C-th row.
  k = np.asarray(k)
  rows = k.shape[-2]
  k = _take(k.reshape(*k.shape[:-2], rows // width, width, k.shape[-1]),
            keep, -2)
  return k.reshape(*k.shape[:-3], -1, k.shape[-1])


def _take(x, idx, axis):
  # numpy, not jnp: one eager XLA compile per distinct shape would dominate.
  return np.take(np.asarray(x), idx, axis=axis)
