"""The two containers every data source returns."""

from typing import NamedTuple

import numpy as np


class Arrays(NamedTuple):
  """A labelled set of images, fully in memory.

  Attributes:
    images: uint8 array of shape (N, H, W, C), NHWC; C is 1 for gray images
      and 3 for colour images.
    labels: int32 array of shape (N,), each an index into the class names.
  """
  images: np.ndarray
  labels: np.ndarray


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
