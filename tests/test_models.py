"""Tests for the Flax Linen models in ``models/``."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
from rda_optax._init import scaled_uniform

# RBG keys compile much faster than threefry on CPU, which dominates the
# cost of initializing an 11M-parameter model in a test.
KEY = jax.random.key(0, impl="rbg")
ALL = ("resnet18", "resnet18_imagenet", "vgg16bn", "vgg19bn", "small_cnn")


def _abstract_variables(model, input_shape):
  """Variables as ``ShapeDtypeStruct``s: no compute, so cheap for big models."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), KEY, x)


def _path_names(path):
  return tuple(getattr(k, "key", str(k)) for k in path)


def _kernels(params):
  """{path: leaf} for every leaf named "kernel"."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {_path_names(p): l for p, l in flat if _path_names(p)[-1] == "kernel"}


def _ce_loss(model, params, batch_stats, x, y):
  logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x,
                          train=True, mutable=["batch_stats"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@functools.lru_cache(maxsize=None)
def _variables(name, input_shape, s=2.0):
  """Real variables of ``name`` initialized with ``scaled_uniform(s)``.

  Cached because compiling inits (11M parameters for ResNet-18) dominates
  this file's run time: the s = 2 variables serve both the initializer test
  and the tests that just need a real model. ResNet params do not depend on
  the input's spatial size (global pooling), so 8x8 inputs keep every pass
  cheap.
  """
  model = models.get(name, kernel_init=scaled_uniform(s))
  return models.init(model, KEY, input_shape)


# --- shapes ----------------------------------------------------------------


@pytest.mark.parametrize("name,input_shape,num_classes", [
    ("resnet18", (32, 32, 3), 10),
    ("resnet18", (28, 28, 1), 10),
    ("resnet18", (8, 8, 3), 7),
    ("resnet18_imagenet", (224, 224, 3), 1000),
    ("resnet18_imagenet", (64, 64, 3), 100),
    ("resnet18_imagenet", (28, 28, 1), 10),
    ("vgg16bn", (32, 32, 3), 10),
    ("vgg16bn", (28, 28, 1), 10),
    ("vgg19bn", (32, 32, 3), 100),
    ("vgg19bn", (28, 28, 1), 10),
    ("vgg19bn", (5, 5, 2), 10),  # ceil-mode pools: 5 -> 3 -> 2 -> 1 -> 1 -> 1
    ("small_cnn", (8, 8, 1), 10),
    ("small_cnn", (28, 28, 1), 10),
    ("small_cnn", (32, 32, 3), 10),
    ("small_cnn", (13, 20, 2), 3),
])
def test_output_shape(name, input_shape, num_classes):
  model = models.get(name, num_classes)
  variables = _abstract_variables(model, input_shape)
  x = jax.ShapeDtypeStruct((3, *input_shape), jnp.float32)
  out = jax.eval_shape(model.apply, variables, x)
  assert out.shape == (3, num_classes)
  assert out.dtype == jnp.float32


@pytest.mark.parametrize("name", ALL)
def test_output_shape_train_mode(name):
  model = models.get(name)
  variables = _abstract_variables(model, (32, 32, 3))
  x = jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32)
  out, updates = jax.eval_shape(
      functools.partial(model.apply, train=True, mutable=["batch_stats"]),
      variables, x)
  assert out.shape == (3, 10)
  assert out.dtype == jnp.float32
  assert (jax.tree.structure(updates["batch_stats"])
          == jax.tree.structure(variables["batch_stats"]))


def test_small_cnn_forward():
  model = models.get("small_cnn")
  variables = _variables("small_cnn", (8, 8, 1))
  x = jax.random.uniform(KEY, (4, 8, 8, 1))
  logits = jax.jit(model.apply)(variables, x)
  assert logits.shape == (4, 10)
  assert np.all(np.isfinite(logits))


def test_rejects_non_nhwc_input():
  model = models.get("small_cnn")
  with pytest.raises(ValueError, match="NHWC"):
    _abstract_variables(model, (8, 8))


# --- parameter counts --------------------------------------------------------


@pytest.mark.parametrize("name,input_shape,num_classes,expected", [
    ("resnet18", (32, 32, 3), 10, 11_173_962),
    ("resnet18_imagenet", (224, 224, 3), 1000, 11_689_512),
])
def test_resnet18_param_count(name, input_shape, num_classes, expected):
  model = models.get(name, num_classes)
  params = _abstract_variables(model, input_shape)["params"]
  assert models.param_count(params) == expected


def _vgg_expected(convs_per_stage, in_channels, num_classes):
  """VGG-bn CIFAR form from its layer shapes: 3x3 convs with bias, BN
  (scale + bias) per conv, one 512 -> num_classes Dense with bias."""
  count, c_in = 0, in_channels
  for n_convs, width in zip(convs_per_stage, (64, 128, 256, 512, 512)):
    for _ in range(n_convs):
      count += 3 * 3 * c_in * width + width  # conv kernel + bias
      count += 2 * width  # BN scale + bias
      c_in = width
  return count + 512 * num_classes + num_classes


@pytest.mark.parametrize("name,convs_per_stage", [
    ("vgg16bn", (2, 2, 3, 3, 3)),
    ("vgg19bn", (2, 2, 4, 4, 4)),
])
@pytest.mark.parametrize("input_shape,num_classes", [
    ((32, 32, 3), 10), ((28, 28, 1), 100)])
def test_vgg_param_count(name, convs_per_stage, input_shape, num_classes):
  model = models.get(name, num_classes)
  params = _abstract_variables(model, input_shape)["params"]
  assert models.param_count(params) == _vgg_expected(
      convs_per_stage, input_shape[-1], num_classes)
  # Conv layers + the single classifier.
  assert len(_kernels(params)) == sum(convs_per_stage) + 1


@pytest.mark.parametrize("input_shape,flat_side", [
    ((8, 8, 1), 8), ((28, 28, 1), 7), ((32, 32, 3), 8)])
def test_small_cnn_param_count(input_shape, flat_side):
  c = input_shape[-1]
  expected = (
      9 * c * 32 + 2 * 32  # conv0 + bn0
      + 9 * 32 * 64 + 2 * 64  # conv1 + bn1
      + flat_side**2 * 64 * 128 + 2 * 128  # hidden + bn_hidden
      + 128 * 10 + 10)  # classifier
  params = _abstract_variables(models.get("small_cnn"), input_shape)["params"]
  assert models.param_count(params) == expected


def test_param_count_arrays_and_abstract_agree():
  abstract = _abstract_variables(models.get("resnet18"), (8, 8, 3))
  assert (models.param_count(_variables("resnet18", (8, 8, 3))["params"])
          == models.param_count(abstract["params"]))


# --- parameter tree layout ---------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernels_are_exactly_the_ndim2_leaves(name, dtype):
  model = models.get(name, dtype=dtype)
  params = _abstract_variables(model, (32, 32, 3))["params"]
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in flat:
    is_kernel = _path_names(path)[-1] == "kernel"
    assert (leaf.ndim >= 2) == is_kernel, _path_names(path)
    # Params stay float32 whatever the compute dtype.
    assert leaf.dtype == jnp.float32, _path_names(path)
  assert ("classifier", "kernel") in _kernels(params)


@pytest.mark.parametrize("name", ALL)
def test_default_kernel_init_is_flax_default(name):
  assert models.get(name).kernel_init is nn.linear.default_kernel_init


@pytest.mark.parametrize("name,input_shape", [
    ("resnet18", (8, 8, 3)), ("small_cnn", (8, 8, 1))])
@pytest.mark.parametrize("s", [2.0, 10.0])
def test_scaled_uniform_kernel_init(name, input_shape, s):
  params = _variables(name, input_shape, s)["params"]
  kernels = _kernels(params)
  checked = 0
  for path, k in kernels.items():
    k = np.asarray(k, np.float64)
    fan_in = math.prod(k.shape[:-1])
    # Every kernel, however small, lies inside U(-c, c).
    assert np.max(np.abs(k)) <= s * math.sqrt(3 / fan_in) * (1 + 1e-6), path
    if k.size >= 1000:
      expected = s / math.sqrt(fan_in)
      assert abs(k.std() / expected - 1) < 0.05, (path, k.std(), expected)
      checked += 1
  assert checked >= len(kernels) - 1  # at most one tiny kernel skipped


# --- BatchNorm ---------------------------------------------------------------


def test_batch_stats_update_only_in_train_mode():
  model = models.get("resnet18")
  variables = _variables("resnet18", (8, 8, 3))
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  apply = jax.jit(functools.partial(model.apply, mutable=["batch_stats"]),
                  static_argnames="train")
  old = variables["batch_stats"]

  _, new = apply(variables, x, train=True)
  changed = jax.tree.leaves(
      jax.tree.map(lambda a, b: bool(np.any(a != b)), old, new["batch_stats"]))
  assert changed and all(changed)

  _, new = apply(variables, x, train=False)
  same = jax.tree.leaves(
      jax.tree.map(lambda a, b: bool(np.all(a == b)), old, new["batch_stats"]))
  assert all(same)


# --- bfloat16 compute --------------------------------------------------------


def _matmul_input_dtypes(jaxpr):
  """dtypes of the operands of every convolution and dot in ``jaxpr`` and
  the jaxprs nested in it (jit, custom_jvp, ...)."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      out += [v.aval.dtype for v in eqn.invars]
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (list, tuple)) else [p]):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          out += _matmul_input_dtypes(inner)
  return out


@pytest.mark.parametrize("name,input_shape", [
    ("resnet18", (8, 8, 3)), ("small_cnn", (8, 8, 1))])
def test_bfloat16_forward(name, input_shape):
  """dtype=bfloat16 computes every convolution and matmul in bfloat16 (the
  params stay float32 and the logits come back float32), and the result is
  the float32 model's up to bfloat16 rounding."""
  model = models.get(name, dtype=jnp.bfloat16)
  # Params are float32 whatever the compute dtype, so these variables fit.
  variables = _variables(name, input_shape)
  x = jax.random.normal(jax.random.key(2), (2, *input_shape))
  dtypes = _matmul_input_dtypes(jax.make_jaxpr(model.apply)(variables, x).jaxpr)
  assert len(dtypes) >= 6 and set(dtypes) == {jnp.dtype(jnp.bfloat16)}, dtypes
  logits = jax.jit(model.apply)(variables, x)
  assert logits.dtype == jnp.float32
  assert logits.shape == (2, 10)
  assert np.all(np.isfinite(logits))
  if name != "small_cnn":
    return  # one float32 reference compile is enough (ResNet's is slow)
  ref = jax.jit(models.get(name).apply)(variables, x)
  # bfloat16 keeps 8 significant bits (u = 2^-9 relative per rounding);
  # through 4 layers with BatchNorm the logits drift by a few
  # percent of their scale, far from any float32 difference of 0 and far
  # below an O(1) error such as a layer skipped.
  err = float(np.max(np.abs(logits - ref)) / np.max(np.abs(ref)))
  assert err < 0.1, err


# --- Proposition 1 -----------------------------------------------------------


@pytest.mark.parametrize("name,input_shape", [
    ("resnet18", (8, 8, 3)), ("small_cnn", (8, 8, 1))])
def test_zero_kernels_give_zero_gradients(name, input_shape):
  """Proposition 1: with all kernels zero, every kernel gradient but the
  classifier's is exactly zero, BatchNorm active (train mode).

  BN of an all-zero input is its offset (0 at init) and ReLU(0) = 0, so every
  activation is zero and no gradient reaches any kernel below the classifier.
  """
  model = models.get(name)
  variables = _variables(name, input_shape)
  params = jax.tree_util.tree_map_with_path(
      lambda p, l: jnp.zeros_like(l) if _path_names(p)[-1] == "kernel" else l,
      variables["params"])
  x = jax.random.normal(jax.random.key(3), (4, *input_shape))
  y = jnp.array([0, 1, 2, 3])
  grads = jax.jit(jax.grad(functools.partial(_ce_loss, model)))(
      params, variables["batch_stats"], x, y)
  for path, g in _kernels(grads).items():
    if path[0] != "classifier":
      assert np.all(np.asarray(g) == 0), path
  # Not vacuous: the loss still depends on the params.
  assert np.any(np.asarray(grads["classifier"]["bias"]) != 0)


# --- registry ----------------------------------------------------------------


def test_names():
  assert set(models.names()) == set(ALL)
  assert isinstance(models.names(), tuple)


@pytest.mark.parametrize("name", ALL)
def test_get_builds_module(name):
  model = models.get(name, num_classes=5)
  assert isinstance(model, nn.Module)
  assert model.num_classes == 5
  assert model.dtype == jnp.float32


def test_get_fixed_fields():
  assert models.get("resnet18").stem == "cifar"
  assert models.get("resnet18_imagenet").stem == "imagenet"
  assert models.get("vgg16bn").depth == 16
  assert models.get("vgg19bn").depth == 19
  assert isinstance(models.get("vgg16bn"), models.VGG)
  assert isinstance(models.get("resnet18"), models.ResNet18)
  assert isinstance(models.get("small_cnn"), models.SmallCNN)
  with pytest.raises(ValueError, match="depth"):
    models.get("vgg16bn", depth=19)


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="unknown model 'foo'") as e:
    models.get("foo")
  for name in ALL:
    assert name in str(e.value)


@pytest.mark.parametrize("num_classes", [0, -1, True, 2.0])
def test_bad_num_classes(num_classes):
  with pytest.raises(ValueError, match="num_classes"):
    models.get("small_cnn", num_classes=num_classes)


@pytest.mark.parametrize("model", [
    models.ResNet18(10, stem="tiny"), models.VGG(10, depth=11)])
def test_bad_module_fields(model):
  with pytest.raises(ValueError, match="stem|depth"):
    _abstract_variables(model, (32, 32, 3))
