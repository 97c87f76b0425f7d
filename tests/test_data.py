"""Tests for the trainer's data sources in ``train/data/``."""

import io
import math
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from train import inputs
from train import checks
from train import data
from train import progress
from train._errors import UsageError
from train.data import _cache
from train.data import _decode
from train.data import _folder
from train.data import _split

CLASSES = ("cat", "dog", "emu")
PER_CLASS = 10
WIDTH, HEIGHT = 12, 10
# The real CIFAR-10 training tarball, when this checkout sits next to it.
CIFAR_TAR = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir,
                         "shared", "data", "cifar10-jpeg", "train.tar.xz")


# --- Fixtures: tiny image folders written with PIL. ---------------------------


def _colour(label, index):
  # The red channel encodes the class, so labels can be read back from the
  # pixels even through JPEG (solid colours survive it to within a few
  # levels).
  return (label * 100, index * 20, 128)


def write_folder(root, *, split=None, classes=CLASSES, per_class=PER_CLASS,
                 gray=False, size=(WIDTH, HEIGHT)):
  """Writes per_class images per class, half PNG and half JPEG.

  Args:
    root: directory to create the layout in.
    split: if set, wrap the class folders in this folder ("train/").
    classes: class folder names.
    per_class: images per class.
    gray: write mode-L images.
    size: (width, height) of every image.

  Returns:
    The directory holding the class folders' parent (root).
  """
  base = root / split if split else root
  for label, name in enumerate(classes):
    folder = base / name
    folder.mkdir(parents=True)
    for i in range(per_class):
      colour = _colour(label, i)
      image = Image.new("RGB", size, colour)
      if gray:
        image = image.convert("L")
      ext = "png" if i % 2 == 0 else "jpg"
      image.save(folder / f"{i:04d}.{ext}")
  return root


def make_tar(src, dest):
  """Packs the contents of directory src into dest, compressed by suffix."""
  mode = {".xz": "w:xz", ".gz": "w:gz", ".tgz": "w:gz"}.get(dest.suffix, "w")
  with tarfile.open(dest, mode) as archive:
    for name in sorted(os.listdir(src)):
      archive.add(src / name, arcname=name)
  return dest


def assert_labels_match_pixels(arrays):
  red = arrays.images[:, HEIGHT // 2, WIDTH // 2, 0].astype(int)
  np.testing.assert_array_equal(np.round(red / 100).astype(int),
                                arrays.labels)


@pytest.fixture(name="cache")
def fixture_cache(tmp_path):
  return str(tmp_path / "cache")


def load_folder(source, cache, **kwargs):
  kwargs.setdefault("progress", False)
  return data.load("folder", data_dir=str(source), cache_dir=cache, **kwargs)


# --- digits -------------------------------------------------------------------


def test_digits_shapes_range_labels():
  splits = data.load("digits", progress=False)
  assert splits.name == "digits"
  assert splits.num_classes == 10
  assert splits.class_names == tuple(str(i) for i in range(10))
  for part in (splits.train, splits.val, splits.test):
    assert part.images.dtype == np.uint8
    assert part.images.shape[1:] == (8, 8, 1)
    assert part.labels.dtype == np.int32
    assert part.labels.shape == (len(part.images),)
    assert set(np.unique(part.labels)) == set(range(10))
  assert splits.train.images.max() == 255 and splits.train.images.min() == 0
  assert len(splits.test.labels) == 360
  total = sum(len(p.labels) for p in (splits.train, splits.val, splits.test))
  assert total == 1797
  assert len(splits.val.labels) == round(0.1 * 1437)


def test_digits_test_split_does_not_depend_on_seed():
  a = data.load("digits", seed=0, progress=False)
  b = data.load("digits", seed=1, progress=False)
  np.testing.assert_array_equal(a.test.images, b.test.images)
  np.testing.assert_array_equal(a.test.labels, b.test.labels)
  assert not np.array_equal(a.val.images, b.val.images)


def test_val_seed_fixes_the_validation_split_across_seeds():
  from train import config as config_lib
  from train import run as run_lib
  load = lambda **f: inputs.load_data(
      checks.build("digits-demo", None, dict(progress="none", **f)))
  base = load(seed=0)
  other = load(seed=1)
  fixed = load(seed=1, val_seed=0)
  assert not np.array_equal(base.val.images, other.val.images)
  np.testing.assert_array_equal(base.val.images, fixed.val.images)
  np.testing.assert_array_equal(base.train.labels, fixed.train.labels)


def test_digits_image_size_resizes():
  splits = data.load("digits", image_size=16, val_fraction=0, progress=False)
  assert splits.train.images.shape[1:] == (16, 16, 1)
  assert splits.test.images.shape[1:] == (16, 16, 1)
  assert splits.val is None


# --- validation split ---------------------------------------------------------


def test_val_split_deterministic_and_disjoint():
  n = 100
  arrays = data.Arrays(np.zeros((n, 2, 2, 1), np.uint8),
                       np.arange(n, dtype=np.int32))
  train1, val1 = _split.split_validation(arrays, 0.25, 7, "x")
  train2, val2 = _split.split_validation(arrays, 0.25, 7, "x")
  _, val3 = _split.split_validation(arrays, 0.25, 8, "x")
  np.testing.assert_array_equal(val1.labels, val2.labels)
  np.testing.assert_array_equal(train1.labels, train2.labels)
  assert not np.array_equal(val1.labels, val3.labels)
  assert len(val1.labels) == 25
  assert not set(train1.labels) & set(val1.labels)
  assert sorted(set(train1.labels) | set(val1.labels)) == list(range(n))


def test_val_fraction_zero_gives_no_val():
  splits = data.load("digits", val_fraction=0.0, progress=False)
  assert splits.val is None
  assert len(splits.train.labels) == 1437


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, math.nan])
def test_val_fraction_out_of_range(fraction):
  with pytest.raises(UsageError, match="val_fraction") as info:
    data.load("digits", val_fraction=fraction, progress=False)
  assert repr(fraction) in str(info.value)


@pytest.mark.parametrize("fraction,problem",
                         [(0.001, "empty validation"),
                          (0.99, "leaves no training")])
def test_val_split_empty_or_everything(tmp_path, cache, fraction, problem):
  source = write_folder(tmp_path / "imgs")
  with pytest.raises(UsageError, match=problem) as info:
    load_folder(source, cache, val_fraction=fraction)
  assert str(fraction) in str(info.value)


# --- folder: layouts, cache, test_dir -----------------------------------------


@pytest.mark.parametrize("as_tar", [False, True], ids=["dir", "tar"])
@pytest.mark.parametrize("split", [None, "train"], ids=["flat", "wrapped"])
def test_folder_layouts(tmp_path, cache, as_tar, split):
  source = write_folder(tmp_path / "imgs", split=split)
  if as_tar:
    source = make_tar(source, tmp_path / "imgs.tar.xz")
  splits = load_folder(source, cache, val_fraction=0)
  assert splits.class_names == CLASSES
  assert splits.num_classes == 3
  assert splits.name == f"folder:{source.name}"
  assert splits.val is None and splits.test is None
  train = splits.train
  assert train.images.shape == (3 * PER_CLASS, HEIGHT, WIDTH, 3)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  np.testing.assert_array_equal(train.labels,
                                np.repeat(np.arange(3), PER_CLASS))
  assert_labels_match_pixels(train)
  # PNG is lossless: the first image of each class is exact.
  np.testing.assert_array_equal(train.images[PER_CLASS, 0, 0],
                                _colour(1, 0))


def test_folder_dir_and_tar_agree(tmp_path, cache):
  source = write_folder(tmp_path / "imgs", split="train")
  tar = make_tar(source, tmp_path / "imgs.tgz")
  a = load_folder(source, cache, val_fraction=0.2, seed=3)
  b = load_folder(tar, cache, val_fraction=0.2, seed=3)
  for x, y in zip((a.train, a.val), (b.train, b.val)):
    np.testing.assert_array_equal(x.images, y.images)
    np.testing.assert_array_equal(x.labels, y.labels)


def test_folder_gray_images_get_one_channel(tmp_path, cache):
  source = write_folder(tmp_path / "imgs", gray=True)
  splits = load_folder(source, cache, val_fraction=0)
  assert splits.train.images.shape == (3 * PER_CLASS, HEIGHT, WIDTH, 1)


def test_folder_ignores_hidden_and_loose_files(tmp_path, cache):
  source = write_folder(tmp_path / "imgs", split="train")
  (source / "README.md").write_text("not an image")
  (source / "train" / "notes.txt").write_text("not an image either")
  (source / "train" / "cat" / ".DS_Store").write_bytes(b"\0junk")
  (source / "train" / "__MACOSX").mkdir()
  tar = make_tar(source, tmp_path / "imgs.tar")
  for src in (source, tar):
    splits = load_folder(src, cache, val_fraction=0)
    assert splits.class_names == CLASSES
    assert len(splits.train.labels) == 3 * PER_CLASS


def test_folder_cache_hit_skips_decoding(tmp_path, cache, monkeypatch):
  source = make_tar(write_folder(tmp_path / "imgs"), tmp_path / "imgs.tar.xz")
  first = load_folder(source, cache, val_fraction=0)
  entries = os.listdir(cache)
  assert len(entries) == 1 and entries[0].endswith(".npz")

  def no_decoding(*args, **kwargs):
    raise AssertionError("decoded although the cache holds the data")

  monkeypatch.setattr(_folder, "_decode_folder", no_decoding)
  second = load_folder(source, cache, val_fraction=0)
  np.testing.assert_array_equal(first.train.images, second.train.images)
  np.testing.assert_array_equal(first.train.labels, second.train.labels)
  assert first.class_names == second.class_names
  # A changed source (new mtime) is a miss.
  os.utime(source, ns=(1, 1))
  with pytest.raises(AssertionError, match="decoded"):
    load_folder(source, cache, val_fraction=0)


def test_cache_hit_is_memory_mapped_and_reads_only_indexed_rows(
    tmp_path, cache):
  """A cache hit maps the images instead of reading them; the training split
  is a RowView that reads from disk only the rows indexed (what lets each
  process of a sharded run read only its own shard), and gives the same
  values as the fresh decode."""
  from train.data._types import RowView
  source = write_folder(tmp_path / "imgs")
  first = load_folder(source, cache, val_fraction=0.25)
  second = load_folder(source, cache, val_fraction=0.25)
  assert isinstance(second.train.images, RowView)
  assert isinstance(second.train.images.base, np.memmap)
  assert not isinstance(second.val.images, RowView)  # val is read whole
  train = second.train.images
  assert train.shape == first.train.images.shape and train.rows_read == 0
  rows = np.array([5, 1, 3])
  np.testing.assert_array_equal(train[rows], first.train.images[rows])
  assert train.rows_read == 3
  np.testing.assert_array_equal(np.asarray(train), first.train.images)
  np.testing.assert_array_equal(second.val.images, first.val.images)


def test_cache_maps_only_uncompressed_members(tmp_path):
  path = str(tmp_path / "c.npz")
  x = np.arange(60, dtype=np.uint8).reshape(5, 3, 4)
  _cache.save(path, {"images": x, "labels": np.arange(5)})
  got = _cache.load(path, mmap=("images",))
  assert isinstance(got["images"], np.memmap)
  np.testing.assert_array_equal(got["images"], x)
  np.savez_compressed(str(tmp_path / "z.npz"), images=x)
  got = _cache.load(str(tmp_path / "z.npz"), mmap=("images",))
  assert not isinstance(got["images"], np.memmap)  # read, not mapped
  np.testing.assert_array_equal(got["images"], x)


def test_folder_dir_cache_sees_changed_file(tmp_path, cache, monkeypatch):
  source = write_folder(tmp_path / "imgs")
  load_folder(source, cache, val_fraction=0)
  calls = []
  real = _folder._decode_folder
  monkeypatch.setattr(_folder, "_decode_folder",
                      lambda *a, **k: calls.append(1) or real(*a, **k))
  load_folder(source, cache, val_fraction=0)
  assert not calls
  Image.new("RGB", (WIDTH, HEIGHT), (0, 0, 0)).save(source / "dog" / "new.png")
  splits = load_folder(source, cache, val_fraction=0)
  assert calls and len(splits.train.labels) == 3 * PER_CLASS + 1


def test_interrupted_cache_write_leaves_nothing(tmp_path, cache, monkeypatch):
  source = write_folder(tmp_path / "imgs")

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(os, "replace", interrupted)
  with pytest.raises(KeyboardInterrupt):
    load_folder(source, cache)
  assert os.listdir(cache) == []


def test_corrupt_cache_entry_is_a_miss(tmp_path, cache):
  source = write_folder(tmp_path / "imgs")
  first = load_folder(source, cache, val_fraction=0)
  [entry] = os.listdir(cache)
  with open(os.path.join(cache, entry), "r+b") as f:
    f.truncate(100)
  with pytest.warns(UserWarning, match="unreadable cache"):
    second = load_folder(source, cache, val_fraction=0)
  np.testing.assert_array_equal(first.train.images, second.train.images)


def test_default_cache_dir_from_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("RDA_OPTAX_CACHE", str(tmp_path))
  assert data.default_cache_dir() == str(tmp_path)
  monkeypatch.delenv("RDA_OPTAX_CACHE")
  assert data.default_cache_dir().endswith(os.path.join(".cache",
                                                        "rda-optax"))


def test_folder_pool_matches_in_process(tmp_path, cache):
  source = make_tar(write_folder(tmp_path / "imgs"), tmp_path / "imgs.tar.xz")
  here = _folder.read_folder(str(source), cache_dir=cache + "1",
                             progress=False, workers=1)
  pooled = _folder.read_folder(str(source), cache_dir=cache + "2",
                               progress=False, workers=2, chunk_size=4)
  np.testing.assert_array_equal(here.arrays.images, pooled.arrays.images)
  np.testing.assert_array_equal(here.arrays.labels, pooled.arrays.labels)


def test_folder_image_size_resizes_mixed_sizes(tmp_path, cache):
  source = write_folder(tmp_path / "imgs")
  Image.new("RGB", (30, 20), (0, 0, 0)).save(source / "emu" / "big.png")
  with pytest.raises(UsageError, match="big.png"):
    load_folder(source, cache)
  splits = load_folder(source, cache, image_size=8, val_fraction=0)
  assert splits.train.images.shape == (3 * PER_CLASS + 1, 8, 8, 3)


def test_test_dir(tmp_path, cache):
  train = make_tar(write_folder(tmp_path / "a", split="train"),
                   tmp_path / "train.tar.xz")
  test = make_tar(write_folder(tmp_path / "b", split="test", per_class=4),
                  tmp_path / "test.tar.xz")
  splits = load_folder(train, cache, test_dir=str(test))
  assert splits.test.images.shape == (12, HEIGHT, WIDTH, 3)
  np.testing.assert_array_equal(splits.test.labels, np.repeat(np.arange(3), 4))
  assert_labels_match_pixels(splits.test)


def test_test_dir_with_other_classes(tmp_path, cache):
  train = write_folder(tmp_path / "a")
  test = write_folder(tmp_path / "b", classes=("cat", "dog", "gnu"),
                      per_class=2)
  with pytest.raises(UsageError, match="test_dir") as info:
    load_folder(train, cache, test_dir=str(test))
  message = str(info.value)
  assert str(test) in message and "gnu" in message and "emu" in message


def test_test_dir_gray_for_colour_training(tmp_path, cache):
  train = write_folder(tmp_path / "a")
  test = write_folder(tmp_path / "b", gray=True, per_class=2)
  splits = load_folder(train, cache, test_dir=str(test))
  assert splits.test.images.shape == (6, HEIGHT, WIDTH, 3)


# --- folder: errors -----------------------------------------------------------


def test_folder_needs_data_dir():
  with pytest.raises(UsageError, match="data_dir"):
    data.load("folder", progress=False)


def test_unknown_dataset_lists_valid_names():
  with pytest.raises(UsageError, match="'imagenet'") as info:
    data.load("imagenet", progress=False)
  for name in data.DATASETS:
    assert name in str(info.value)


def test_bad_image_size():
  with pytest.raises(UsageError, match="image_size 0"):
    data.load("digits", image_size=0, progress=False)


def test_missing_path(tmp_path, cache):
  missing = tmp_path / "nowhere.tar.xz"
  with pytest.raises(UsageError, match="does not exist") as info:
    load_folder(missing, cache)
  assert str(missing) in str(info.value)
  with pytest.raises(UsageError, match="test_dir"):
    load_folder(write_folder(tmp_path / "a"), cache, test_dir=str(missing))


def test_not_a_tar_archive(tmp_path, cache):
  bogus = tmp_path / "train.tar.xz"
  bogus.write_bytes(b"this is not an archive" * 100)
  with pytest.raises(UsageError, match="is not a tar archive") as info:
    load_folder(bogus, cache)
  assert str(bogus) in str(info.value)


@pytest.mark.parametrize("suffix", [".tar.xz", ".tar.gz", ".tar"])
def test_truncated_tar_archive(tmp_path, cache, suffix):
  tar = make_tar(write_folder(tmp_path / "imgs"), tmp_path / f"imgs{suffix}")
  raw = tar.read_bytes()
  cut = len(raw) * 2 // 3
  if suffix == ".tar":
    # Cut at a header boundary, where tarfile itself notices nothing.
    with tarfile.open(tar) as archive:
      cut = archive.getmembers()[-5].offset
  tar.write_bytes(raw[:cut])
  with pytest.raises(UsageError, match="truncated or corrupt") as info:
    load_folder(tar, cache)
  assert str(tar) in str(info.value)


def test_no_class_folders(tmp_path, cache):
  flat = tmp_path / "flat"
  flat.mkdir()
  Image.new("RGB", (4, 4)).save(flat / "a.png")
  with pytest.raises(UsageError, match="no class folders") as info:
    load_folder(flat, cache)
  assert str(flat) in str(info.value)


@pytest.mark.parametrize("as_tar", [False, True], ids=["dir", "tar"])
def test_empty_class_folder(tmp_path, cache, as_tar):
  source = write_folder(tmp_path / "imgs", split="train")
  (source / "train" / "gnu").mkdir()
  if as_tar:
    source = make_tar(source, tmp_path / "imgs.tar.xz")
  with pytest.raises(UsageError, match="empty") as info:
    load_folder(source, cache)
  assert "train/gnu" in str(info.value)


def _add_bad_files(source):
  (source / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  jpeg = (source / "cat" / "0001.jpg").read_bytes()
  (source / "cat" / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])


def _with_bad_files(source):
  _add_bad_files(source)
  return source


@pytest.mark.parametrize("as_tar", [False, True], ids=["dir", "tar"])
def test_bad_image_names_the_file(tmp_path, cache, as_tar):
  source = write_folder(tmp_path / "imgs", split="train")
  _add_bad_files(source / "train")
  if as_tar:
    source = make_tar(source, tmp_path / "imgs.tar.xz")
  with pytest.raises(UsageError, match="not a readable image") as info:
    load_folder(source, cache)
  # Sorted by path, cat/cut.jpg comes first.
  assert "train/cat/cut.jpg" in str(info.value)


def test_skip_bad_images(tmp_path, cache):
  source = make_tar(_with_bad_files(write_folder(tmp_path / "imgs")),
                    tmp_path / "imgs.tar.xz")
  for _ in range(2):  # The second time from the cache: still a warning.
    with pytest.warns(data.SkippedImagesWarning, match="skipped 2") as record:
      splits = load_folder(source, cache, skip_bad_images=True,
                           val_fraction=0)
    assert "cat/cut.jpg" in str(record[0].message)
    assert len(splits.train.labels) == 3 * PER_CLASS
    assert_labels_match_pixels(splits.train)
  # The cached result must not let a run without the flag pass silently.
  with pytest.raises(UsageError, match="cat/cut.jpg"):
    load_folder(source, cache)


def test_test_dir_of_another_image_size(tmp_path, cache):
  train = write_folder(tmp_path / "a")
  test = write_folder(tmp_path / "b", per_class=2, size=(8, 8))
  with pytest.raises(UsageError, match="image_size") as info:
    load_folder(train, cache, test_dir=str(test))
  assert str(test) in str(info.value)
  splits = load_folder(train, cache, test_dir=str(test), image_size=8)
  assert splits.test.images.shape == (6, 8, 8, 3)


def test_usage_errors_are_one_line(tmp_path, cache):
  bad = _with_bad_files(write_folder(tmp_path / "imgs"))
  calls = [
      lambda: data.load("nope"),
      lambda: load_folder(tmp_path / "missing", cache),
      lambda: load_folder(bad, cache),
      lambda: data.load("digits", val_fraction=2.0),
  ]
  for call in calls:
    with pytest.raises(UsageError) as info:
      call()
    assert "\n" not in str(info.value)


# --- package hygiene ----------------------------------------------------------


def test_import_does_not_load_tensorflow_or_sklearn():
  code = ("import sys, train.data; "
          "print(any(m.split('.')[0] in ('tensorflow', 'tensorflow_datasets',"
          " 'sklearn') for m in sys.modules))")
  root = os.path.join(os.path.dirname(__file__), os.pardir)
  out = subprocess.run([sys.executable, "-c", code], cwd=root, check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == "False"


def test_missing_tfds_is_a_usage_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(UsageError, match="pip install tensorflow-datasets"):
    data.load("cifar10", progress=False)


def test_decode_chunk_reports_errors_in_place():
  good = Image.new("RGB", (3, 2), (1, 2, 3))
  buffer = io.BytesIO()
  good.save(buffer, "PNG")
  results = _decode.decode_chunk([b"nope", buffer.getvalue()], None)
  assert results[0][0] is None and results[0][1]
  assert results[1][1] is None and results[1][0].shape == (2, 3, 3)


def test_cache_entry_names_differ_by_key(tmp_path):
  a = _cache.entry_path(str(tmp_path), "x", {"image_size": None})
  b = _cache.entry_path(str(tmp_path), "x", {"image_size": 32})
  assert a != b and os.path.dirname(a) == str(tmp_path)


# --- the real CIFAR-10 tarball, first members only ----------------------------


@pytest.mark.skipif(not os.path.exists(CIFAR_TAR),
                    reason="../shared/data/cifar10-jpeg is not present")
def test_real_cifar_tar_first_members():
  dirs = set()
  members = []
  stream = _folder._tar_members(CIFAR_TAR, dirs)
  for parts, payload in stream:
    members.append((parts, payload))
    if len(members) == 200:
      break
  stream.close()
  assert all(parts[0] == "train" and len(parts) == 3 for parts, _ in members)
  results = _decode.decode_chunk([p for _, p in members], None)
  for image, error in results:
    assert error is None and image.shape == (32, 32, 3)


# --- TensorFlow Datasets, offline through tfds.testing.mock_data --------------


@pytest.fixture(name="tfds", scope="module")
def fixture_tfds():
  return pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize("name,shape,num_classes",
                         [("mnist", (28, 28, 1), 10),
                          ("cifar10", (32, 32, 3), 10),
                          ("cifar100", (32, 32, 3), 100)])
def test_tfds_mock(tfds, tmp_path, name, shape, num_classes):
  with tfds.testing.mock_data(num_examples=20):
    splits = data.load(name, data_dir=str(tmp_path), val_fraction=0.1,
                       progress=False)
  assert splits.name == name
  assert splits.num_classes == num_classes
  assert len(splits.class_names) == num_classes
  assert splits.train.images.shape == (18,) + shape
  assert splits.val.images.shape == (2,) + shape
  assert splits.test.images.shape == (20,) + shape
  for part in (splits.train, splits.val, splits.test):
    assert part.images.dtype == np.uint8
    assert part.labels.dtype == np.int32
    assert part.labels.min() >= 0 and part.labels.max() < num_classes


def test_tfds_imagenet_mock_is_downsampled(tfds, tmp_path, cache):
  with tfds.testing.mock_data(num_examples=6):
    splits = data.load("imagenet2012", data_dir=str(tmp_path),
                       cache_dir=cache, image_size=16, val_fraction=0,
                       progress=False)
  assert splits.num_classes == 1000
  assert splits.train.images.shape == (6, 16, 16, 3)
  assert splits.test.images.shape == (6, 16, 16, 3)
  assert splits.train.images.dtype == np.uint8
  assert len(os.listdir(cache)) == 2  # Down-sampled train and validation.


def test_tfds_imagenet_needs_existing_manual_dir(tfds, tmp_path):
  del tfds
  missing = tmp_path / "ILSVRC"
  with pytest.raises(UsageError, match="does not exist") as info:
    data.load("imagenet2012", data_dir=str(missing), progress=False)
  assert str(missing) in str(info.value)


def test_tfds_with_test_dir(tfds, tmp_path, cache):
  names = tuple(str(i) for i in range(10))  # Mock metadata names classes so.
  test = write_folder(tmp_path / "t", classes=names, per_class=1,
                      size=(32, 32))
  with tfds.testing.mock_data(num_examples=5):
    splits = data.load("cifar10", data_dir=str(tmp_path / "tfds"),
                       test_dir=str(test), cache_dir=cache, val_fraction=0,
                       progress=False)
  assert splits.class_names == names
  assert splits.test.images.shape == (10, 32, 32, 3)


# --- folder: split folders, links, all-bad classes (issue 13) ------------------


@pytest.mark.parametrize("as_tar", [False, True], ids=["dir", "tar"])
@pytest.mark.parametrize("test_name", ["test", "validation"])
def test_split_folders_are_splits_not_classes(tmp_path, cache, as_tar,
                                              test_name):
  # The layout CIFAR-10's JPEG tarballs come from: train/ and test/ side by
  # side. Learned as classes, this is a 2-class "train vs test" problem.
  source = write_folder(tmp_path / "imgs", split="train")
  write_folder(tmp_path / "imgs", split=test_name, per_class=4)
  if as_tar:
    source = make_tar(source, tmp_path / "imgs.tar.gz")
  splits = load_folder(source, cache, val_fraction=0)
  assert splits.class_names == CLASSES
  assert len(splits.train.labels) == 3 * PER_CLASS
  assert len(splits.test.labels) == 3 * 4
  assert_labels_match_pixels(splits.train)
  assert_labels_match_pixels(splits.test)
  # --test-dir still wins over the source's own test split.
  other = write_folder(tmp_path / "other", per_class=2)
  splits = load_folder(source, cache, val_fraction=0, test_dir=str(other))
  assert len(splits.test.labels) == 3 * 2


def test_split_folders_mixed_with_class_folders_are_refused(tmp_path, cache):
  source = write_folder(tmp_path / "imgs", split="train")
  write_folder(tmp_path / "imgs", classes=("cat", "dog"))
  with pytest.raises(UsageError, match=r"mixes split folders \(train\) with "
                     r"other top-level folders \(cat, dog\)"):
    load_folder(source, cache)


def test_split_folders_without_train_are_refused(tmp_path, cache):
  source = write_folder(tmp_path / "imgs", split="test")
  write_folder(tmp_path / "imgs", split="val")
  with pytest.raises(UsageError, match=r"split folders \(test, val\) but no "
                     "train split"):
    load_folder(source, cache)


def test_data_dir_with_digits_is_refused(tmp_path):
  with pytest.raises(UsageError, match="--dataset folder") as info:
    data.load("digits", data_dir=str(tmp_path), progress=False)
  assert str(tmp_path) in str(info.value)


def test_class_with_only_unreadable_files_is_an_error(tmp_path, cache):
  source = write_folder(tmp_path / "imgs")
  for f in (source / "dog").iterdir():
    f.write_bytes(b"not an image")
  with pytest.raises(UsageError, match="every file of class dog is "
                     rf"unreadable \({PER_CLASS} skipped, the first is "
                     "dog/0000.png"):
    load_folder(source, cache, skip_bad_images=True)


def test_symlink_loops_and_aliases_add_no_images(tmp_path, cache):
  source = write_folder(tmp_path / "imgs")
  (source / "cat" / "loop").symlink_to(source)  # back to the root
  (source / "dog" / "again").symlink_to(source / "dog")  # to itself
  (source / "emu" / "cat-too").symlink_to(source / "cat")  # another class
  (source / "emu" / "one.png").symlink_to(source / "cat" / "0000.png")
  # A class folder that is a link to where the images live still counts.
  write_folder(tmp_path / "elsewhere", classes=("fox",))
  (source / "fox").symlink_to(tmp_path / "elsewhere" / "fox")
  splits = load_folder(source, cache, val_fraction=0)
  assert splits.class_names == CLASSES + ("fox",)
  np.testing.assert_array_equal(np.bincount(splits.train.labels),
                                [PER_CLASS] * 4)
  assert_labels_match_pixels(
      splits.train._replace(images=splits.train.images[:3 * PER_CLASS],
                            labels=splits.train.labels[:3 * PER_CLASS]))


def test_tfds_offline_is_one_line_naming_the_folder_alternative(
    tfds, tmp_path, monkeypatch):
  del tfds
  from train.data import _tfds
  monkeypatch.setattr(_tfds, "_unreachable", lambda host: f"{host}: test")
  with pytest.raises(UsageError) as info:
    data.load("cifar10", data_dir=str(tmp_path), progress=False)
  message = str(info.value)
  assert "\n" not in message
  assert message.startswith(f"data set cifar10 is not in {tmp_path}")
  assert "(www.cs.toronto.edu: test)" in message
  assert "--dataset folder --data-dir" in message


def test_tfds_failed_download_is_one_line(tfds, tmp_path, monkeypatch):
  from train.data import _tfds
  monkeypatch.setattr(_tfds, "_unreachable", lambda host: None)
  def fail(*args, **kwargs):
    raise ConnectionError("connection reset\nsecond line")
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
  with pytest.raises(UsageError, match=r"could not be downloaded "
                     r"\(ConnectionError: connection reset\);"):
    data.load("mnist", data_dir=str(tmp_path), progress=False)


# --- Interrupts and progress while decoding (issue 13) -------------------------


def test_decode_workers_ignore_ctrl_c(tmp_path, cache, monkeypatch):
  import concurrent.futures
  import signal
  made = []

  class Recording(concurrent.futures.ProcessPoolExecutor):
    def __init__(self, *args, **kwargs):
      made.append(kwargs)
      super().__init__(*args, **kwargs)

  monkeypatch.setattr(_folder.concurrent.futures, "ProcessPoolExecutor",
                      Recording)
  source = write_folder(tmp_path / "imgs")
  _folder.read_folder(str(source), cache_dir=cache, progress=False,
                      workers=2, chunk_size=4)
  assert len(made) == 1
  # Ctrl-C reaches the whole process group: a worker that did not ignore it
  # would print a KeyboardInterrupt traceback of its own.
  with concurrent.futures.ProcessPoolExecutor(**made[0]) as pool:
    assert pool.submit(signal.getsignal, signal.SIGINT).result() == \
        signal.SIG_IGN


def test_decode_progress_is_one_line_per_update_in_a_log(capsys):
  bar = progress.decode_bar(100, "decoding x", True)  # stderr: not a tty
  assert isinstance(bar, progress._DecodeLines)
  bar._interval = 0
  bar.update(40)
  bar.update(60)
  bar.close()
  err = capsys.readouterr().err
  assert "\r" not in err
  lines = err.splitlines()
  assert [l.split(",")[0] for l in lines] == [
      "decoding x: 40/100 images", "decoding x: 100/100 images",
      "decoding x: 100/100 images"]


def test_ctrl_c_while_decoding_stops_the_decode(tmp_path, cache, monkeypatch):
  import signal
  from train import interrupts
  source = write_folder(tmp_path / "imgs")
  decoded = []
  real = _folder._decode.decode_chunk
  monkeypatch.setattr(_folder._decode, "decode_chunk", lambda chunk, size: (
      decoded.append(len(chunk)) or real(chunk, size)))
  got = []
  handler = interrupts.recorder(got)
  old = signal.signal(signal.SIGINT, handler)
  try:
    got.append(signal.SIGINT)  # as the handler does when Ctrl-C arrives
    with pytest.raises(interrupts.Interrupted):
      _folder.read_folder(str(source), cache_dir=cache, progress=False,
                          workers=1, chunk_size=4)
  finally:
    signal.signal(signal.SIGINT, old)
  assert decoded == [4]  # stopped after the first chunk of 8
  # Once the handler is gone (the run ended), its signals count for nothing.
  assert len(_folder.read_folder(str(source), cache_dir=cache,
                                 progress=False).arrays.labels) == 30
