"""The trainer's data sources, all returning uint8 NHWC arrays in memory.

    splits = data.load("folder", data_dir="train.tar.xz", val_fraction=0.1)
    splits.train.images  # (N, H, W, C) uint8
    splits.train.labels  # (N,) int32

Modules: `_types` (Arrays, Splits), `_load` (load, DATASETS), `_split`
(validation split), `_digits`, `_folder` (image folders and tarballs),
`_decode` (per-image decoding, run in worker processes), `_cache` (the .npz
cache of decoded folders), `_tfds` (TensorFlow Datasets, imported lazily).
"""

from train.data._cache import default_cache_dir
from train.data._folder import SkippedImagesWarning
from train.data._load import DATASETS
from train.data._load import load
from train.data._types import Arrays
from train.data._types import DataWarning
from train.data._types import Splits

__all__ = (
    "Arrays",
    "DATASETS",
    "DataWarning",
    "SkippedImagesWarning",
    "Splits",
    "default_cache_dir",
    "load",
)
