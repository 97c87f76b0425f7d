"""Tests for exact channel slimming (``models.slim``) and ``models.flops``.

How exact is "exact": a dead channel (BatchNorm scale and bias both 0)
outputs exact zeros, so the slim model computes the same sums as the
original without some exact-zero terms; only the order of the summation can
differ. The equality test runs both models in float64 (variables cast up
exactly), where each dot product of n <= 9 * 16 terms differs by at most
n * 2^-53 of the sum of its absolute terms, and a dozen layers with
BatchNorm factors of order 1 keep the difference below ~1e-12 of the logit
scale; the models cast their logits to float32 at the end, which adds at most
one float32 ulp when the two float64 values straddle a rounding boundary. So
the logits must agree to ``2^-23`` relative plus ``1e-9`` of the logit scale
(three orders of magnitude of margin), while removing a live channel or
cutting the wrong index changes them by O(1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import models
import rda_optax

KEY = jax.random.key(0, impl="rbg")

# name, constructor keywords (small widths keep compiles cheap), input shape
CASES = {
    "small_cnn": ({"widths": (12, 20, 24)}, (8, 8, 1)),
    "vgg16bn": ({"widths": (6, 6, 8, 8, 8, 8, 8, 12, 12, 12, 12, 12, 12)},
                (8, 8, 3)),
    "resnet18": ({"widths": ((8, 6, 6), (8, 6, 6), (12, 6, 6), (12, 6, 6))},
                 (32, 32, 3)),
}


def _trained_like(model, shape, seed):
  """Random variables with BatchNorm statistics and ~40% dead channels.

  ~10% more have scale 0 but bias != 0: constant channels that must stay.

  Filled in numpy from the abstract shapes (no init compile). For ResNet,
  some residual-stream channels die in every writer (they must go), others
  only in some writers (they must stay), and one block's whole ``conv1`` is
  dead (one channel is kept; the skip connection keeps the net alive). A
  whole dead layer of a plain chain would make the logits constant, so VGG
  and the small CNN keep some channels alive in each layer.
  """
  rng = np.random.default_rng(seed)
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  abstract = jax.eval_shape(functools.partial(model.init, train=False), KEY, x)
  p = traverse_util.flatten_dict(abstract["params"], sep="/")
  st = traverse_util.flatten_dict(abstract["batch_stats"], sep="/")
  for k, a in p.items():
    fan_in = np.prod(a.shape[:-1]) if len(a.shape) > 1 else 1
    p[k] = rng.normal(size=a.shape) / np.sqrt(fan_in)
  for path in [k for k in p if k.endswith("/scale")]:
    bn = path[:-len("/scale")]
    n = p[path].shape[0]
    p[f"{bn}/scale"] = rng.uniform(0.5, 1.5, n) * rng.choice([-1, 1], n)
    p[f"{bn}/bias"] = rng.normal(0, 0.5, n)
    st[f"{bn}/mean"] = rng.normal(0, 0.5, n)
    st[f"{bn}/var"] = rng.uniform(0.5, 2.0, n)
    u = rng.random(n)
    u[rng.integers(n)] = 1.0
    p[f"{bn}/scale"][u < 0.5] = 0.0  # u in [0.4, 0.5): constant, not dead
    p[f"{bn}/bias"][u < 0.4] = 0.0
  if "stem_bn/scale" in p:
    for i in range(1, 5):
      first = "stem_bn" if i == 1 else f"layer{i}_0/shortcut_bn"
      writers = [first, f"layer{i}_0/bn2", f"layer{i}_1/bn2"]
      n = p[f"{first}/scale"].shape[0]
      gone = rng.choice(n, n // 3, replace=False)
      for w in writers:
        p[f"{w}/scale"][gone] = 0.0
        p[f"{w}/bias"][gone] = 0.0
    p["layer2_1/bn1/scale"][:] = 0.0
    p["layer2_1/bn1/bias"][:] = 0.0
  v = {"params": traverse_util.unflatten_dict(p, sep="/"),
       "batch_stats": traverse_util.unflatten_dict(st, sep="/")}
  # float32, as trained variables are: the float64 checks cast up exactly.
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), v)


def _logits(model, variables, x, dtype):
  # Jitted: one compile of the whole network is cheaper than eager dispatch,
  # which compiles each op on its own; without LLVM's optimizations, which
  # halve the compile and change no arithmetic.
  with jax.enable_x64(dtype == jnp.float64):
    m = model.clone(dtype=dtype)
    v = jax.tree.map(lambda a: jnp.asarray(a, dtype), variables)
    return np.asarray(jax.jit(m.apply, compiler_options=_FAST_COMPILE)(
        v, jnp.asarray(x, dtype)))


_FAST_COMPILE = {"xla_backend_optimization_level": 0,
                 "xla_llvm_disable_expensive_passes": True}


@pytest.mark.parametrize("name", sorted(CASES))
def test_slim_model_computes_the_same_logits(name):
  kw, shape = CASES[name]
  model = models.get(name, **kw)
  v = _trained_like(model, shape, seed=len(name))
  small, sv = models.slim(model, v)
  # Physically smaller: every layer lost its dead channels (all arrays).
  assert models.param_count(sv["params"]) < models.param_count(v["params"])
  dead = models.dead_channels(v)
  if name == "resnet18":
    stream1 = (dead["stem_bn"] & dead["layer1_0/bn2"] & dead["layer1_1/bn2"])
    assert small.widths[0] == (8 - stream1.sum(),
                               6 - dead["layer1_0/bn1"].sum(),
                               6 - dead["layer1_1/bn1"].sum())
    assert small.widths[1][2] == 1  # all dead: one kept
    assert 0 < stream1.sum() < (dead["stem_bn"].sum())
  else:
    bns = [k for k in dead if k.startswith("bn")]
    bns.sort(key=lambda k: (k == "bn_hidden",
                            int(k[2:]) if k[2:].isdigit() else 0))
    expect = tuple(int((~dead[b]).sum()) for b in bns)
    assert tuple(small.widths) == expect
  # Slimming a slim model removes nothing more (only kept-alive dead ones).
  assert models.slim(small, sv)[0].widths == small.widths
  x = np.random.default_rng(0).normal(size=(3, *shape))
  ref = _logits(model, v, x, jnp.float64)
  got = _logits(small, sv, x, jnp.float64)
  scale = np.abs(ref).max()
  assert scale > 0.1  # the network is not trivially dead
  np.testing.assert_allclose(got, ref, rtol=2.0 ** -23, atol=1e-9 * scale)
  if name == "small_cnn":
    # In float32 the difference is rounding too (reduction order): a loose
    # bound, far below the O(1) change a wrongly cut channel makes. (One
    # family only: each compile costs seconds on the test machine.)
    got32 = _logits(small, sv, x, jnp.float32)
    np.testing.assert_allclose(got32, ref, rtol=0, atol=1e-4 * scale)


def _flat_widths(w):
  return [x for v in w for x in (v if isinstance(v, tuple) else (v,))]


@pytest.mark.parametrize("name", sorted(CASES))
def test_slim_to_a_multiple_keeps_the_first_dead_channels_exactly(name):
  """``multiple=4``: each width rounds up to a multiple of 4 (or the full
  width) with the lowest-index dead channels, and the logits are still the
  original's."""
  kw, shape = CASES[name]
  model = models.get(name, **kw)
  v = _trained_like(model, shape, seed=len(name))
  full = _flat_widths(model.widths)
  tight = _flat_widths(models.slim(model, v)[0].widths)
  small, sv = models.slim(model, v, multiple=4)
  got = _flat_widths(small.widths)
  assert got != tight
  for f, t, g in zip(full, tight, got):
    assert g == min(-(-t // 4) * 4, f), (full, tight, got)
  # The kept dead channels are the first ones: channel 0 of conv0 / the
  # stem, whatever its state, is kept when the layer was rounded up.
  bn0 = "stem_bn" if name == "resnet18" else "bn0"
  dead0 = models.dead_channels(v)[bn0]
  kept = small.widths[0][0] if name == "resnet18" else small.widths[0]
  ref_scale = np.asarray(v["params"][bn0]["scale"])
  keep_idx = np.sort(np.concatenate([np.flatnonzero(~dead0), np.flatnonzero(
      dead0)[:kept - int((~dead0).sum())]]))
  np.testing.assert_array_equal(sv["params"][bn0]["scale"],
                                ref_scale[keep_idx])
  x = np.random.default_rng(0).normal(size=(3, *shape))
  ref = _logits(model, v, x, jnp.float64)
  np.testing.assert_allclose(_logits(small, sv, x, jnp.float64), ref,
                             rtol=2.0 ** -23, atol=1e-9 * np.abs(ref).max())
  with pytest.raises(ValueError, match="multiple"):
    models.slim(model, v, multiple=0)


@pytest.mark.parametrize("name,kw", [
    ("vgg19bn", {"widths": (5,) * 16}),
    ("resnet18_imagenet", {"widths": ((8, 6, 6),) * 4})])
def test_slimmed_variables_fit_the_slim_model(name, kw):
  """VGG-19 and the ImageNet-stem ResNet share code paths with the cases
  above; check their shapes without compiling."""
  model = models.get(name, **kw)
  v = _trained_like(model, (16, 16, 3), seed=7)
  small, sv = models.slim(model, v)
  want = jax.eval_shape(functools.partial(small.init, train=False), KEY,
                        jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
  assert (jax.tree.map(jnp.shape, want) == jax.tree.map(jnp.shape, sv))
  assert models.param_count(sv) < models.param_count(v)
  if name == "vgg19bn":
    dead = models.dead_channels(v)
    assert small.widths == tuple(int((~dead[f"bn{k}"]).sum())
                                 for k in range(16))


def _vgg_flops(widths, depth, side, classes=10):
  total, c_in, k = 0, 3, 0
  for v in models._vgg.CONFIGS[depth]:
    if v == "M":
      side = (side + 1) // 2
      continue
    total += side * side * widths[k] * 9 * c_in
    c_in, k = widths[k], k + 1
  return total + c_in * classes


def test_flops_count_convs_and_dense_from_shapes():
  dense = [v for v in models._vgg.CONFIGS[16] if v != "M"]
  assert models.flops(models.get("vgg16bn"), (32, 32, 3)) == _vgg_flops(
      dense, 16, 32)
  half = [w // 2 for w in dense]
  assert models.flops(models.get("vgg16bn", widths=half),
                      (32, 32, 3)) == _vgg_flops(half, 16, 32)
  # ResNet-18 CIFAR at 32x32, written out stage by stage (~0.56 GMACs).
  def conv(side, c_out, k, c_in):
    return side * side * c_out * k * k * c_in
  expect = conv(32, 64, 3, 3) + 10 * 512
  for i, (side, w) in enumerate(((32, 64), (16, 128), (8, 256), (4, 512))):
    c_in = w if i == 0 else w // 2
    expect += conv(side, w, 3, c_in) + 3 * conv(side, w, 3, w)
    if i:
      expect += conv(side, w, 1, c_in)
  assert models.flops(models.get("resnet18"), (32, 32, 3)) == expect


def test_channel_groups_zeroed_by_the_group_threshold_are_slimmed():
  """A channel group zeroed by the operator is what slim removes."""
  model = models.get("small_cnn")
  v = _trained_like(model, (8, 8, 1), seed=0)
  before = models.dead_channels(v)["bn1"]
  params = v["params"]
  groups = rda_optax.channel_groups(params)
  norms = jax.jit(lambda p: rda_optax.group_norms(p, groups))(params)
  sizes = rda_optax.group_sizes(params, groups)
  tau = float(np.median(np.asarray(norms["conv1"]))
              / np.sqrt(sizes["conv1"]))
  out = jax.jit(lambda p: rda_optax.group_soft_threshold(p, groups, tau))(
      params)
  zero = np.asarray(norms["conv1"]) <= tau * np.sqrt(sizes["conv1"])
  dead = models.dead_channels({"params": out})["bn1"]
  # Dead after: the groups the threshold zeroed, and those dead before.
  np.testing.assert_array_equal(dead, zero | before)
  assert np.sum(zero & ~before) > 0 and not np.all(zero)
  small, _ = models.slim(model, {"params": out, "batch_stats": v[
      "batch_stats"]})
  assert small.widths[1] == int((~(zero | before)).sum())


def test_slim_rejects_other_models():
  with pytest.raises(TypeError, match="expected SmallCNN"):
    models.slim(object(), {"params": {}})


@pytest.mark.parametrize("name,widths", [
    ("small_cnn", (4, 4)), ("vgg16bn", (8,) * 12),
    ("resnet18", ((8, 8, 8),) * 3), ("resnet18", ((8, 8),) * 4)])
def test_wrong_number_of_widths_is_refused(name, widths):
  model = models.get(name, widths=widths)
  with pytest.raises(ValueError, match="widths"):
    jax.eval_shape(functools.partial(model.init, train=False), KEY,
                   jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))
