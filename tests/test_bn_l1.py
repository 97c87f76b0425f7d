"""rda_optax.add_bn_l1: network slimming's l1 term on normalization scales."""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rda_optax


class _ConvBN(nn.Module):
  # Linen's automatic names (Conv_0, BatchNorm_0, LayerNorm_0): the default
  # mask must not depend on this repo's "bn" naming.
  @nn.compact
  def __call__(self, x):
    x = nn.BatchNorm(use_running_average=False)(nn.Conv(4, (3, 3))(x))
    return nn.LayerNorm()(nn.Dense(3)(x.mean(axis=(1, 2))))


def _linen_params():
  v = _ConvBN().init(jax.random.key(0), jnp.ones((2, 5, 5, 1)))
  # Scales away from 1 and of both signs, one exactly 0 (sign(0) = 0).
  return jax.tree_util.tree_map_with_path(
      lambda p, x: (jnp.array([0.5, -2.0, 0.0, 3.0])[:x.shape[0]]
                    if p[-1].key == "scale" else x + 0.25), v["params"])


def test_adds_s_sign_gamma_to_the_scales_only():
  params = _linen_params()
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.125), params)
  tx = rda_optax.add_bn_l1(0.01)
  updates, _ = tx.update(grads, tx.init(params), params)
  for name in ("BatchNorm_0", "LayerNorm_0"):
    want = 0.125 + 0.01 * np.sign(np.asarray(params[name]["scale"]))
    np.testing.assert_array_equal(updates[name]["scale"], want)
    np.testing.assert_array_equal(updates[name]["bias"], grads[name]["bias"])
  for name in ("Conv_0", "Dense_0"):
    for leaf in ("kernel", "bias"):
      np.testing.assert_array_equal(updates[name][leaf], grads[name][leaf])


def test_is_the_gradient_of_the_penalty():
  # chain(add_bn_l1(s), sgd) on L is sgd on L + s sum |scale|: autodiff's
  # derivative of |x| is sign(x) away from 0, and no scale here is 0.
  params = jax.tree.map(lambda x: x + 0.5, _linen_params())
  x = jax.random.normal(jax.random.key(1), (2, 5, 5, 1))
  s = 0.03

  def loss(p):
    return jnp.sum(_ConvBN().apply({"params": p}, x, mutable=["batch_stats"])[0]
                   ** 2)

  def penalized(p):
    return loss(p) + s * sum(jnp.abs(p[n]["scale"]).sum()
                             for n in ("BatchNorm_0", "LayerNorm_0"))

  tx = optax.chain(rda_optax.add_bn_l1(s), optax.sgd(0.1))
  updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params)
  sgd = optax.sgd(0.1)
  want, _ = sgd.update(jax.grad(penalized)(params), sgd.init(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               updates, want)
  # Not vacuous: the scales' updates are not plain SGD's.
  plain, _ = sgd.update(jax.grad(loss)(params), sgd.init(params))
  for n in ("BatchNorm_0", "LayerNorm_0"):
    np.testing.assert_allclose(updates[n]["scale"] - plain[n]["scale"],
                               -0.1 * s * np.sign(params[n]["scale"]),
                               rtol=1e-3)


def test_default_mask_wants_a_1d_leaf_named_scale():
  @flax.struct.dataclass
  class Norm:  # attribute keys (GetAttrKey), not dict keys
    scale: jax.Array
    offset: jax.Array

  params = {"norm": Norm(scale=jnp.array([2.0, -2.0]), offset=jnp.ones(2)),
            # Named "scale" but a matrix: a weight, not a norm's scale.
            "attn": {"scale": jnp.ones((2, 2))}}
  grads = jax.tree.map(jnp.zeros_like, params)
  tx = rda_optax.add_bn_l1(0.5)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates["norm"].scale, [0.5, -0.5])
  np.testing.assert_array_equal(updates["norm"].offset, 0.0)
  np.testing.assert_array_equal(updates["attn"]["scale"], 0.0)


def test_strength_can_be_injected():
  params = {"bn": {"scale": jnp.array([1.0, -1.0])}}
  grads = jax.tree.map(jnp.zeros_like, params)
  tx = optax.inject_hyperparams(rda_optax.add_bn_l1)(strength=0.5)
  state = tx.init(params)
  state.hyperparams["strength"] = jnp.asarray(0.25)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  np.testing.assert_array_equal(updates["bn"]["scale"], [0.25, -0.25])


def test_schedule_reads_the_step_count():
  params = {"bn": {"scale": jnp.array([1.0, -1.0])}}
  grads = jax.tree.map(jnp.zeros_like, params)
  # Net-slim's use: the penalty until the pruning step, 0 afterwards.
  tx = rda_optax.add_bn_l1(lambda t: jnp.where(t < 2, 0.5, 0.0))
  state = tx.init(params)
  seen = []
  for _ in range(4):
    updates, state = jax.jit(tx.update)(grads, state, params)
    seen.append(np.asarray(updates["bn"]["scale"]).tolist())
  assert seen == [[0.5, -0.5], [0.5, -0.5], [0.0, 0.0], [0.0, 0.0]]
  assert int(state.count) == 4
  assert isinstance(state, optax.ScaleByScheduleState)


def test_updates_keep_their_dtype():
  # bfloat16 gradients of float32 params, and bfloat16 params with an
  # injected (float32 array) strength: either way float32 would leak in.
  cases = [(jnp.float32, 0.25), (jnp.bfloat16, jnp.float32(0.25))]
  for dtype, strength in cases:
    params = {"bn": {"scale": jnp.array([1.0, -1.0], dtype)}}
    grads = {"bn": {"scale": jnp.zeros(2, jnp.bfloat16)}}
    tx = rda_optax.add_bn_l1(strength)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert updates["bn"]["scale"].dtype == jnp.bfloat16, dtype
    np.testing.assert_array_equal(
        updates["bn"]["scale"].astype(jnp.float32), [0.25, -0.25])


def test_default_mask_finds_nnx_batchnorm_scales():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 3, (3, 3), rngs=rngs)
      self.norm = nnx.BatchNorm(3, rngs=rngs)

    def __call__(self, x):
      return self.norm(self.conv(x))

  model = Net(nnx.Rngs(0))
  model.norm.scale[...] = jnp.array([2.0, -1.0, 0.0])
  opt = nnx.Optimizer(model, rda_optax.add_bn_l1(0.5), wrt=nnx.Param)
  zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  updates = opt.update(model, zeros)
  np.testing.assert_array_equal(updates["norm"]["scale"], [0.5, -0.5, 0.0])
  np.testing.assert_array_equal(updates["conv"]["kernel"], 0.0)
  # optimizer.update applied it: the scales moved by the penalty.
  np.testing.assert_array_equal(model.norm.scale[...], [2.5, -1.5, 0.0])


def test_a_mask_selects_other_scales():
  # Equinox calls the BatchNorm scale "weight": the default skips it, a
  # mask (a tree of bools or a callable of the params) selects it.
  params = {"norm": {"weight": jnp.array([1.0, -3.0])},
            "lin": {"weight": jnp.ones((2, 2))}}
  grads = jax.tree.map(jnp.zeros_like, params)
  default = rda_optax.add_bn_l1(0.5)
  updates, _ = default.update(grads, default.init(params), params)
  assert all(float(jnp.abs(u).sum()) == 0 for u in jax.tree.leaves(updates))
  for mask in ({"norm": True, "lin": False},
               lambda p: {"norm": True, "lin": {"weight": False}}):
    tx = rda_optax.add_bn_l1(0.5, mask=mask)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates["norm"]["weight"], [0.5, -0.5])
    np.testing.assert_array_equal(updates["lin"]["weight"], 0.0)


def test_bad_arguments_raise():
  params = {"bn": {"scale": jnp.ones(2)}}
  with pytest.raises(ValueError, match="strength"):
    rda_optax.add_bn_l1(-0.1)
  tx = rda_optax.add_bn_l1(0.1)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, tx.init(params))
  with pytest.raises(ValueError, match="mask"):
    rda_optax.add_bn_l1(0.1, mask={"other": True}).init(params)
