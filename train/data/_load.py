"""`load`: one entry point over every data source."""

import os

import numpy as np

from train._errors import UsageError
from train.data import _decode
from train.data import _digits
from train.data import _folder
from train.data import _split
from train.data import _tfds
from train.data._types import Arrays
from train.data._types import Splits

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "imagenet2012",
            "folder")


def load(name: str, *, data_dir: str | None = None,
         test_dir: str | None = None, val_fraction: float = 0.1,
         seed: int = 0, cache_dir: str | None = None,
         skip_bad_images: bool = False, image_size: int | None = None,
         progress: bool = True) -> Splits:
  """Loads a data set into memory as uint8 NHWC images and int32 labels.

  Sources:
    digits: scikit-learn's 8x8 gray digits, offline; its test split is a
      fixed stratified 20% hold-out that does not depend on `seed`.
    mnist, cifar10, cifar100: TensorFlow Datasets (downloaded on first use
      into `data_dir`); test is the data set's "test" split.
    imagenet2012: TensorFlow Datasets from the manual-download directory
      `data_dir`, down-sampled to `image_size` (default 64) on load; test is
      ImageNet's "validation" split. See `_tfds.load_tfds`.
    folder: the directory or tarball `data_dir`, laid out <class>/<image> or
      <split>/<class>/<image>, decoded once and cached in `cache_dir`. See
      `_folder.read_folder`. With split folders, training uses train/ and,
      unless `test_dir` is given, test uses test/ (else val/).

  Args:
    name: one of DATASETS.
    data_dir: see Sources; required for folder, refused for digits (which
      would otherwise train on digits while the caller meant a folder).
    test_dir: a folder or tarball (folder layout) to use as the test split
      instead of the data set's own; its class names must equal the training
      class names, and its images must have the training images' size.
    val_fraction: share of the training images moved, at random, to the
      validation split, in [0, 1); 0 means no validation split.
    seed: seed of the validation split; the same seed gives the same split.
    cache_dir: where decoded folders (and down-sampled ImageNet) are cached;
      None means `$RDA_OPTAX_CACHE`, else ~/.cache/rda-optax.
    skip_bad_images: leave out unreadable image files of a folder source or
      test_dir instead of failing; a `SkippedImagesWarning` (a UserWarning,
      through the `warnings` module) gives their number and the first name.
    image_size: if set, every image is centre-cropped to a square and
      resized to image_size x image_size.
    progress: show progress bars on stderr.

  Returns:
    The splits, with val carved from the training data.

  Raises:
    UsageError: any bad argument or unusable source; the one-line message
      names the offending input.
  """
  if name not in DATASETS:
    raise UsageError(
        f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
  _split.check_val_fraction(val_fraction)
  if image_size is not None and (
      isinstance(image_size, bool) or not isinstance(image_size, int)
      or image_size < 1):
    raise UsageError(f"image_size {image_size!r} is not a positive integer")
  folder_options = dict(image_size=image_size,
                        skip_bad_images=skip_bad_images,
                        cache_dir=cache_dir, progress=progress)

  test: Arrays | None
  skipped: list[str] = []
  if name == "digits":
    if data_dir is not None:
      raise UsageError(
          f"data_dir {data_dir} is not used by the digits data set; to train "
          "on an image folder or tarball, add --dataset folder")
    train, test, class_names = _digits.load_digits()
    if image_size is not None:
      train = train._replace(
          images=_decode.resize_images(train.images, image_size))
      test = test._replace(
          images=_decode.resize_images(test.images, image_size))
    display = name
  elif name == "folder":
    if data_dir is None:
      raise UsageError("data set folder needs data_dir (a directory or a tar "
                       "archive of class folders)")
    data = _folder.read_folder(data_dir, role="data_dir", **folder_options)
    train, class_names, test = data.arrays, data.class_names, None
    skipped += [f"{data_dir}: {f}" for f in data.skipped]
    if test_dir is None and set(data.splits) & {"test", "val"}:
      # The source's own test split (one cache read: every split was
      # decoded with the training split).
      test_dir = data_dir
    display = f"folder:{os.path.basename(os.path.normpath(data_dir))}"
  else:
    train, test, class_names = _tfds.load_tfds(
        name, data_dir=data_dir, image_size=image_size, cache_dir=cache_dir,
        progress=progress)
    display = name

  if test_dir is not None:
    test = _load_test_dir(test_dir, train, class_names, folder_options,
                          skipped)

  train, val = _split.split_validation(train, val_fraction, seed, display)
  return Splits(train=train, val=val, test=test,
                num_classes=len(class_names), class_names=class_names,
                name=display, skipped=tuple(skipped))


def _load_test_dir(test_dir: str, train: Arrays,
                   class_names: tuple[str, ...],
                   folder_options: dict[str, object],
                   skipped: list[str]) -> Arrays:
  """Reads `test_dir` and checks it against the training data; appends its
  skipped files to `skipped`."""
  data = _folder.read_folder(test_dir, role="test_dir", split="test",
                             **folder_options)
  skipped += [f"{test_dir}: {f}" for f in data.skipped]
  if data.class_names != class_names:
    missing = sorted(set(class_names) - set(data.class_names))
    extra = sorted(set(data.class_names) - set(class_names))
    if missing or extra:
      detail = (f"missing {', '.join(missing) or '-'}; "
                f"not in training: {', '.join(extra) or '-'}")
    else:
      detail = "same names, different order"
    raise UsageError(
        f"test_dir {test_dir}: its classes differ from the training classes "
        f"({detail})")
  images = data.arrays.images
  train_shape = train.images.shape[1:]
  if images.shape[1:3] != train_shape[:2]:
    raise UsageError(
        f"test_dir {test_dir}: images are {images.shape[2]}x"
        f"{images.shape[1]} pixels but training images are "
        f"{train_shape[1]}x{train_shape[0]}; set image_size to resize both")
  if images.shape[3] != train_shape[2]:
    if images.shape[3] == 1:
      # Gray test images for a colour model: three equal channels, as PIL's
      # L->RGB conversion gives; nothing is lost.
      images = np.repeat(images, train_shape[2], axis=3)
    else:
      raise UsageError(
          f"test_dir {test_dir}: images have {images.shape[3]} channels but "
          f"training images have {train_shape[2]}")
  return Arrays(images, data.arrays.labels)
