"""Channel units: the models' declarations, the trace, and the groups and
slimming built on them, for the repo's models and a model with other names.
"""

import dataclasses
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
import rda_optax
from rda_optax._units import units_by_name

KEY = jax.random.key(0)
SHAPES = {"small_cnn": (8, 8, 1), "vgg16bn": (8, 8, 3),
          "resnet18": (8, 8, 3), "resnet18_imagenet": (16, 16, 3)}


def _abstract(model, shape):
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  v = jax.eval_shape(functools.partial(model.init, train=False), KEY, x)
  return v, x


def _traced(model, shape, train=False):
  """Traced from shapes alone: nothing is compiled or computed."""
  v, x = _abstract(model, shape)

  def apply(p, stats, x):
    return model.apply({"params": p, "batch_stats": stats}, x, train=train,
                       mutable=["batch_stats"] if train else False)
  return rda_optax.trace_channel_units(apply, v["params"], v["batch_stats"], x)


def _as_set(units):
  return {(frozenset(u.writers), frozenset(u.norms), frozenset(u.readers))
          for u in units}


def _partition(params, specs):
  """The groups as sets of leaf paths, whatever the family keys."""
  fam: dict[str, set] = {}
  for p, s in jax.tree_util.tree_flatten_with_path(
      specs, is_leaf=lambda x: x is None)[0]:
    if s is not None:
      fam.setdefault(s.key, set()).add(jax.tree_util.keystr(p))
  return {frozenset(v) for v in fam.values()}


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.parametrize("train", [False, True])
def test_declared_units_are_the_traced_ones(name, train):
  model = models.get(name)
  declared = models.channel_units(model)
  assert _as_set(declared) == _as_set(_traced(model, SHAPES[name], train))
  assert len(declared) == len(_as_set(declared))


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_declared_and_traced_groups_are_the_name_rules(name):
  """The three ways give one partition of the leaves; the declared units
  also give the name rule's family keys, so its spec tree is the same."""
  model = models.get(name)
  v, _ = _abstract(model, SHAPES[name])
  params = v["params"]
  by_name = rda_optax.channel_groups(params)
  declared = rda_optax.channel_groups(params,
                                      units=models.channel_units(model))
  traced = rda_optax.channel_groups(params,
                                    units=_traced(model, SHAPES[name]))
  assert declared == by_name
  assert _partition(params, traced) == _partition(params, by_name)
  for w in ("uniform", {"stream1": 0.5, "conv0": 2.0}):
    assert rda_optax.channel_groups(
        params, units=models.channel_units(model),
        weighting=w) == rda_optax.channel_groups(params, weighting=w)
  # Without tying, the name rule is one unit per kernel.
  untied = units_by_name(params, tie_residual=False)
  assert all(len(u.writers) == 1 for u in untied)
  if name.startswith("resnet"):
    assert len(untied) > len(models.channel_units(model))


class Odd(nn.Module):
  """Conv "foo" + BatchNorm "bar" start a residual stream; a block of
  "mid"/"mnorm" and "baz"/"qux" adds to it; Dense "head" reads it. No name
  follows the conv/bn convention."""
  widths: Optional[Sequence[int]] = None

  def channel_units(self):
    u = rda_optax.ChannelUnit
    return (u("foo", ("foo/kernel", "baz/kernel"), ("bar", "qux"),
              ("mid/kernel", "head/kernel")),
            u("mid", ("mid/kernel",), ("mnorm",), ("baz/kernel",)))

  @nn.compact
  def __call__(self, x, train=False):
    s, m = self.widths or (8, 6)
    bn = functools.partial(nn.BatchNorm, use_running_average=not train)
    y = bn(name="bar")(nn.Conv(s, (3, 3), name="foo")(x))
    h = nn.relu(bn(name="mnorm")(
        nn.Conv(m, (3, 3), use_bias=False, name="mid")(nn.relu(y))))
    z = bn(name="qux")(nn.Conv(s, (3, 3), name="baz")(h))
    y = nn.relu(y + z)
    return nn.Dense(3, name="head")(jnp.mean(y, axis=(1, 2)))


def _odd():
  model = Odd()
  v = model.init(KEY, jnp.zeros((2, 6, 6, 2)))
  return model, v


def test_a_model_with_any_names_is_traced_and_its_channels_train_to_zero():
  model, v = _odd()
  params, stats = v["params"], v["batch_stats"]
  # The name rule finds nothing here; the trace finds the stream and the
  # inner unit, with foo's conv bias in the stream's groups.
  assert all(s is None for s in jax.tree.leaves(
      rda_optax.channel_groups(params), is_leaf=lambda x: x is None))
  apply = lambda p, x: model.apply(  # noqa: E731
      {"params": p, "batch_stats": stats}, x)
  units = rda_optax.trace_channel_units(apply, params, jnp.zeros((2, 6, 6, 2)))
  assert _as_set(units) == _as_set(model.channel_units())
  groups = rda_optax.channel_groups(params, units=units)
  assert groups["foo"]["bias"].key == groups["qux"]["scale"].key == "foo"
  assert groups["head"]["kernel"] is None

  # Half the channels start at zero (whole groups): those the penalty
  # keeps at zero, while the others outlive their protection time.
  p0 = jax.tree.map(np.array, params)
  for leaf in ("foo/kernel", "foo/bias", "bar/scale", "bar/bias",
               "baz/kernel", "baz/bias", "qux/scale", "qux/bias"):
    mod, name = leaf.split("/")
    p0[mod][name][..., :4] = 0
  for mod, name in (("mid", "kernel"), ("mnorm", "scale"), ("mnorm", "bias")):
    p0[mod][name][..., :3] = 0
  params = jax.tree.map(jnp.asarray, p0)
  x = jax.random.normal(jax.random.key(1), (16, 6, 6, 2))
  t = jax.random.randint(jax.random.key(2), (16,), 0, 3)

  def loss(p):
    logits = apply(p, x)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), t])

  tx = rda_optax.rda(0.5, 0.0, groups=functools.partial(
      rda_optax.channel_groups, units=units), group_l1=0.01)
  state = tx.init(params)

  @jax.jit
  def step(p, state):
    updates, state = tx.update(jax.grad(loss)(p), state, p)
    return jax.tree.map(jnp.add, p, updates), state

  p = params
  for _ in range(30):
    p, state = step(p, state)
  norms = rda_optax.group_norms(p, groups)
  for key, k in (("foo", 4), ("mid", 3)):
    zero = np.asarray(norms[key]) == 0
    np.testing.assert_array_equal(zero, np.arange(zero.size) < k)
  # Whole channels: a zero group is zero in every leaf it spans.
  dead = np.asarray(norms["foo"]) == 0
  for leaf in (p["foo"]["kernel"], p["baz"]["kernel"], p["foo"]["bias"],
               p["bar"]["scale"], p["qux"]["bias"]):
    col = np.abs(np.asarray(leaf)).reshape(-1, leaf.shape[-1]).sum(0)
    np.testing.assert_array_equal(col == 0, dead)


def test_slim_cuts_a_declared_model_exactly():
  """slim knows the model only through its units: Odd's zero channels go
  from writers, norms (and statistics) and readers; the logits stay."""
  model, v = _odd()
  params = jax.tree.map(np.array, v["params"])
  stats = jax.tree.map(np.array, v["batch_stats"])
  rng = np.random.default_rng(0)
  for bn in ("bar", "qux", "mnorm"):
    params[bn]["scale"] = rng.uniform(0.5, 1.5, params[bn]["scale"].shape)
    params[bn]["bias"] = rng.normal(size=params[bn]["bias"].shape)
    stats[bn]["mean"] = rng.normal(size=stats[bn]["mean"].shape)
  for bn, dead in (("bar", [1, 4]), ("qux", [1, 4, 6]), ("mnorm", [0])):
    params[bn]["scale"][dead] = 0
    params[bn]["bias"][dead] = 0
  var = {"params": params, "batch_stats": stats}
  small, sv = models.slim(model, var)
  # Stream channel 6 is dead in qux only: bar still writes it.
  assert small.widths == (6, 5)
  assert sv["params"]["baz"]["kernel"].shape == (3, 3, 5, 6)
  assert sv["params"]["head"]["kernel"].shape == (6, 3)
  assert sv["batch_stats"]["bar"]["mean"].shape == (6,)
  x = np.random.default_rng(1).normal(size=(3, 6, 6, 2))
  np.testing.assert_allclose(small.apply(sv, x), model.apply(var, x),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(TypeError, match="channel_units"):
    models.slim(nn.Dense(3), {"params": {}})


class _Flatten(nn.Module):
  """Conv + BatchNorm read by a Dense after a flatten, channels-last or
  (``nchw``) channels-first."""
  nchw: bool = False

  @nn.compact
  def __call__(self, x):
    y = nn.BatchNorm(use_running_average=True, name="n")(
        nn.Conv(4, (3, 3), name="c")(x))
    if self.nchw:
      y = y.transpose(0, 3, 1, 2)
    return nn.Dense(2, name="d")(y.reshape(len(y), -1))


class _PreAct(nn.Module):
  """A conv added to a normalized stream before any normalization of its
  own: zero BatchNorms would not zero the sum."""

  @nn.compact
  def __call__(self, x):
    y = nn.BatchNorm(use_running_average=True, name="n")(
        nn.Conv(4, (3, 3), name="c")(x))
    y = y + nn.Conv(4, (3, 3), name="raw")(nn.relu(y))
    return nn.Dense(2, name="d")(y.mean((1, 2)))


def _trace(module):
  x = jnp.zeros((2, 5, 5, 3))
  v = module.init(KEY, x)
  stats = v.get("batch_stats", {})
  return rda_optax.trace_channel_units(
      lambda p, x: module.apply({"params": p, "batch_stats": stats}, x),
      v["params"], x)


def test_the_trace_follows_a_channels_last_flatten_and_refuses_what_it_cannot():
  (u,) = _trace(_Flatten())
  assert (u.writers, u.norms, u.readers) == (("c/kernel",), ("n",),
                                             ("d/kernel",))
  with pytest.raises(ValueError, match="'d/kernel' reads the channels .*"
                     "transpose"):
    _trace(_Flatten(nchw=True))
  with pytest.raises(ValueError, match="'raw/kernel' reach a residual sum "
                     "before any normalization"):
    _trace(_PreAct())


def test_units_that_do_not_fit_the_params_are_refused():
  params = {"a": {"kernel": jnp.ones((4, 8))},
            "n": {"scale": jnp.ones(8), "bias": jnp.zeros(8)},
            "m": {"scale": jnp.ones(8)}}
  u = rda_optax.ChannelUnit
  cases = [([u("x", ("b/kernel",), ("n",))], "writer 'b/kernel'"),
           ([u("x", ("n/scale",), ())], "is not a kernel"),
           ([u("x", ("a/kernel",), ("zz",))], "norm 'zz'"),
           ([u("x", ("a/kernel",), ("n",)), u("y", ("a/kernel",), ("m",))],
            "'a/kernel' is in unit 'x' and in unit 'y'")]
  for units, needle in cases:
    with pytest.raises(ValueError, match=needle):
      rda_optax.channel_groups(params, units=units)
  with pytest.raises(TypeError, match="tuple of paths"):
    u("x", "a/kernel")
  with pytest.raises(ValueError, match="at least one writer"):
    u("x", ())
  # A unit none of whose leaves is there is skipped: params may be a part
  # of the model's (optax.masked).
  got = rda_optax.channel_groups(params, units=[
      u("x", ("a/kernel",), ("n", "m")), u("z", ("gone/kernel",), ("nn",))])
  assert rda_optax.group_sizes(params, got) == {"x": 4 + 2 + 1}


def test_the_trainer_groups_the_models_declared_units(monkeypatch):
  """--structure's groups, ASR's freeze mask and net-slim's pruning come
  from the model's channel_units(), not from the layer names: declare
  fewer units, renamed, and the trainer follows."""
  from train import methods, structure
  from train.config import Config
  declared = models.channel_units(models.get("small_cnn"))
  fewer = tuple(dataclasses.replace(u, key="u_" + u.key)
                for u in declared[:2])
  monkeypatch.setattr(models.SmallCNN, "channel_units", lambda self: fewer)
  cfg = Config(method="rda", structure="channel", group_l1=0.02,
               model="small_cnn")
  params = structure._abstract_params("small_cnn")
  specs = structure.group_args(cfg, 10)["groups"](params)
  assert specs["conv0"]["kernel"].key == "u_conv0"
  assert specs["hidden"]["kernel"] is None and specs["bn_hidden"][
      "scale"] is None
  mask = methods._freeze(cfg)(params)
  assert mask["bn1"]["scale"] and not mask["bn_hidden"]["scale"]
  units = structure.prune_units(params, structure.model_units(cfg.model))
  assert set(units.keys) == {"u_conv0", "u_conv1"}


def test_an_nnx_model_is_traced_from_its_pure_params():
  """Flax NNX: nnx.split gives the params as a pure dict and a pure apply
  function (in eval mode, so BatchNorm reads its running statistics); the
  trace finds the residual stream over two convs with arbitrary names, and
  rda's groups then zero whole channels of both."""
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.first = nnx.Conv(3, 8, (3, 3), rngs=rngs)
      self.first_norm = nnx.BatchNorm(8, rngs=rngs)
      self.second = nnx.Conv(8, 8, (3, 3), rngs=rngs)
      self.second_norm = nnx.BatchNorm(8, rngs=rngs)
      self.head = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, x):
      h = nnx.relu(self.first_norm(self.first(x)))
      h = nnx.relu(self.second_norm(self.second(h)) + h)
      return self.head(h.mean(axis=(1, 2)))

  model = Net(nnx.Rngs(0))
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  pure = nnx.to_pure_dict(params)

  def apply(p, x):
    state = nnx.State(params)
    nnx.replace_by_pure_dict(state, p)
    return nnx.merge(graphdef, state, rest)(x)

  (unit,) = rda_optax.trace_channel_units(apply, pure,
                                          jnp.zeros((2, 8, 8, 3)))
  assert set(unit.writers) == {"first/kernel", "second/kernel"}
  assert set(unit.norms) == {"first_norm", "second_norm"}
  assert set(unit.readers) == {"second/kernel", "head/kernel"}
  specs = rda_optax.channel_groups(pure, units=[unit])
  assert specs["head"]["kernel"] is None
  assert rda_optax.group_sizes(pure, specs) == {
      unit.key: 3 * 3 * 3 + 1 + 3 * 3 * 8 + 1 + 2 + 2}
  # A group threshold above every channel's norm (about 2 at init): every
  # channel goes, in every leaf of the unit at once; the head is no group.
  tx = rda_optax.prox_sgd(0.5, 0.0, groups=specs, group_l1=1.0)
  g = jax.tree.map(jnp.zeros_like, pure)
  new = optax.apply_updates(pure, tx.update(g, tx.init(pure), pure)[0])
  for path in ("first/kernel", "first/bias", "first_norm/scale",
               "second/kernel", "second_norm/bias"):
    a, b = path.split("/")
    assert not np.asarray(new[a][b]).any(), path
  np.testing.assert_array_equal(new["head"]["kernel"], pure["head"]["kernel"])
