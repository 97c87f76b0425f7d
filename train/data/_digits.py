"""scikit-learn's 8x8 digits: a tiny offline data set for smoke runs."""

import numpy as np

from train.data._types import Arrays

# Share of the 1797 images held out as the fixed test split.
_TEST_FRACTION = 0.2


def load_digits() -> tuple[Arrays, Arrays, tuple[str, ...]]:
  """Loads the 1797 digits images, split into fixed train and test parts.

  Pixel values 0..16 are scaled to uint8 0..255 and given one channel. The
  test part is a stratified 20% hold-out drawn with a fixed random_state, not
  the trainer's seed, so that every run is scored on the same images; the
  validation split is carved later from the remaining 80%.

  Returns:
    (train, test, class_names) with images of shape (N, 8, 8, 1).
  """
  # Imported here: scikit-learn takes a second to import, and every decode
  # worker process imports this package.
  # pylint: disable=g-import-not-at-top
  from sklearn import datasets as sk_datasets
  from sklearn import model_selection
  # pylint: enable=g-import-not-at-top
  bunch = sk_datasets.load_digits()
  images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = bunch.target.astype(np.int32)
  train_index, test_index = model_selection.train_test_split(
      np.arange(len(labels)), test_size=_TEST_FRACTION, random_state=0,
      stratify=labels)
  train_index = np.sort(train_index)
  test_index = np.sort(test_index)
  class_names = tuple(str(name) for name in bunch.target_names)
  return (Arrays(images[train_index], labels[train_index]),
          Arrays(images[test_index], labels[test_index]),
          class_names)
