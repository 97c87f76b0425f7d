"""A linear model over flattened images, for tests that run
``engine.make_train_epoch`` directly: it counts the rows it is trained on
(``batch_stats["rows"]``, so the epoch has a BatchNorm-like collection) and
records the dtype of every batch it is traced with (``Linear.dtypes``)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from train import engine


class Linear(nn.Module):
  dtypes = []  # class-level: the dtypes of the batches traced, in order

  @nn.compact
  def __call__(self, x, train=True):
    Linear.dtypes.append(x.dtype)
    rows = self.variable("batch_stats", "rows", lambda: jnp.zeros(()))
    if train:
      rows.value += x.shape[0]
    return nn.Dense(10)(x.reshape(x.shape[0], -1).astype(jnp.float32))


def epoch(lr=0.1, **spec):
  """(epoch function, fresh state) for ``Linear`` on 2x2x1 images; ``spec``:
  the ``EpochSpec`` fields (steps, batch, n_images at least)."""
  model = Linear()
  v = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)), train=False)
  tx = optax.sgd(lr)
  spec = dict(model=model, tx=tx, mean=np.zeros(1, np.float32),
              std=np.ones(1, np.float32), augment="none", label_smoothing=0.0,
              num_classes=10, dtype=jnp.float32) | spec
  state = engine.init_state(tx, v["params"], v["batch_stats"])
  return engine.make_train_epoch(engine.EpochSpec(**spec)), state
