"""What a run feeds its model: the data set of a configuration, checked
against the batch and the devices, and the compute dtype and augmentation
that ``auto`` resolves to."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from train import data as data_lib
from train import engine
from train import interrupts
from train._errors import Stopped, UsageError
from train.config import Config


def load_data(cfg: Config) -> data_lib.Splits:
  """The data set of ``cfg``, split; one line for what a user can fix."""
  try:
    return data_lib.load(
        cfg.dataset, data_dir=cfg.data_dir, test_dir=cfg.test_dir,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed if cfg.val_seed is None else cfg.val_seed,
        cache_dir=cfg.cache_dir,
        skip_bad_images=cfg.skip_bad_images, image_size=cfg.image_size,
        progress=cfg.progress != "none")
  except interrupts.Interrupted:
    raise Stopped("interrupted while loading the data; nothing was written",
                  130) from None
  except MemoryError:
    size = f" at --image-size {cfg.image_size}" if cfg.image_size else ""
    raise UsageError(f"--dataset {cfg.dataset}: not enough memory to hold the "
                     f"decoded images{size}") from None


def data_sharding(cfg: Config) -> str:
  """``--data-sharding``, with ``auto`` resolved for the process count."""
  if cfg.data_sharding != "auto":
    return cfg.data_sharding
  return "sharded" if jax.process_count() > 1 else "replicated"


def check_data(cfg: Config, splits: data_lib.Splits) -> None:
  """What needs the data loaded: batch against the set and the devices,
  the classes."""
  n = splits.train.images.shape[0]
  if cfg.batch_size > n:
    raise UsageError(f"--batch-size {cfg.batch_size} is larger than the "
                     f"training set ({n} images)")
  ndev = cfg.devices or jax.device_count()
  if cfg.batch_size % ndev:
    raise UsageError(f"--batch-size {cfg.batch_size} must be a multiple of "
                     f"the device count {ndev}")
  if data_sharding(cfg) == "sharded" and cfg.batch_size // ndev > n // ndev:
    raise UsageError(f"--batch-size {cfg.batch_size}: each of {ndev} devices "
                     f"would sample {cfg.batch_size // ndev} images from its "
                     f"shard of {n // ndev}")
  if cfg.num_classes is not None and cfg.num_classes != splits.num_classes:
    raise UsageError(f"--num-classes {cfg.num_classes} does not match the "
                     f"data: {splits.name} has {splits.num_classes} classes")
  if splits.num_classes < 2:
    raise UsageError(f"data set {splits.name} has {splits.num_classes} class")


def compute_dtype(cfg: Config):
  """``--dtype``, with ``auto`` resolved for the backend JAX runs on."""
  if cfg.dtype == "auto":
    return engine.accelerator_defaults(jax.default_backend())[0]
  return jnp.dtype(cfg.dtype)


def augment_mode(cfg: Config, image_shape) -> str:
  """``--augment``, with ``auto`` resolved for the images' shape."""
  if cfg.augment != "auto":
    return cfg.augment
  # Crop + flip is the CIFAR recipe; digits are neither flip-invariant nor
  # big enough for a 4-pixel crop.
  h, _, c = image_shape
  return "crop-flip" if (c == 3 and h >= 32) else "none"
