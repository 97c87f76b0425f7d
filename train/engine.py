"""The compiled parts: one whole epoch per call, and evaluation.

The training images live on the device as uint8; each epoch is one jitted
``lax.scan`` over mini-batches that gathers, augments (pad-4 random crop and
horizontal flip), normalizes, runs the forward/backward pass and the
optimizer, so the host only launches one call per epoch.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from train.parallel import BATCH_AXES


class TrainState(NamedTuple):
  params: Any
  batch_stats: Any
  opt_state: Any
  step: jax.Array


def accelerator_defaults(platform: str) -> tuple[Any, bool]:
  """(compute dtype of ``--dtype auto``, whether an epoch is one compiled
  ``lax.scan``) on ``platform`` (``jax.default_backend()``): bfloat16 and
  scanned epochs on accelerators, float32 and a host loop on CPU."""
  accel = platform != "cpu"
  return (jnp.bfloat16 if accel else jnp.float32), accel


def init_state(tx: optax.GradientTransformation, params: Any,
               batch_stats: Any) -> TrainState:
  """The state at step 0 of training ``params`` with ``tx`` (the optimizer
  as :class:`EpochSpec` takes it; its state is that of ``wrap_finite(tx)``,
  which the epoch runs)."""
  return TrainState(params, batch_stats, wrap_finite(tx).init(params),
                    jnp.zeros([], jnp.int32))


def wrap_finite(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  # Skip a step whose gradient is non-finite and keep the optimizer state as
  # it was (RDA's average would otherwise be poisoned for good). The run
  # stops on the host after --max-bad-steps consecutive skips, so optax's
  # own give-up count is set out of reach.
  return optax.apply_if_finite(tx, max_consecutive_errors=2**30)


def augment_batch(key: jax.Array, x: jax.Array, mode: str) -> jax.Array:
  """Pad-4 random crop (and horizontal flip) of a uint8 NHWC batch."""
  if mode == "none":
    return x
  n, h, w, _ = x.shape
  kc, kf = jax.random.split(key)
  pad = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
  offs = jax.random.randint(kc, (n, 2), 0, 9)
  x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(
      im, (o[0], o[1], 0), (h, w, im.shape[-1])))(pad, offs)
  if mode == "crop-flip":
    flip = jax.random.bernoulli(kf, 0.5, (n, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1, :], x)
  return x


def channel_stats(images: np.ndarray, chunk: int = 4096,
                  rows: np.ndarray | None = None,
                  reduce: Any = None):
  """Per-channel mean and std of uint8 NHWC images, in [0, 1] units.

  Chunked, so ImageNet-size arrays are never copied to float whole. With
  ``rows``, only those images are read; ``reduce`` then sums the partial
  sums over the processes of a run (``parallel.sum_over_processes``), so
  every process gets the statistics of the union of their rows.
  """
  count = images.shape[0] if rows is None else len(rows)
  sums = np.zeros((3, images.shape[-1]))
  for i in range(0, count, chunk):
    part = slice(i, i + chunk) if rows is None else rows[i:i + chunk]
    x = np.asarray(images[part]).astype(np.float64) / 255.0
    sums[0] += x.sum(axis=(0, 1, 2))
    sums[1] += np.square(x).sum(axis=(0, 1, 2))
    sums[2] += x.shape[0] * x.shape[1] * x.shape[2]
  if reduce is not None:
    sums = reduce(sums)
  total, total_sq, n = sums[0], sums[1], sums[2][0]
  mean = total / n
  std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0)) + 1e-3
  return mean.astype(np.float32), std.astype(np.float32)


def normalize(x: jax.Array, mean: jax.Array, std: jax.Array,
              dtype: Any) -> jax.Array:
  return ((x.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)


class EpochSpec(NamedTuple):
  """What one compiled training epoch is made of.

  Attributes:
    model: the Flax module, applied in train mode (BatchNorm statistics
      mutable).
    tx: the optimizer; the epoch runs it inside :func:`wrap_finite`, so the
      state is :func:`init_state`'s.
    steps: steps per epoch.
    batch: the global batch.
    mean, std: per-channel normalization, in [0, 1] units.
    augment: ``none``, ``crop`` or ``crop-flip`` (:func:`augment_batch`).
    label_smoothing: of the cross-entropy.
    num_classes: of the labels.
    dtype: the compute dtype of the batch.
    n_images: training rows to sample from (per shard with ``sharded_data``).
    scan: one ``lax.scan`` per epoch (True), a host loop of jitted steps
      (False), or the backend's choice (None: a loop on CPU only).
    topo: a ``train.parallel.Topology`` to split the batch over, or None.
    state_shardings: where the new state is kept on ``topo``'s mesh.
    max_bad: halt the epoch at this many consecutive skipped steps.
    sharded_data: ``images`` holds one row shard per device.
  """
  model: nn.Module
  tx: optax.GradientTransformation
  steps: int
  batch: int
  mean: np.ndarray
  std: np.ndarray
  augment: str
  label_smoothing: float
  num_classes: int
  dtype: Any
  n_images: int
  scan: bool | None = None
  topo: Any = None
  state_shardings: Any = None
  max_bad: int | None = None
  sharded_data: bool = False


class StepMetrics(NamedTuple):
  """What one step reports: 0 for a skipped or halted step, whose loss and
  counts are not the epoch's."""
  loss: jax.Array
  correct: jax.Array  # top-1 hits in the batch
  skipped: jax.Array  # 1 if the gradient was non-finite
  halted: jax.Array  # 1 if the epoch had already halted (max_bad)
  top5: jax.Array  # top-5 hits in the batch


def make_train_epoch(spec: EpochSpec):
  """Returns ``epoch(state, images, labels, key) -> (state, metrics)``.

  With ``max_bad``, once ``max_bad`` consecutive steps have been skipped for
  non-finite gradients, the remaining steps of the epoch leave the state
  untouched (``halted_steps`` counts them), so the run can stop on the last
  good state without the host reading a flag after every step.

  With a ``train.parallel.Topology``, the batch is split over its mesh and
  the new state is kept on ``state_shardings``; the epoch's sampling does
  not depend on the device count, so 1 and 8 devices see the same batches.

  With ``sharded_data`` (and a topology), the training images are not
  replicated: ``images`` holds ``topo.size`` equal row shards, one per
  device (``n_images`` rows each, see ``train.parallel.shard_rows``), and
  each device draws its slice of every batch from its own shard, with a
  local gather. The batches then depend on the device count, not on how the
  devices are split between processes.
  """
  model, steps, batch, num_classes = (spec.model, spec.steps, spec.batch,
                                      spec.num_classes)
  topo, sharded_data, max_bad = spec.topo, spec.sharded_data, spec.max_bad
  tx = wrap_finite(spec.tx)
  if sharded_data and topo is None:
    raise ValueError("sharded_data needs a topology")
  shards = topo.size if sharded_data else 1
  if batch % shards:
    raise ValueError(f"batch {batch} is not a multiple of {shards} shards")
  mean = jnp.asarray(spec.mean, jnp.float32)
  std = jnp.asarray(spec.std, jnp.float32)

  def loss_fn(params, batch_stats, x, y):
    logits, new_vars = model.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True,
        mutable=["batch_stats"])
    onehot = optax.smooth_labels(jax.nn.one_hot(y, num_classes),
                                 spec.label_smoothing)
    loss = optax.softmax_cross_entropy(logits, onehot).mean()
    return loss, (logits, new_vars["batch_stats"])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def constrain(tree, shardings):
    if shardings is None:
      return tree
    return jax.lax.with_sharding_constraint(tree, shardings)

  if sharded_data:
    row = jax.sharding.PartitionSpec(BATCH_AXES)
    # Each device indexes its own shard: no data crosses devices.
    local_gather = jax.shard_map(lambda a, i: a[i], mesh=topo.mesh,
                                 in_specs=(row, row), out_specs=row)

  def gather(images, labels, idx):
    if sharded_data:
      return local_gather(images, idx), local_gather(labels, idx)
    return images[idx], labels[idx]

  def train_step(state: TrainState, images, labels, idx, key):
    x, y = gather(images, labels, idx)
    if topo is not None:
      x = constrain(x, topo.batch(x.ndim))
      y = constrain(y, topo.batch(1))
    x = normalize(augment_batch(key, x, spec.augment), mean, std, spec.dtype)
    (loss, (logits, new_bs)), grads = grad_fn(
        state.params, state.batch_stats, x, y)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = opt_state.last_finite
    # A skipped step must not move the BatchNorm statistics either.
    batch_stats = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_bs,
                               state.batch_stats)
    correct = jnp.sum(jnp.argmax(logits, -1) == y)
    top5 = jnp.sum(jnp.any(jax.lax.top_k(logits, min(5, num_classes))[1]
                           == y[:, None], -1))
    new = constrain(TrainState(params, batch_stats, opt_state, state.step + 1),
                    spec.state_shardings)
    f32 = lambda v: jnp.where(ok, v, 0).astype(jnp.float32)  # noqa: E731
    return new, StepMetrics(f32(loss), f32(correct),
                            (~ok).astype(jnp.float32), jnp.float32(0),
                            f32(top5))

  # XLA:CPU runs convolutions inside a while loop (lax.scan) about 30x
  # slower than the same ops at top level (measured: small_cnn on digits,
  # 210 vs 7 ms/step), so on CPU the epoch is a host loop of jitted steps;
  # on accelerators, one compiled scan per epoch keeps the host out of the
  # way. Both run the same step function.
  use_scan = (spec.scan if spec.scan is not None
              else accelerator_defaults(jax.default_backend())[1])
  halted_step = StepMetrics(*map(jnp.float32, (0, 0, 0, 1, 0)))

  def step(state: TrainState, images, labels, idx, key):
    if max_bad is None:
      return train_step(state, images, labels, idx, key)
    # The step runs and its result is dropped when halted, rather than a
    # lax.cond skipping it: XLA:CPU is as slow with convolutions inside a
    # conditional as inside a loop (measured: 4.2 s against 0.16 s per
    # digits epoch), and on accelerators a straight-line step lets the
    # select fuse into the update. Halted steps only happen on the way to
    # a stop, so their wasted compute does not matter.
    halted = state.opt_state.notfinite_count >= max_bad
    new, m = train_step(state, images, labels, idx, key)
    return (jax.tree.map(lambda a, b: jnp.where(halted, a, b), state, new),
            jax.tree.map(lambda a, b: jnp.where(halted, a, b), halted_step, m))

  def plan_fn(key):
    kp, ka = jax.random.split(key)
    if sharded_data:
      # Shard d's rows for the epoch, in the columns device d owns.
      per = batch // shards
      cols = [jax.random.permutation(jax.random.fold_in(kp, d), spec.n_images)
              [:steps * per].reshape(steps, per) for d in range(shards)]
      return jnp.concatenate(cols, axis=1), jax.random.split(ka, steps)
    perm = jax.random.permutation(kp, spec.n_images)[:steps * batch]
    return perm.reshape(steps, batch), jax.random.split(ka, steps)

  # Every process draws the same global permutation, so the batches are
  # those of a single device; each device then gathers its slice.
  plan = jax.jit(plan_fn, out_shardings=(
      None if topo is None else (topo.batch(2, axis=1), topo.replicated())))

  def summarize(state, per_step: StepMetrics):
    total = StepMetrics(*map(jnp.sum, per_step))
    # An epoch with no applied step has no loss: NaN, never a perfect 0.
    good = steps - total.skipped - total.halted
    return dict(loss=total.loss / good,
                train_top1=100.0 * total.correct / (good * batch),
                train_top5=100.0 * total.top5 / (good * batch),
                skipped_steps=total.skipped.astype(jnp.int32),
                halted_steps=total.halted.astype(jnp.int32),
                consecutive_bad=state.opt_state.notfinite_count)

  @functools.partial(jax.jit, donate_argnums=(0,))
  def scanned_epoch(state, images, labels, idx, keys):
    state, per_step = jax.lax.scan(
        lambda s, xs: step(s, images, labels, *xs), state, (idx, keys))
    return state, summarize(state, per_step)

  jit_step = jax.jit(step, donate_argnums=(0,))

  def looped_epoch(state, images, labels, idx, keys, on_step=None):
    per_step = []
    for i in range(steps):
      state, m = jit_step(state, images, labels, idx[i], keys[i])
      per_step.append(m)
      if on_step is not None:
        on_step(i + 1, steps, m)
    return state, summarize(
        state, jax.tree.map(lambda *xs: jnp.stack(xs), *per_step))

  def epoch(state, images, labels, key, on_step=None):
    """One epoch. ``on_step(done, steps, metrics)`` is called after each
    step is dispatched on the host loop (never inside the compiled scan);
    blocking on ``metrics`` waits for that step."""
    idx, keys = plan(key)
    if use_scan:
      return scanned_epoch(state, images, labels, idx, keys)
    return looped_epoch(state, images, labels, idx, keys, on_step)

  return epoch


def make_evaluate(model: nn.Module, mean: np.ndarray, std: np.ndarray,
                  dtype: Any, topo: Any = None):
  """Returns ``evaluate(state, images, labels, count, batch) -> (top1 %,
  top5 %)``.

  The data is padded on the host to a multiple of ``batch`` once
  (:func:`pad_for_eval`); padded rows carry label -1 and count for nothing.
  """
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)

  @functools.partial(jax.jit, static_argnums=4)
  def run(params, batch_stats, images, labels, batch):
    def body(carry, xy):
      x, y = xy
      if topo is not None:
        x = jax.lax.with_sharding_constraint(x, topo.batch(x.ndim))
        y = jax.lax.with_sharding_constraint(y, topo.batch(1))
      logits = model.apply({"params": params, "batch_stats": batch_stats},
                           normalize(x, mean, std, dtype), train=False)
      k = min(5, logits.shape[-1])
      topk = jax.lax.top_k(logits, k)[1]
      hit = topk == y[:, None]
      valid = y >= 0
      return (carry[0] + jnp.sum(hit[:, 0] & valid),
              carry[1] + jnp.sum(jnp.any(hit, -1) & valid)), None
    n = images.shape[0] // batch
    xs = images.reshape(n, batch, *images.shape[1:])
    ys = labels.reshape(n, batch)
    (c1, c5), _ = jax.lax.scan(body, (jnp.int32(0), jnp.int32(0)), (xs, ys))
    return c1, c5

  def evaluate(state: TrainState, images, labels, count: int, batch: int):
    c1, c5 = run(state.params, state.batch_stats, images, labels, batch)
    return 100.0 * float(c1) / count, 100.0 * float(c5) / count

  return evaluate


def pad_for_eval(images: np.ndarray, labels: np.ndarray, batch: int,
                 multiple: int = 1):
  n = images.shape[0]
  b = min(batch, n)
  b = -(-b // multiple) * multiple  # every device gets an equal slice
  m = -(-n // b) * b
  if m != n:
    images = np.concatenate(
        [images, np.zeros((m - n,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, -np.ones(m - n, labels.dtype)])
  return images, labels, b
