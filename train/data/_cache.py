"""An on-disk cache of decoded arrays, so each source is decoded only once.

Each entry is one uncompressed `.npz` file (fast to load, no pickling) whose
name carries a hash of what it was decoded from. Entries are written to a
temporary file and renamed into place, so an interrupted run never leaves a
half-written entry that a later run would trust.
"""

import hashlib
import json
import os
import re
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Iterator

import numpy as np

from train.data._types import DataWarning

# Bump when the decoded arrays for the same source would change (decode rules,
# stored fields), so that old entries are no longer used.
_FORMAT_VERSION = 2  # 2: gray images wider than 8 bits scaled, not clipped


def default_cache_dir() -> str:
  """`$RDA_OPTAX_CACHE` if set, else `~/.cache/rda-optax`."""
  return os.environ.get("RDA_OPTAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "rda-optax")


def fingerprint(path: str) -> dict[str, object]:
  """What identifies the contents of a source file or directory, cheaply.

  A file is identified by its absolute path, size and modification time. A
  directory's own mtime does not change when a file two levels down does,
  so for a directory every file's relative path, size and mtime is hashed
  (a walk of stat calls, far cheaper than decoding).

  Args:
    path: a file or directory.

  Returns:
    A JSON-serialisable description of the source.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    stat = os.stat(path)
    return {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
  digest = hashlib.sha256()
  for root, files in walk_once(path):
    for name in files:
      full = os.path.join(root, name)
      try:
        stat = os.stat(full)
      except OSError:  # A dangling link: the decoder reports it, if it counts.
        continue
      digest.update(
          f"{os.path.relpath(full, path)}\0{stat.st_size}\0"
          f"{stat.st_mtime_ns}\n".encode())
  return {"path": path, "tree": digest.hexdigest()}


def walk_once(root: str, skip=lambda name: False
              ) -> Iterator[tuple[str, list[str]]]:
  """`os.walk(root, followlinks=True)`, each real directory visited once.

  Yields (directory, sorted file names). Directory links are followed (a
  class folder may be a link to where the images live), but a directory
  whose real path was already walked is not entered again: a link loop
  ends at once instead of repeating the tree until the path is too long.
  Directories named by `skip` are not entered.
  """
  seen = {os.path.realpath(root)}
  for current, subdirs, names in os.walk(root, followlinks=True):
    keep = []
    for d in sorted(subdirs):
      real = os.path.realpath(os.path.join(current, d))
      if skip(d) or real in seen:
        continue
      seen.add(real)
      keep.append(d)
    subdirs[:] = keep
    yield current, sorted(names)


def entry_path(cache_dir: str, label: str, key: dict[str, object]) -> str:
  """The cache file for `key`; `label` only makes the name readable."""
  key = dict(key, format=_FORMAT_VERSION)
  digest = hashlib.sha256(
      json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  label = re.sub(r"[^A-Za-z0-9._-]+", "_", label)[:60]
  return os.path.join(cache_dir, f"{label}-{digest}.npz")


def load(path: str, mmap: tuple[str, ...] = ()) -> dict[str, np.ndarray] | None:
  """Returns the arrays stored at `path`, or None if absent or unreadable.

  The arrays named in `mmap` come back memory-mapped (read-only) rather than
  read: only the rows a caller indexes are ever read from disk, which lets
  each process of a multi-process run read just its own shard.

  An unreadable entry (e.g. from a disk that filled up, or edited by hand) is
  treated as a miss: the caller decodes again and overwrites it.
  """
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as npz:
      out = {name: (_mmap_member(path, name) if name in mmap else None)
             for name in npz.files}
      return {name: npz[name] if a is None else a for name, a in out.items()}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, struct.error) as e:
    warnings.warn(f"ignoring unreadable cache file {path}: {e}",
                  DataWarning, stacklevel=2)
    return None


def _mmap_member(path: str, name: str) -> np.ndarray | None:
  """Memory-maps the array `name` of the npz file `path`, or None when it is
  stored compressed. An uncompressed npz member is a plain .npy file at an
  offset: past the member's local zip header, then the .npy header."""
  with zipfile.ZipFile(path) as z:
    info = z.getinfo(name + ".npy")
  if info.compress_type != zipfile.ZIP_STORED:
    return None
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    local = f.read(30)
    if local[:4] != b"PK\x03\x04":
      raise ValueError(f"bad zip member header for {name}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(f)
    offset = f.tell()
  if dtype.hasobject:
    raise ValueError(f"{name} holds Python objects")
  if 0 in shape:
    return None  # nothing to map; np.load reads it
  return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                   order="F" if fortran else "C")


def save(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Stores `arrays` at `path` atomically; warns (does not fail) on error.

  A cache that cannot be written only costs time on the next run, so it
  must not abort a run whose data was decoded fine.
  """
  directory = os.path.dirname(path)
  tmp = None
  try:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    with os.fdopen(fd, "wb") as f:
      # A file object, not a name: np.savez would append ".npz" to the name.
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    tmp = None
  except OSError as e:
    warnings.warn(f"could not write cache file {path}: {e}", DataWarning,
                  stacklevel=2)
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)
