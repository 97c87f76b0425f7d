"""The two containers every data source returns."""

from typing import NamedTuple

import numpy as np


class DataWarning(UserWarning):
  """Something about the data worth a user's attention that does not stop a
  run; the command line prints each as one line."""


class Arrays(NamedTuple):
  """A labelled set of images, fully in memory.

  Attributes:
    images: uint8 array of shape (N, H, W, C), NHWC; C is 1 for gray images
      and 3 for colour images.
    labels: int32 array of shape (N,), each an index into the class names.
  """
  images: np.ndarray
  labels: np.ndarray


class RowView:
  """Rows ``index`` of a (memory-mapped) array, read only when indexed.

  Stands in for a NumPy array where the trainer needs ``shape``, ``dtype``,
  ``ndim``, ``len`` and row indexing (an int array, a slice, or a tuple
  whose first item is one of those). Indexing reads just the rows asked
  for, in increasing file order, and records them in ``rows_read``.
  """

  def __init__(self, base: np.ndarray, index: np.ndarray):
    self.base = base
    self.index = np.asarray(index, np.int64)
    self._read = np.zeros(base.shape[0], bool)

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self.index),) + tuple(self.base.shape[1:])

  @property
  def dtype(self) -> np.dtype:
    return self.base.dtype

  @property
  def ndim(self) -> int:
    return self.base.ndim

  def __len__(self) -> int:
    return len(self.index)

  @property
  def rows_read(self) -> int:
    """How many distinct rows of ``base`` indexing has read so far."""
    return int(self._read.sum())

  def __getitem__(self, key):
    key, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
    rows = self.index[key]
    flat = np.atleast_1d(rows)
    order = np.argsort(flat, kind="stable")  # read in file order
    out = np.empty(flat.shape + tuple(self.base.shape[1:]), self.base.dtype)
    out[order] = self.base[flat[order]]
    self._read[flat] = True
    out = out.reshape(rows.shape + out.shape[1:])  # a single row: no axis
    return out[(slice(None),) * rows.ndim + rest]

  def __array__(self, dtype=None, copy=None):
    out = self[:]
    return out if dtype is None else out.astype(dtype)


class Splits(NamedTuple):
  """Everything the trainer needs to know about one data set.

  Attributes:
    train: the images to train on (the validation images removed).
    val: images carved from the training data when `val_fraction > 0`, else
      None.
    test: the data set's own test split, or the images of `test_dir`; None
      when the source has neither.
    num_classes: number of classes; labels lie in [0, num_classes).
    class_names: one name per label, in label order.
    name: a short description for logs, e.g. "digits", "cifar10",
      "folder:train.tar.xz".
    skipped: unreadable files left out with `skip_bad_images`, as
      "<source>: <path inside it>"; empty otherwise.
  """
  train: Arrays
  val: Arrays | None
  test: Arrays | None
  num_classes: int
  class_names: tuple[str, ...]
  name: str
  skipped: tuple[str, ...] = ()
