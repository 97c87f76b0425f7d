"""Data sets from TensorFlow Datasets: mnist, cifar10, cifar100, imagenet2012.

TensorFlow is imported inside the functions, so the trainer imports (and the
digits and folder sources work) without it installed.
"""

import logging
import os
import socket
from typing import Any

import numpy as np
import tqdm

from train._errors import UsageError
from train.data import _cache
from train.data._types import Arrays

TFDS_DATASETS = ("mnist", "cifar10", "cifar100", "imagenet2012")
# Side of the down-sampled ImageNet images when image_size is not given.
IMAGENET_DEFAULT_SIZE = 64
# Examples per batch pulled out of tf.data; bounds the memory in flight.
_BATCH = 1024


# Where TFDS downloads each data set from (its builders' URLs).
_DOWNLOAD_HOSTS = {"mnist": "storage.googleapis.com",
                   "cifar10": "www.cs.toronto.edu",
                   "cifar100": "www.cs.toronto.edu"}


def _unreachable(host: str, timeout: float = 5.0) -> str | None:
  """Why `host`'s HTTPS port cannot be reached, or None when it can."""
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
  except OSError as e:
    return f"{host} unreachable: {e.strerror or e or type(e).__name__}"
  return None


def _cannot_download(name: str, builder: Any, reason: str) -> UsageError:
  where = os.fspath(builder.data_dir)
  return UsageError(
      f"data set {name} is not in {where} and could not be downloaded "
      f"({reason.splitlines()[0] if reason else 'unknown error'}); download it "
      "where there is network (same --data-dir), or train on the images as "
      "a folder: --dataset folder --data-dir DIR_OR_TARBALL "
      "([split/]class/image)")


def _import_tfds(name: str) -> tuple[Any, Any]:
  """Returns (tensorflow, tensorflow_datasets), or raises UsageError."""
  # TensorFlow's oneDNN start-up note is not for the trainer's user; the
  # decoding TensorFlow does here is exact either way.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  try:
    # pylint: disable=g-import-not-at-top
    # tensorflow_datasets first: it is the one users lack, and it fails fast
    # where importing TensorFlow takes seconds.
    import tensorflow_datasets as tfds
    import tensorflow as tf
    # pylint: enable=g-import-not-at-top
  except ImportError as e:
    raise UsageError(
        f"data set {name} needs TensorFlow Datasets: pip install "
        "tensorflow-datasets tensorflow-cpu, or use the folder data set "
        f"({e})") from e
  try:
    # Data loading needs no accelerator; a GPU build of TensorFlow would
    # otherwise reserve the GPU memory that JAX needs.
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # TensorFlow was initialised already, by the caller's choice.
  return tf, tfds


def load_tfds(name: str, *, data_dir: str | None = None,
              image_size: int | None = None, cache_dir: str | None = None,
              progress: bool = True
              ) -> tuple[Arrays, Arrays, tuple[str, ...]]:
  """Loads the train and test splits of a TFDS image data set as NumPy.

  mnist, cifar10 and cifar100 are downloaded by TFDS on first use (into
  `data_dir`, default `$TFDS_DATA_DIR` or ~/tensorflow_datasets) and loaded
  whole; their test split is the data set's own "test" split.

  imagenet2012 is the down-sampled path: TFDS cannot download it, so
  `data_dir` is the manual-download directory holding
  ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (TFDS prepares its
  records from them once, into `$TFDS_DATA_DIR` or ~/tensorflow_datasets;
  without `data_dir` those records must exist already). Full-size ImageNet
  does not fit in memory, so every image is centre-cropped to a square and
  resized to `image_size` (default 64) while streaming, in batches, into one
  preallocated uint8 array: 1.28M x 64 x 64 x 3 is about 16 GB. The test
  split is ImageNet's labelled "validation" split (50,000 images). The
  down-sampled arrays are cached in `cache_dir` as .npz, so the slow decode
  of the full-size JPEGs happens once per image_size.

  Args:
    name: one of TFDS_DATASETS.
    data_dir: TFDS data directory, or for imagenet2012 the manual-download
      directory.
    image_size: if set, centre-crop and resize every image to this side.
    cache_dir: imagenet2012 only: where the down-sampled arrays are cached;
      None means `_cache.default_cache_dir()`.
    progress: show progress bars.

  Returns:
    (train, test, class_names).

  Raises:
    UsageError: TFDS is not installed, or imagenet2012's manual directory
      is missing.
  """
  tf, tfds = _import_tfds(name)
  download_config = None
  if name == "imagenet2012":
    image_size = image_size or IMAGENET_DEFAULT_SIZE
    # The records TFDS prepares go to its default data dir; data_dir is only
    # where the original tarballs are.
    builder = tfds.builder(name)
    if data_dir is not None:
      if not os.path.isdir(data_dir):
        raise UsageError(f"data_dir {data_dir} (the ImageNet manual-download "
                         "directory) does not exist")
      download_config = tfds.download.DownloadConfig(manual_dir=data_dir)
    elif not builder.is_prepared():
      raise UsageError(
          "imagenet2012 needs data_dir: the directory holding "
          "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar")
    split_names = ("train", "validation")
  else:
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # "Variant folder ... has no dataset_info"
    try:
      builder = tfds.builder(name, data_dir=data_dir)
      prepared = builder.is_prepared()
    finally:
      absl.setLevel(level)
    split_names = ("train", "test")
    # A download replaced by tfds.testing.mock_data needs no network.
    real = type(builder).download_and_prepare.__module__.startswith(
        "tensorflow_datasets.core")
    if not prepared and real:
      # Offline, TFDS retries for minutes before it fails with a traceback.
      reason = _unreachable(_DOWNLOAD_HOSTS[name])
      if reason:
        raise _cannot_download(name, builder, reason)
  try:
    builder.download_and_prepare(download_config=download_config)
  except Exception as e:  # pylint: disable=broad-except
    # TFDS fails in many ways (network, checksums, a missing module);
    # each is one line that says what to do instead.
    if isinstance(e, UsageError):
      raise
    raise _cannot_download(name, builder,
                           f"{type(e).__name__}: {str(e)[:200]}") from None
  class_names = tuple(builder.info.features["label"].names)
  splits = []
  for split in split_names:
    if name == "imagenet2012":
      cache_file = _cache.entry_path(
          cache_dir or _cache.default_cache_dir(), f"{name}-{split}",
          {"tfds": os.path.abspath(os.fspath(builder.data_dir)),
           "split": split, "image_size": image_size})
      cached = _cache.load(cache_file, mmap=("images",))
      if cached is not None:
        splits.append(Arrays(cached["images"], cached["labels"]))
        continue
    arrays = _read_split(tf, tfds, builder, split, image_size, progress)
    if name == "imagenet2012":
      _cache.save(cache_file, arrays._asdict())
    splits.append(arrays)
  return splits[0], splits[1], class_names


def _center_crop_resize(tf: Any, image: Any, size: int) -> Any:
  """tf version of _decode.center_crop_resize, for use inside tf.data."""
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  side = tf.minimum(height, width)
  image = tf.image.crop_to_bounding_box(
      image, (height - side) // 2, (width - side) // 2, side, side)
  image = tf.image.resize(image, (size, size), method="bilinear",
                          antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _read_split(tf: Any, tfds: Any, builder: Any, split: str,
                image_size: int | None, progress: bool) -> Arrays:
  """Streams one split into NumPy arrays, batch by batch.

  This does the job of `tfds.load(..., batch_size=-1)` without its one huge
  batch: that needs the whole split twice in memory, cannot resize on the
  way, and under `tfds.testing.mock_data` (no split sizes known) asks TF
  for a batch of sys.maxsize examples, which aborts the process.
  """
  ds = builder.as_dataset(split=split, as_supervised=True,
                          shuffle_files=False)
  if image_size is not None:
    ds = ds.map(lambda image, label: (  # pylint: disable=g-long-lambda
        _center_crop_resize(tf, image, image_size), label),
                num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(_BATCH).prefetch(tf.data.AUTOTUNE)
  # 0 when unknown (mock data); then batches are gathered and joined.
  expected = int(builder.info.splits[split].num_examples) if (
      split in builder.info.splits) else 0
  images = None
  labels = None
  parts: list[tuple[np.ndarray, np.ndarray]] = []
  count = 0
  with tqdm.tqdm(total=expected or None, desc=f"{builder.name} {split}",
                 unit="img", disable=not progress, leave=False) as bar:
    for image_batch, label_batch in tfds.as_numpy(ds):
      n = len(label_batch)
      if not expected:
        parts.append((image_batch, label_batch))
      else:
        if images is None:
          # One preallocated array, filled in place: peak memory is the
          # result plus one batch, not twice the result.
          images = np.empty((expected,) + image_batch.shape[1:], np.uint8)
          labels = np.empty((expected,), np.int32)
        if count + n > expected:
          raise RuntimeError(
              f"{builder.name} {split} has more than the {expected} examples "
              "its metadata promises")
        images[count:count + n] = image_batch
        labels[count:count + n] = label_batch
      count += n
      bar.update(n)
  if count == 0:
    raise RuntimeError(f"{builder.name} {split} holds no examples")
  if not expected:
    images = np.concatenate([p[0] for p in parts]).astype(np.uint8,
                                                          copy=False)
    labels = np.concatenate([p[1] for p in parts]).astype(np.int32)
  elif count < expected:
    images, labels = images[:count].copy(), labels[:count].copy()
  return Arrays(images, labels)
