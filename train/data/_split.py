"""Carving a validation split out of the training data."""

import warnings

import numpy as np

from train._errors import UsageError
from train.data._types import Arrays
from train.data._types import DataWarning
from train.data._types import RowView


def check_val_fraction(val_fraction: float) -> None:
  """Raises UsageError unless 0 <= val_fraction < 1 (NaN is rejected too)."""
  if not 0.0 <= val_fraction < 1.0:
    raise UsageError(
        f"val_fraction {val_fraction!r} is outside [0, 1)")


def take(arrays: Arrays, index: np.ndarray) -> Arrays:
  """Returns the examples at `index`, as fresh contiguous arrays."""
  return Arrays(images=np.asarray(arrays.images[index]),
                labels=arrays.labels[index])


def _lazy(arrays: Arrays, index: np.ndarray) -> Arrays:
  """The examples at `index`; memory-mapped images stay on disk (a RowView)
  until the trainer reads the rows it needs."""
  if isinstance(arrays.images, np.memmap):
    return Arrays(RowView(arrays.images, index), arrays.labels[index])
  return take(arrays, index)


def split_validation(train: Arrays, val_fraction: float, seed: int,
                     source: str) -> tuple[Arrays, Arrays | None]:
  """Splits `train` into (train, val) at random, reproducibly.

  The same `seed` and data always give the same split. Both parts keep the
  original example order (the trainer shuffles on its own), which makes the
  split easy to inspect and independent of how the caller iterates.

  Args:
    train: all training examples.
    val_fraction: share of the examples to move to the validation split, in
      [0, 1); 0 means no validation split.
    seed: seed of the permutation that picks the validation examples.
    source: name of the data set, for error messages.

  Returns:
    (train, val), with val None when val_fraction is 0.

  Raises:
    UsageError: val_fraction is outside [0, 1), or it would give an empty
      validation split or leave no training examples.
  """
  check_val_fraction(val_fraction)
  if val_fraction == 0:
    return _lazy(train, np.arange(len(train.labels))), None
  n = len(train.labels)
  n_val = int(round(val_fraction * n))
  if n_val == 0:
    raise UsageError(
        f"val_fraction {val_fraction} of the {n} training images of {source} "
        "gives an empty validation split")
  if n_val >= n:
    raise UsageError(
        f"val_fraction {val_fraction} of the {n} training images of {source} "
        "leaves no training images")
  perm = np.random.default_rng(seed).permutation(n)
  val_index = np.sort(perm[:n_val])
  train_index = np.sort(perm[n_val:])
  # The split stays as it is (past results depend on it through the seed);
  # a class that ended up in the validation split alone is said, because
  # its 0% there would otherwise look like a training failure.
  labels = np.asarray(train.labels)
  lost = np.setdiff1d(np.unique(labels[val_index]),
                      np.unique(labels[train_index]))
  if lost.size:
    warnings.warn(
        f"{source}: {lost.size} of the {np.unique(labels).size} classes have "
        f"all their images in the validation split (val_fraction "
        f"{val_fraction}), none to train on (the first is class {lost[0]}); "
        "add images or lower --val-fraction", DataWarning, stacklevel=2)
  return _lazy(train, train_index), take(train, val_index)
