"""Channel units: which parameters carry one set of channels, declared or
traced from a model's dataflow.

A channel of a convolutional network is removable as a whole when every
weight that writes it and every normalization that scales it is zero. Which
weights those are is a property of the model's graph, not of its layer
names, so it is stated once, as :class:`ChannelUnit` s, and
:func:`channel_groups` (the group penalty) and ``models.slim`` (the cut)
both read it. :func:`trace_channel_units` finds the units of any model from
``jax.make_jaxpr`` of its apply function, so a model needs neither a naming
convention nor a declaration.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class ChannelUnit:
  """One set of channels and every parameter that carries it.

  Paths are the ``/``-joined keys of the params tree (``"conv1/kernel"``,
  ``"layer1_0/bn2"``).

  Attributes:
    key: the name of the unit's group family in :func:`channel_groups`.
    writers: paths of the kernels that write the channels, output axis last
      (``nn.Conv``/``nn.Dense`` kernels). A writer's sibling ``bias`` leaf,
      if any, is part of the unit. Several writers whose outputs are summed
      (a residual stream) share one unit.
    norms: paths of the normalization modules (BatchNorm) whose ``scale``
      and ``bias`` leaves (and ``mean``/``var`` statistics) act on the
      channels. A channel is dead when every norm has ``scale == 0`` and
      ``bias == 0`` there (without norms: when every writer's kernel
      column and bias are 0).
    readers: paths of the kernels that read the channels on their input
      axis (``kernel.shape[-2]``). An input axis ``k`` times the unit's
      width reads a channels-last flatten (``x.reshape(n, -1)`` of an NHWC
      map): channel ``c`` is every row ``c + C i``. Only ``models.slim``
      needs readers; :func:`channel_groups` ignores them.

  Examples:
    >>> import rda_optax
    >>> u = rda_optax.ChannelUnit("conv0", writers=("conv0/kernel",),
    ...                           norms=("bn0",), readers=("conv1/kernel",))
    >>> u.writers, u.norms
    (('conv0/kernel',), ('bn0',))
  """
  key: str
  writers: tuple[str, ...]
  norms: tuple[str, ...] = ()
  readers: tuple[str, ...] = ()

  def __post_init__(self):
    for f in ("writers", "norms", "readers"):
      v = getattr(self, f)
      if isinstance(v, str):
        raise TypeError(f"ChannelUnit.{f} must be a tuple of paths, got the "
                        f"string {v!r}")
      object.__setattr__(self, f, tuple(v))
    if not self.writers:
      raise ValueError(f"ChannelUnit {self.key!r} needs at least one writer")


def path_name(path) -> str:
  """``"a/b/c"`` for a ``tree_flatten_with_path`` key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx",
                                                   getattr(k, "name", k))))
                  for k in path)


def parent(path: str) -> str:
  return path.rpartition("/")[0]


def sibling(path: str, name: str) -> str:
  p = parent(path)
  return f"{p}/{name}" if p else name


def trace_channel_units(apply_fn: Callable[..., Any], params: Any,
                        *args: Any, **kwargs: Any) -> tuple[ChannelUnit, ...]:
  """The channel units of a model, found from the dataflow of its jaxpr.

  Traces ``apply_fn(params, *args, **kwargs)`` with ``jax.make_jaxpr``
  (nothing is computed; ``params`` and ``args`` may be
  ``jax.ShapeDtypeStruct`` s) and follows each channel from the kernel that
  writes it:

  * a ``conv_general_dilated`` (NHWC input, HWIO kernel) or ``dot_general``
    (``x @ kernel``) whose kernel is a params leaf starts a unit;
  * elementwise ops, size-1 broadcasts, reductions and pooling windows that
    keep the last axis, and a channels-last flatten carry it on;
  * a per-channel params vector multiplied or added onto it is the writer's
    ``bias`` (its sibling) or a normalization's ``scale``/``bias``, as
    BatchNorm computes ``(x - mean) * (scale * rsqrt(var + eps)) + bias``
    in train and eval mode alike;
  * a sum of two units' channels (a residual ``add``) merges them;
  * a kernel that contracts the channels is a reader.

  Only units with a normalization are returned (a kernel whose output feeds
  none, such as the classifier, is in no unit), in the order their first
  writer runs; a unit's ``key`` is its first writer's module path.

  Args:
    apply_fn: ``apply_fn(params, *args, **kwargs)``, e.g. ``lambda p, x:
      model.apply({"params": p, "batch_stats": stats}, x, train=False)``
      for a Flax Linen model.
    params: the params tree whose leaves the units name.
    *args: example inputs (a batch of 2 or more: with one image a
      per-sample tensor can look like a per-channel one).
    **kwargs: passed to ``apply_fn``, not traced (``train=False``).

  Returns:
    A tuple of :class:`ChannelUnit`.

  Raises:
    ValueError: when the trace cannot decide, e.g. channels read through
      an op it cannot follow (a transpose, a grouped conv), a parameter
      combined with the channels other than per channel, or a writer
      that reaches a residual sum or a reader before any normalization
      while the unit has one (its zero normalization would not zero the
      channel).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import rda_optax
    >>> def apply(p, x):  # conv -> batch norm -> relu -> dense
    ...   y = jax.lax.conv_general_dilated(
    ...       x, p["foo"]["kernel"], (1, 1), "SAME",
    ...       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ...   y = (y - y.mean((0, 1, 2))) * jax.lax.rsqrt(y.var((0, 1, 2)) + 1e-5)
    ...   y = jax.nn.relu(y * p["bar"]["scale"] + p["bar"]["bias"])
    ...   return y.reshape(len(x), -1) @ p["out"]["kernel"]
    >>> p = {"foo": {"kernel": jnp.ones((3, 3, 1, 4))},
    ...      "bar": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
    ...      "out": {"kernel": jnp.ones((5 * 5 * 4, 10))}}
    >>> rda_optax.trace_channel_units(apply, p, jnp.ones((2, 5, 5, 1)))
    (ChannelUnit(key='foo', writers=('foo/kernel',), norms=('bar',), \
readers=('out/kernel',)),)
  """
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  names = [path_name(p) for p, _ in leaves]
  fn = lambda p, *a: apply_fn(p, *a, **kwargs)  # noqa: E731
  closed = jax.make_jaxpr(fn)(params, *args)
  t = _Tracer(names)
  jaxpr = closed.jaxpr
  env = {}
  for v in jaxpr.constvars:
    env[v] = _Vec.of_shape(_shape(v))
  for i, v in enumerate(jaxpr.invars):
    env[v] = (_Vec(frozenset([names[i]]), _vector_shaped(_shape(v)))
              if i < len(names) else _Vec.of_shape(_shape(v)))
  outs = t.run(jaxpr, env)
  for o in outs:
    t.escape(o, "the output")
  return t.units()


# --- the abstract values of the trace ----------------------------------------

@dataclasses.dataclass(frozen=True)
class _Ch:
  """A tensor whose last axis is the channels of unit ``unit``."""
  unit: int
  # Writers not yet scaled by a normalization on the way here.
  raw: frozenset = frozenset()
  # The channels are the fastest part of a flattened last axis.
  flat: bool = False


@dataclasses.dataclass(frozen=True)
class _Vec:
  """Anything else: the params leaves it is computed from, whether it is
  constant along every axis but the last, and the units whose channels it
  mixes (reduced over or moved; a kernel must not read those)."""
  sources: frozenset = frozenset()
  per_channel: bool = False
  mixes: frozenset = frozenset()
  via: str = ""

  @staticmethod
  def of_shape(shape):
    return _Vec(per_channel=_vector_shaped(shape))


def _shape(v) -> tuple:
  return tuple(getattr(v.aval, "shape", ()))


def _vector_shaped(shape) -> bool:
  return all(d == 1 for d in shape[:-1])


# Ops that act entry by entry (with size-1 broadcasting): channel c of the
# output depends on channel c of the inputs only.
_ELEMENTWISE = frozenset("""
    abs add add_any acos acosh asin asinh atan atan2 atanh cbrt ceil clamp
    convert_element_type copy copy_p cos cosh div eq erf erf_inv erfc exp
    exp2 expm1 floor ge gt integer_pow is_finite le log log1p logistic lt max
    min mul ne neg nextafter not or pow reduce_precision rem round rsqrt
    select_n sign sin sinh sqrt square stop_gradient sub tan tanh and xor
    """.split())
_REDUCTIONS = frozenset(("reduce_sum", "reduce_max", "reduce_min",
                         "reduce_prod", "argmax", "argmin"))
# Params holding a sub-jaxpr called with the equation's operands.
_SUBJAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


class _Tracer:
  """Forward dataflow over a jaxpr: union-find over units."""

  def __init__(self, names):
    self.names = names
    self.parent: list[int] = []
    self.writers: list[list[str]] = []
    self.norms: list[list[str]] = []
    self.readers: list[list[str]] = []
    self.escaped: list[set] = []
    self.by_writer: dict[str, int] = {}
    self.by_norm: dict[str, int] = {}

  # union-find
  def find(self, u):
    while self.parent[u] != u:
      self.parent[u] = self.parent[self.parent[u]]
      u = self.parent[u]
    return u

  def union(self, a, b):
    a, b = self.find(a), self.find(b)
    if a != b:
      a, b = min(a, b), max(a, b)  # the earlier unit names the merge
      self.parent[b] = a
      for f in (self.writers, self.norms, self.readers):
        f[a].extend(x for x in f[b] if x not in f[a])
      self.escaped[a] |= self.escaped[b]
    return a

  def new_unit(self, writer):
    if writer in self.by_writer:  # a kernel applied twice: same channels
      return self.find(self.by_writer[writer])
    u = len(self.parent)
    self.parent.append(u)
    self.writers.append([writer])
    self.norms.append([])
    self.readers.append([])
    self.escaped.append(set())
    self.by_writer[writer] = u
    return u

  def escape(self, val, where):
    """``val`` leaves the unit's normalization (read, summed, output)."""
    if isinstance(val, _Ch) and val.raw:
      self.escaped[self.find(val.unit)] |= {(w, where) for w in val.raw}

  def units(self):
    out = []
    for u in range(len(self.parent)):
      if self.find(u) != u or not self.norms[u]:
        continue
      if self.escaped[u]:
        w, where = sorted(self.escaped[u])[0]
        raise ValueError(
            f"trace_channel_units: the channels of {w!r} reach {where} "
            f"before any normalization, but are also scaled by "
            f"{self.norms[u]}: a zero normalization would not zero them, "
            "so the trace cannot decide the unit (declare ChannelUnits)")
      out.append(ChannelUnit(parent(self.writers[u][0]) or self.writers[u][0],
                             tuple(self.writers[u]), tuple(self.norms[u]),
                             tuple(self.readers[u])))
    return tuple(out)

  # the walk
  def run(self, jaxpr, env):
    for eqn in jaxpr.eqns:
      ins = [_Vec.of_shape(_shape(v)) if _is_literal(v) else env[v]
             for v in eqn.invars]
      outs = self.eqn(eqn, ins)
      for v, o in zip(eqn.outvars, outs):
        env[v] = o
    return [_Vec.of_shape(_shape(v)) if _is_literal(v) else env[v]
            for v in jaxpr.outvars]

  def eqn(self, eqn, ins):
    name = eqn.primitive.name
    shapes = [_shape(v) for v in eqn.invars]
    out_shapes = [_shape(v) for v in eqn.outvars]
    inner = _sub_jaxpr(eqn)
    if inner is not None:
      env = {v: _Vec.of_shape(_shape(v)) for v in inner.constvars}
      env.update(zip(inner.invars, ins))
      return self.run(inner, env)
    if name == "conv_general_dilated":
      return [self.conv(eqn, ins, shapes)]
    if name == "dot_general":
      return [self.dot(eqn, ins, shapes)]
    chans = [x for x in ins if isinstance(x, _Ch)]
    if not chans:
      return [self.plain(name, eqn, ins, s) for s in out_shapes]
    if name in _ELEMENTWISE:
      return [self.elementwise(name, ins, shapes, out_shapes[0])]
    if len(out_shapes) == 1 and isinstance(ins[0], _Ch) and len(chans) == 1:
      got = self.structural(name, eqn, ins[0], shapes[0], out_shapes[0])
      if got is not None:
        return [got]
    # Anything else mixes the channels; a kernel must not read the result.
    units = frozenset(self.find(c.unit) for c in chans)
    if name not in _REDUCTIONS:  # statistics over channels are not a use
      for c in chans:
        self.escape(c, f"the op {name}")
    return [_Vec(mixes=units, via=name) for _ in out_shapes]

  def plain(self, name, eqn, ins, out_shape):
    src = frozenset().union(*(x.sources for x in ins))
    mixes = frozenset().union(*(x.mixes for x in ins))
    via = next((x.via for x in ins if x.via), "")
    if name in _ELEMENTWISE or name in ("reshape", "squeeze",
                                        "expand_dims"):
      pc = all(x.per_channel for x in ins) and _vector_shaped(out_shape)
    elif name == "broadcast_in_dim":
      dims = eqn.params["broadcast_dimensions"]
      pc = ins[0].per_channel and (not dims or (
          dims[-1] == len(out_shape) - 1 and _vector_shaped(
              [out_shape[d] for d in dims])))
    else:
      pc = _vector_shaped(out_shape) and all(x.per_channel for x in ins)
    return _Vec(src, pc, mixes, via)

  def elementwise(self, name, ins, shapes, out_shape):
    chans = [x for x in ins if isinstance(x, _Ch)]
    units = sorted({self.find(x.unit) for x in chans})
    if len(units) > 1:  # a residual sum: one set of channels
      for x in chans:
        self.escape(x, "a residual sum")
    u = units[0]
    for v in units[1:]:
      u = self.union(u, v)
    if len({x.flat for x in chans}) > 1:
      raise ValueError("trace_channel_units: flattened and unflattened "
                       f"channels combined by {name}")
    flat = chans[0].flat
    raw = frozenset().union(*(x.raw for x in chans))
    for x, s in zip(ins, shapes):
      if isinstance(x, _Ch) or not x.sources or not s:
        continue  # data, constants and scalar params: not per channel
      if flat or not x.per_channel or s[-1] != out_shape[-1]:
        raise ValueError(
            f"trace_channel_units: params {sorted(x.sources)} are combined "
            f"by {name} with the channels of {self.writers[u][0]!r} other "
            "than as one value per channel")
      u, norm = self.attach(u, x.sources)
      if norm and name in ("mul", "div"):
        raw = frozenset()  # scaled by a normalization: its zero gates
    return _Ch(u, raw, flat)

  def attach(self, u, sources):
    """Files per-channel params of unit ``u``: ``(unit, whether one is a
    normalization's)``."""
    norm = False
    for leaf in sorted(sources):
      writers = self.writers[u]
      if leaf in writers or any(sibling(w, "bias") == leaf for w in writers):
        continue  # the writer's own bias
      mod, _, field = leaf.rpartition("/")
      if field not in ("scale", "bias"):
        raise ValueError(
            f"trace_channel_units: {leaf!r} acts per channel on the "
            f"channels of {writers[0]!r} but is neither a writer's bias "
            "nor a normalization's scale or bias")
      if mod in self.by_norm:  # a shared normalization: shared channels
        u = self.union(u, self.by_norm[mod])
      self.by_norm[mod] = u
      if mod not in self.norms[u]:
        self.norms[u].append(mod)
      norm = True
    return u, norm

  def structural(self, name, eqn, x, shape, out_shape):
    """Ops that move data but keep each channel apart; None if not."""
    nd = len(shape)
    if not isinstance(x, _Ch):
      return None
    if name in _REDUCTIONS:
      axes = tuple(a % nd for a in eqn.params["axes"])
      if nd - 1 in axes:
        return None
      if len(axes) == nd - 1:  # statistics over all but the channels
        return _Vec(per_channel=True)
      return x
    if name.startswith("reduce_window"):
      p = eqn.params
      if (p["window_dimensions"][-1] == 1 and p["window_strides"][-1] == 1
          and tuple(p["padding"][-1]) == (0, 0)):
        return x
      return None
    if name in ("reshape", "squeeze", "expand_dims"):
      if out_shape and out_shape[-1] == shape[-1]:
        return x
      # A channels-last flatten: leading axes kept, the rest merged.
      for k in range(nd - 1):
        if (tuple(out_shape[:-1]) == tuple(shape[:k]) and out_shape
            and out_shape[-1] == math.prod(shape[k:]) and not x.flat):
          return dataclasses.replace(x, flat=True)
      return None
    if name == "broadcast_in_dim":
      dims = eqn.params["broadcast_dimensions"]
      if dims and dims[-1] == len(out_shape) - 1 and (
          out_shape[-1] == shape[-1]):
        return x
      return None
    if name == "transpose":
      perm = eqn.params["permutation"]
      return x if perm[-1] == nd - 1 else None
    return None

  def kernel_leaf(self, val, shape):
    if isinstance(val, _Vec) and len(val.sources) == 1 and len(shape) >= 2:
      return next(iter(val.sources))
    return None

  def read(self, x, reader, ok, what):
    """Files ``reader`` as a reader of ``x``'s channels (if any)."""
    if isinstance(x, _Vec) and x.mixes:
      units = sorted(self.writers[self.find(u)][0] for u in x.mixes)
      raise ValueError(
          f"trace_channel_units: the kernel {reader!r} reads the channels "
          f"of {units} through {x.via!r}, which the trace cannot follow")
    if not isinstance(x, _Ch):
      return
    if not ok or reader is None:
      raise ValueError(
          f"trace_channel_units: the channels of "
          f"{self.writers[self.find(x.unit)][0]!r} are contracted by a "
          f"{what} the trace cannot follow (not an NHWC/HWIO conv or "
          "x @ kernel of a params leaf)")
    self.escape(x, f"the reader {reader!r}")
    u = self.find(x.unit)
    if reader not in self.readers[u]:
      self.readers[u].append(reader)

  def conv(self, eqn, ins, shapes):
    lhs, rhs = ins
    p = eqn.params
    dn = p["dimension_numbers"]
    nd = len(shapes[0])
    layout = (dn.lhs_spec[1] == nd - 1 and dn.rhs_spec[0] == nd - 1
              and dn.rhs_spec[1] == nd - 2 and dn.out_spec[1] == nd - 1)
    leaf = self.kernel_leaf(rhs, shapes[1])
    grouped = p["feature_group_count"] != 1 or p["batch_group_count"] != 1
    self.read(lhs, leaf, layout and not grouped, "conv")
    if isinstance(rhs, _Ch) or (isinstance(rhs, _Vec) and rhs.mixes):
      raise ValueError("trace_channel_units: a conv whose kernel is "
                       "computed from the channels")
    if leaf is None or not layout:
      return _Vec(rhs.sources)
    return _Ch(self.new_unit(leaf), frozenset([leaf]))

  def dot(self, eqn, ins, shapes):
    lhs, rhs = ins
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    leaf = self.kernel_leaf(rhs, shapes[1])
    dense = (len(shapes[1]) == 2 and tuple(rc) == (0,) and not lb and not rb)
    self.read(lhs, leaf, dense and tuple(lc) == (len(shapes[0]) - 1,),
              "dot_general")
    if isinstance(rhs, _Ch) or (isinstance(rhs, _Vec) and rhs.mixes):
      raise ValueError("trace_channel_units: a dot_general whose right "
                       "operand is computed from the channels")
    if leaf is None or not dense:
      return _Vec(lhs.sources | rhs.sources if isinstance(lhs, _Vec)
                  else rhs.sources)
    return _Ch(self.new_unit(leaf), frozenset([leaf]))


def _is_literal(v) -> bool:
  return type(v).__name__ == "Literal"


def _sub_jaxpr(eqn):
  """The jaxpr an equation calls with its own operands (jit, custom_jvp,
  custom_vjp, remat), or None."""
  for k in _SUBJAXPR_PARAMS:
    j = eqn.params.get(k)
    if j is None:
      continue
    inner = getattr(j, "jaxpr", j)
    if len(inner.invars) == len(eqn.invars):
      return inner
  return None


# Residual-stream members of a ResNet: the stem and each block's last conv
# and projection write into the stream of their stage.
_STREAM = re.compile(r"^(?:(stem)_conv|layer(\d+)_\d+/(?:conv2|shortcut_conv))$")


def units_by_name(params: Any, tie_residual: bool = True
                  ) -> tuple[ChannelUnit, ...]:
  """The units :func:`channel_groups` finds by layer name, without readers.

  A kernel ``.../L/kernel`` pairs with the BatchNorm ``.../L'`` where
  ``L'`` is ``L`` with ``conv`` replaced by ``bn`` (``conv1``/``bn1``,
  ``shortcut_conv``/``shortcut_bn``) or ``bn_L`` (``hidden``/
  ``bn_hidden``); with ``tie_residual``, ResNet's stem, projections and
  block ``conv2`` s form one unit ``stream{i}`` per stage.
  """
  flat = {path_name(p): leaf
          for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  found: dict[str, tuple[list, list]] = {}
  for path, leaf in flat.items():
    *mod, name = path.split("/")
    if name != "kernel" or len(np.shape(leaf)) < 2:
      continue
    up, layer = "/".join(mod[:-1]), mod[-1]
    bn = None
    for cand in (layer.replace("conv", "bn"), "bn_" + layer):
      cpath = f"{up}/{cand}" if up else cand
      if f"{cpath}/scale" in flat:
        bn = cpath
        break
    if bn is None:
      continue
    key = "/".join(mod)
    m = _STREAM.match(key) if tie_residual else None
    if m:
      key = f"stream{1 if m.group(1) else m.group(2)}"
    writers, norms = found.setdefault(key, ([], []))
    writers.append(path)
    norms.append(bn)
  return tuple(ChannelUnit(k, tuple(w), tuple(n))
               for k, (w, n) in found.items())
