"""Image-folder sources: a directory or a tarball of class folders.

Accepted layouts, in a directory or a tar archive (.tar, .tar.gz, .tgz,
.tar.xz, .tar.bz2):

    <class>/<image>              e.g. cat/0001.jpg
    <wrapper>/<class>/<image>    e.g. images/cat/0001.jpg
    <split>/<class>/<image>      e.g. train/cat/0001.jpg, test/cat/0001.jpg

A single top-level folder that itself holds folders is a wrapper, whatever
its name. Two or more top-level folders named as splits (train/training,
test/testing, val/valid/validation) are splits, never classes: `read_folder`
returns the split asked for ("train" for training; "test", else "val", for
testing), and a source that mixes split folders with other top-level folders
is refused. Classes are the sorted class-folder names and a label is the
index of its class. Hidden entries (".*", "__MACOSX") are ignored, and so
are loose files next to the class folders (a README, say). Files below a
class folder, however deep, are images of that class.

Symbolic links in a directory are followed, but each real directory and each
real file is read once: a link back up the tree (a loop) or a second link to
the same folder or file adds nothing, so no image is counted twice or under
a second class. The first path in sorted walk order wins.

A tar archive is read in one sequential pass without extracting anything to
disk (the only fast way through a compressed archive), and the images are
decoded by a pool of worker processes while the pass goes on. The workers
are started with "forkserver" (or "spawn"), never "fork", because the trainer
runs JAX threads by then. Like any such pool, this re-imports the program's
main module in each worker, so a main script must keep its work under
`if __name__ == "__main__":`; if workers cannot start, decoding falls back
to the calling process with a RuntimeWarning.
"""

import bz2
import collections
import concurrent.futures
import gzip
import lzma
import multiprocessing
import os
import tarfile
import warnings
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple

import numpy as np

from train import interrupts
from train import progress as progress_lib
from train._errors import UsageError
from train.data import _cache
from train.data import _decode
from train.data._types import Arrays
from train.data._types import DataWarning

# Images per worker task: large enough that inter-process traffic is cheap,
# small enough to keep all workers busy and the progress bar moving.
_CHUNK_SIZE = 256
# Most decode workers to start; beyond this the single reading process, not
# decoding, limits the speed.
_MAX_WORKERS = 32
# Path components that archivers add and that are never data.
_JUNK_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})

Parts = tuple[str, ...]


class SkippedImagesWarning(DataWarning):
  """Some files could not be decoded and were left out (skip_bad_images)."""


# Top-level folder names that mean a split, by the split they mean.
SPLIT_NAMES = {"train": "train", "training": "train", "test": "test",
               "testing": "test", "val": "val", "valid": "val",
               "validation": "val"}


class FolderData(NamedTuple):
  """A decoded image folder (one split of it).

  Attributes:
    arrays: images and labels, sorted by class and then by file path.
    class_names: the class-folder names, sorted; label i is class_names[i].
    skipped: paths (inside the source) of the files that were left out as
      unreadable; empty unless skip_bad_images was set.
    splits: the splits ("train", "test", "val") the source holds as split
      folders; empty for a source without split folders.
  """
  arrays: Arrays
  class_names: tuple[str, ...]
  skipped: tuple[str, ...]
  splits: tuple[str, ...] = ()


def read_folder(path: str, *, image_size: int | None = None,
                skip_bad_images: bool = False, cache_dir: str | None = None,
                progress: bool = True, role: str = "data_dir",
                workers: int | None = None,
                chunk_size: int = _CHUNK_SIZE,
                split: str = "train") -> FolderData:
  """Decodes an image folder or tarball, or loads it from the cache.

  The result is cached in `cache_dir` under a key made of the source's
  absolute path, size and modification time (for a directory: of every file
  in it) and `image_size`; a cache hit reads one .npz file and decodes
  nothing. Only complete results are cached.

  Unreadable files: with skip_bad_images they are left out and one
  SkippedImagesWarning (through the `warnings` module, so also on a cache hit)
  gives their number and the first one's name; without it, the first one is
  an error.

  Args:
    path: a directory or a tar archive, in one of the module's layouts.
    image_size: if set, every image is centre-cropped to a square and resized
      to image_size x image_size; if None, all images must have one size.
    skip_bad_images: leave out unreadable files instead of failing.
    cache_dir: where decoded arrays are cached; None means
      `_cache.default_cache_dir()`.
    progress: show a progress bar on stderr while decoding.
    role: how the caller names `path` in messages ("data_dir", "test_dir").
    workers: decode processes; None means one per available core. With 1,
      or with no more than `chunk_size` images, decoding stays in-process.
    chunk_size: images per worker task.
    split: which split to return when the source holds split folders:
      "train", or "test" (a "val" folder stands in for a missing "test").
      A source without split folders is returned whole for either.

  Returns:
    The decoded folder (its `split` part). Every split of the source is
    decoded and cached at once, so asking for another split next costs one
    cache read.

  Raises:
    UsageError: the path is missing or neither a directory nor a tar archive,
      the archive is corrupt, there are no class folders, a class folder is
      empty, a file is not a readable image (unless skip_bad_images), every
      file of a class is unreadable, images differ in size and image_size is
      None, or split folders are mixed with class folders or lack `split`.
  """
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  kind = _source_kind(path, role)
  cache_dir = cache_dir or _cache.default_cache_dir()
  source = _cache.fingerprint(path)

  def cache_file(name: str) -> str:
    return _cache.entry_path(
        cache_dir, f"folder-{_display_name(path)}",
        {"source": source, "image_size": image_size, "split": name})

  cached = _cache.load(cache_file(split), mmap=("images",))
  if cached is not None:
    data = FolderData(
        arrays=Arrays(cached["images"], cached["labels"]),
        class_names=tuple(str(name) for name in cached["class_names"]),
        skipped=tuple(str(name) for name in cached["skipped"]),
        splits=tuple(str(name) for name in cached["splits"]))
  else:
    if workers is None:
      workers = _available_cores()
    decoded = _decode_folder(path, kind, image_size=image_size,
                             skip_bad_images=skip_bad_images,
                             progress=progress, workers=workers,
                             chunk_size=chunk_size)
    data = _pick_split(path, role, decoded, split)
    # A source without split folders holds one part, stored under the name
    # it was asked for; split folders are stored under their own names.
    for name, part in ({split: data} if None in decoded else
                       dict(decoded, **{split: data})).items():
      _cache.save(cache_file(name), {
          "images": part.arrays.images, "labels": part.arrays.labels,
          "class_names": np.array(part.class_names, dtype=str),
          "skipped": np.array(part.skipped, dtype=str),
          "splits": np.array(part.splits, dtype=str)})
  if data.skipped:
    if not skip_bad_images:
      # Reached only from a cache entry written with skip_bad_images: fail as
      # a fresh decode would have.
      raise UsageError(
          f"{path}: {data.skipped[0]} is not a readable image "
          "(use --skip-bad-images / skip_bad_images=True to leave such files "
          "out)")
    warnings.warn(
        f"{path}: skipped {len(data.skipped)} unreadable image file(s), "
        f"the first is {data.skipped[0]}", SkippedImagesWarning, stacklevel=2)
  return data


def _pick_split(path: str, role: str, decoded: dict[str | None, FolderData],
                split: str) -> FolderData:
  """The part of a decoded source that `split` asks for."""
  if None in decoded:  # No split folders: the whole source, for any role.
    return decoded[None]
  names = ("test", "val") if split == "test" else ("train",)
  for name in names:
    if name in decoded:
      return decoded[name]
  raise UsageError(
      f"{role} {path} holds split folders ({', '.join(sorted(decoded))}) but "
      f"no {' or '.join(names)} split")


def _display_name(path: str) -> str:
  return os.path.basename(os.path.normpath(path))


def _available_cores() -> int:
  if hasattr(os, "sched_getaffinity"):  # Honours taskset and cpusets.
    cores = len(os.sched_getaffinity(0))
  else:
    cores = os.cpu_count() or 1
  return min(cores, _MAX_WORKERS)


def _source_kind(path: str, role: str) -> str:
  """Returns "dir" or "tar", or raises UsageError naming `path`."""
  if not os.path.exists(path):
    raise UsageError(f"{role} {path} does not exist")
  if os.path.isdir(path):
    return "dir"
  try:
    is_tar = tarfile.is_tarfile(path)
  except OSError as e:
    raise UsageError(f"{role} {path} cannot be read: {e}") from e
  if not is_tar:
    raise UsageError(
        f"{role} {path} is not a tar archive (nor a directory)")
  return "tar"


def _is_hidden(name: str) -> bool:
  return name.startswith(".") or name in _JUNK_NAMES


def _decode_folder(path: str, kind: str, *, image_size: int | None,
                   skip_bad_images: bool, progress: bool, workers: int,
                   chunk_size: int) -> dict[str | None, FolderData]:
  """Decodes a source without the cache; see read_folder.

  Returns:
    Each split's data by split name ("train", "test", "val"), or the whole
    source under None when it has no split folders.
  """
  dirs: set[Parts] = set()
  files: list[Parts] = []
  if kind == "dir":
    # A directory can be listed before decoding, so layout errors come before
    # any decoding and the progress bar knows its total.
    members = list(_dir_members(path, dirs))
    files = [parts for parts, _ in members]
    layout = _classify_all(path, dirs, files)
    wanted = [i for _, chosen, _ in layout.values() for i in chosen]
    decoded = _decode_all([members[i][1] for i in wanted], len(wanted), path,
                          image_size, progress, workers, chunk_size)
    results = dict(zip(wanted, decoded))
  else:
    # A compressed archive can only be read front to back, and once only if
    # it is to be fast: decode every candidate file as it streams past, and
    # learn the layout at the end.
    def payloads_of_tar() -> Iterator[bytes]:
      for parts, data in _tar_members(path, dirs):
        files.append(parts)
        yield data
    results = dict(enumerate(_decode_all(payloads_of_tar(), None, path,
                                         image_size, progress, workers,
                                         chunk_size)))
    layout = _classify_all(path, dirs, files)
  splits = tuple(sorted(name for name in layout if name is not None))
  out = {}
  for name, (class_names, chosen, labels) in layout.items():
    part = _assemble(path, ["/".join(files[i]) for i in chosen],
                     [results[i] for i in chosen], labels, class_names,
                     skip_bad_images, image_size)
    out[name] = part._replace(splits=splits)
  return out


def _dir_members(root: str, dirs: set[Parts]) -> Iterator[tuple[Parts, str]]:
  """Yields (path parts, file path) of candidate images; fills `dirs`.

  Each real file is yielded once (see `_cache.walk_once`).
  """
  seen_files: set[str] = set()
  for current, names in _cache.walk_once(root, _is_hidden):
    rel = os.path.relpath(current, root)
    parts = () if rel == os.curdir else tuple(rel.split(os.sep))
    if not parts:
      continue  # Loose files at the top are never images of a class.
    dirs.add(parts)
    for name in names:
      if _is_hidden(name):
        continue
      full = os.path.join(current, name)
      real = os.path.realpath(full)
      if real in seen_files:
        continue  # A second link to a file already taken.
      seen_files.add(real)
      yield parts + (name,), full


def _open_decompressed(path: str) -> BinaryIO:
  """Opens a tar file, decompressing gzip, bzip2 or xz as it is read.

  tarfile's own "r|*" stream mode silently ends the archive where a
  truncated file ends; these readers raise EOFError instead.
  """
  with open(path, "rb") as f:
    magic = f.read(6)
  if magic.startswith(b"\x1f\x8b"):
    return gzip.open(path, "rb")
  if magic.startswith(b"BZh"):
    return bz2.open(path, "rb")
  if magic.startswith(b"\xfd7zXZ\x00"):
    return lzma.open(path, "rb")
  return open(path, "rb")


def _tar_members(path: str, dirs: set[Parts]) -> Iterator[tuple[Parts, bytes]]:
  """Yields (path parts, contents) of candidate images; fills `dirs`.

  One sequential pass (tarfile's "r|" stream mode never seeks): random
  access into an .xz or .gz archive would decompress it again and again.
  """
  try:
    with _open_decompressed(path) as stream, tarfile.open(
        fileobj=stream, mode="r|") as archive:
      for member in archive:
        # "./train/cat/1.jpg" and "train/cat/1.jpg" are the same entry.
        parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
        if not parts or any(_is_hidden(p) for p in parts):
          continue  # Also drops ".." entries, which could escape the root.
        if member.isdir():
          dirs.add(parts)
          continue
        # Links are skipped: following one needs random access.
        if not member.isfile():
          continue
        dirs.update(parts[:i] for i in range(1, len(parts)))
        if len(parts) < 2:
          continue  # Loose files at the top are never images of a class.
        yield parts, archive.extractfile(member).read()
      # tarfile stops quietly where the data stops. Reading on to the end
      # makes a compressed reader check its end-of-stream marker, and a tar
      # that ends well has at least one zero block after its last member.
      size = stream.tell()
      while chunk := stream.read(1 << 20):
        size += len(chunk)
      if size < archive.offset + tarfile.BLOCKSIZE:
        raise EOFError("no end-of-archive block")
  except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error,
          OSError) as e:
    raise UsageError(
        f"data in {path} cannot be read, the tar archive is truncated or "
        f"corrupt: {e}") from e


def _layout(path: str, dirs: set[Parts]) -> dict[str | None, Parts]:
  """The folder prefix of each split: {None: prefix} without split folders."""
  top = {d[0] for d in dirs}
  nested = {d[0] for d in dirs if len(d) >= 2}
  splits = {t for t in nested if t.lower() in SPLIT_NAMES}
  if len(top) == 1 and nested:
    # One top folder holding folders: a wrapper ("images/", or "train/").
    return {None: (top.pop(),)}
  if not splits:
    return {None: ()}
  others = sorted(top - splits)
  if others:
    raise UsageError(
        f"{path} mixes split folders ({', '.join(sorted(splits))}) with other "
        f"top-level folders ({', '.join(others[:5])}); expected <class>/<image>"
        " or <split>/<class>/<image>")
  by_split: dict[str | None, Parts] = {}
  for name in sorted(splits):
    canonical = SPLIT_NAMES[name.lower()]
    if canonical in by_split:
      raise UsageError(
          f"{path}: split folders {by_split[canonical][0]} and {name} both "
          f"mean the {canonical} split")
    by_split[canonical] = (name,)
  return by_split


def _classify_all(path: str, dirs: set[Parts], files: list[Parts]
                  ) -> dict[str | None, tuple[tuple[str, ...], list[int],
                                              np.ndarray]]:
  """`_classify` for each split of the layout."""
  return {name: _classify(path, dirs, files, prefix)
          for name, prefix in _layout(path, dirs).items()}


def _classify(path: str, dirs: set[Parts], files: list[Parts],
              prefix: Parts) -> tuple[tuple[str, ...], list[int],
                                      np.ndarray]:
  """Finds the classes below `prefix` and the class of each file.

  Args:
    path: the source, for messages.
    dirs: every folder in the source, as path parts.
    files: every candidate file, as path parts, in reading order.
    prefix: the folder holding the class folders (see `_layout`).

  Returns:
    (class_names, chosen, labels): the sorted class names, the indices into
    `files` of the images, sorted by path, and their int32 labels.

  Raises:
    UsageError: no class folders, or an empty one.
  """
  depth = len(prefix)
  class_names = tuple(sorted({d[depth] for d in dirs
                              if len(d) > depth and d[:depth] == prefix}))
  if not class_names:
    raise UsageError(
        f"{path} has no class folders (expected <class>/<image> or "
        "<split>/<class>/<image>)")
  index_of = {name: i for i, name in enumerate(class_names)}
  chosen = sorted(
      (i for i, parts in enumerate(files)
       if len(parts) > depth + 1 and parts[:depth] == prefix
       and parts[depth] in index_of),
      key=lambda i: files[i])
  labels = np.array([index_of[files[i][depth]] for i in chosen], np.int32)
  counts = np.bincount(labels, minlength=len(class_names))
  if not counts.all():
    empty = "/".join(prefix + (class_names[int(np.argmin(counts))],))
    raise UsageError(f"{path}: class folder {empty} is empty")
  return class_names, chosen, labels


def _mp_context() -> multiprocessing.context.BaseContext:
  # Not "fork": by now the trainer has JAX loaded, which runs threads, and
  # forking a process with threads can deadlock the child.
  methods = multiprocessing.get_all_start_methods()
  return multiprocessing.get_context(
      "forkserver" if "forkserver" in methods else "spawn")


def _decode_all(payloads: Iterable[bytes | str], total: int | None,
                path: str, image_size: int | None, progress: bool,
                workers: int, chunk_size: int
                ) -> list[tuple[np.ndarray | None, str | None]]:
  """Decodes every payload, in a process pool once there is enough work.

  Args:
    payloads: encoded images or file paths, possibly a lazy stream.
    total: number of payloads if known, for the progress bar.
    path: the source, for the progress bar.
    image_size: see read_folder.
    progress: show a progress bar.
    workers: most decode processes.
    chunk_size: payloads per task.

  Returns:
    `_decode.decode_chunk`'s (array, error) pairs, one per payload, in order.
  """
  results: list[tuple[np.ndarray | None, str | None]] = []
  pending: collections.deque[
      tuple[concurrent.futures.Future, list[bytes | str]]
  ] = collections.deque()
  executor = None
  pool_broken = False
  bar = progress_lib.decode_bar(total, f"decoding {_display_name(path)}", progress)

  def decode_here(chunk):
    chunk_results = _decode.decode_chunk(chunk, image_size)
    results.extend(chunk_results)
    bar.update(len(chunk_results))
    interrupts.check_loading()

  def collect_oldest():
    nonlocal pool_broken
    future, chunk = pending.popleft()
    try:
      chunk_results = future.result()
    except concurrent.futures.BrokenExecutor:
      # Typically a main script without an `if __name__ == "__main__":`
      # guard, which worker processes re-run (see the module docstring).
      # Slower in-process decoding still gives the right result.
      if not pool_broken:
        warnings.warn(
            "decode worker processes failed (does the main script lack an "
            "`if __name__ == '__main__':` guard?); decoding in this process "
            "instead", RuntimeWarning, stacklevel=4)
      pool_broken = True
      decode_here(chunk)
      return
    results.extend(chunk_results)
    bar.update(len(chunk_results))
    interrupts.check_loading()  # Ctrl-C: nothing is worth finishing

  def submit(chunk):
    nonlocal executor
    if executor is None and workers > 1 and not pool_broken:
      executor = concurrent.futures.ProcessPoolExecutor(
          max_workers=workers, mp_context=_mp_context(),
          initializer=interrupts.ignore_sigint)
    if executor is None or pool_broken:
      decode_here(chunk)
      return
    pending.append((executor.submit(_decode.decode_chunk, chunk, image_size),
                    chunk))
    # Bounds the encoded bytes waiting in memory when reading outpaces
    # decoding; results are taken in order so they stay aligned to inputs.
    while len(pending) > 2 * workers:
      collect_oldest()

  try:
    chunk: list[bytes | str] = []
    for payload in payloads:
      chunk.append(payload)
      if len(chunk) == chunk_size:
        submit(chunk)
        chunk = []
    if chunk:
      if executor is None:  # Small sources never pay for starting a pool.
        decode_here(chunk)
      else:
        submit(chunk)
    while pending:
      collect_oldest()
  finally:
    bar.close()
    if executor is not None:
      executor.shutdown(wait=True, cancel_futures=True)
  return results


def _assemble(path: str, names: list[str],
              results: list[tuple[np.ndarray | None, str | None]],
              labels: np.ndarray, class_names: tuple[str, ...],
              skip_bad_images: bool, image_size: int | None) -> FolderData:
  """Stacks decoded images into one NHWC array; checks files and sizes."""
  keep = []
  skipped = []
  for i, (image, error) in enumerate(results):
    if image is not None:
      keep.append(i)
    elif skip_bad_images:
      skipped.append(names[i])
    else:
      raise UsageError(
          f"{path}: {names[i]} is not a readable image ({error}); use "
          "--skip-bad-images / skip_bad_images=True to leave such files out")
  if not keep:
    raise UsageError(f"{path} holds no readable images")
  counts = np.bincount(labels[keep], minlength=len(class_names))
  if not counts.all():
    # With skip_bad_images, a class left without images would still be a
    # class the model is asked to predict, never seen in training.
    lost = int(np.argmin(counts))
    bad = [n for n, label in zip(names, labels) if label == lost]
    raise UsageError(
        f"{path}: every file of class {class_names[lost]} is unreadable "
        f"({len(bad)} skipped, the first is {bad[0]})")
  shapes = [results[i][0].shape[:2] for i in keep]
  if image_size is None:
    common = collections.Counter(shapes).most_common(1)[0][0]
    for i, shape in zip(keep, shapes):
      if shape != common:
        raise UsageError(
            f"{path}: {names[i]} is {shape[1]}x{shape[0]} pixels but most "
            f"images are {common[1]}x{common[0]}; set image_size to resize "
            "all images")
  height, width = shapes[0]
  # Gray (L) only when every image is gray; a gray image among colour ones
  # becomes three equal channels, as PIL's L->RGB conversion does.
  gray = all(results[i][0].ndim == 2 for i in keep)
  images = np.empty((len(keep), height, width, 1 if gray else 3), np.uint8)
  for row, i in enumerate(keep):
    image = results[i][0]
    images[row] = image[..., None] if image.ndim == 2 else image
  return FolderData(arrays=Arrays(images, labels[keep]),
                    class_names=class_names, skipped=tuple(skipped))
