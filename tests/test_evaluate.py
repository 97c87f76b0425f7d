"""Evaluation: top-1/top-5 of make_evaluate on pad_for_eval's batches,
against a numpy reference on the unpadded data."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import engine


class _Linear(nn.Module):
  """The smallest model of the trainer's interface (quick to compile)."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("num_classes", [3, 10])
def test_top1_top5_match_numpy_with_padded_rows(num_classes):
  """37 images in batches of 16: 11 padded rows (zero images, label -1)
  count for nothing; top-5 is top-min(5, C) (with 3 classes, every image is
  a top-"5" hit); percentages are of the 37 real images."""
  rng = np.random.default_rng(num_classes)
  n = 37
  x = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
  y = rng.integers(0, num_classes, n).astype(np.int32)
  mean, std = np.float32([0.4]), np.float32([0.3])
  model = _Linear(num_classes)
  v = {"params": jax.jit(model.init)(jax.random.key(0),
                                     jnp.zeros((1, 8, 8, 1)))["params"],
       "batch_stats": {}}
  state = engine.TrainState(v["params"], {}, None, jnp.zeros([], jnp.int32))
  xi, yi, b = engine.pad_for_eval(x, y, 16)
  assert b == 16 and xi.shape[0] == yi.shape[0] == 48
  np.testing.assert_array_equal(xi[:n], x)
  np.testing.assert_array_equal(yi[:n], y)
  assert np.all(xi[n:] == 0) and np.all(yi[n:] == -1)
  top1, top5 = engine.make_evaluate(model, mean, std, jnp.float32)(
      state, jnp.asarray(xi), jnp.asarray(yi), n, b)

  logits = np.asarray(jax.jit(model.apply)(
      v, engine.normalize(jnp.asarray(x), mean, std, jnp.float32)),
      np.float64)
  k = min(5, num_classes)
  order = np.argsort(-logits, axis=1)
  hit1 = order[:, 0] == y
  hit5 = np.any(order[:, :k] == y[:, None], axis=1)
  # The reference runs all 37 images in one batch, the evaluation in
  # batches of 16: rounding may differ (~1e-6), so a row whose decisive
  # logits are that close could go either way. Count such rows as unknown.
  srt = -np.sort(-logits, axis=1)
  gap1 = srt[:, 0] - srt[:, 1]
  gapk = (srt[:, k - 1] - srt[:, k]) if k < num_classes else np.full(n, np.inf)
  near1, neark = gap1 < 1e-4, gapk < 1e-4
  assert near1.sum() + neark.sum() <= 2  # the seeded data is decisive
  lo1, hi1 = hit1[~near1].sum(), hit1[~near1].sum() + near1.sum()
  lo5, hi5 = hit5[~neark].sum(), hit5[~neark].sum() + neark.sum()
  assert 100.0 * lo1 / n <= top1 <= 100.0 * hi1 / n, (top1, lo1, hi1)
  assert 100.0 * lo5 / n <= top5 <= 100.0 * hi5 / n, (top5, lo5, hi5)
  if num_classes == 3:
    assert top5 == 100.0
  else:
    assert 0 < top1 < top5 < 100.0  # the comparison has something to check


@pytest.mark.parametrize("n,batch,multiple,b,m", [
    (37, 16, 1, 16, 48), (37, 1000, 8, 40, 40), (32, 16, 4, 16, 32),
    (5, 3, 2, 4, 8)])
def test_pad_for_eval_batches_divide_over_devices(n, batch, multiple, b, m):
  """The batch is min(batch, n) rounded up to a multiple of the device
  count, and the data is padded to a multiple of the batch."""
  x = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) + 1
  y = np.arange(n, dtype=np.int32)
  xi, yi, got_b = engine.pad_for_eval(x, y, batch, multiple)
  assert (got_b, xi.shape[0], yi.shape[0]) == (b, m, m)
  np.testing.assert_array_equal(xi[:n], x)
  np.testing.assert_array_equal(yi[:n], y)
  assert np.all(xi[n:] == 0) and np.all(yi[n:] == -1)


def test_pad_for_eval_defaults_to_one_device():
  x = np.ones((5, 1, 1, 1), np.uint8)
  xi, yi, b = engine.pad_for_eval(x, np.arange(5, dtype=np.int32), 3)
  assert (b, xi.shape[0]) == (3, 6) and yi[-1] == -1
