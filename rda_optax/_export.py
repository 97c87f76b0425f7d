r"""Compressed sparse export of Flax variables: a small, checked file.

A 97%-sparse network stored densely is as large as a dense one. This module
writes a variables tree (``{"params": ..., "batch_stats": ...}``, nested
dicts of arrays) with each leaf stored as its non-zero values plus where they
are, and reads it back bit for bit.

File format, version 1 (integers little-endian; spec also in docs/EXPORT.md)::

  offset    size  field
  0         8     magic  b"RDASPRS\x00"
  8         2     format version, uint16 (= 1)
  10        2     reserved, uint16 (= 0)
  12        4     header length H, uint32
  16        8     payload length P, uint64
  24        H     header: UTF-8 JSON (below)
  24+H      P     payload: the leaves' blobs, back to back
  24+H+P    32    SHA-256 of bytes [0, 24+H+P)

Header: ``{"tree": T, "leaves": [L_0, L_1, ...]}``. ``T`` is the variables
tree with every array replaced by its index into ``leaves`` (so key order and
empty dicts survive). Each ``L_i`` is::

  {"path": [key, ...], "shape": [...], "dtype": "float32",
   "values": "float32" | "bfloat16" | <dtype>, "encoding": "dense" |
   "bitmask" | "delta", "nnz": int, "zlib": bool,
   "offset": int, "length": int}

``offset``/``length`` locate the leaf's blob in the payload; with ``zlib``
the blob is ``zlib.compress(raw)``. Over the row-major flat leaf of ``n``
elements, an element is *non-zero* when its bit pattern is not all zeros
(``-0.0`` and NaN count as non-zero, so they survive), and ``raw`` is:

- ``dense``: the ``n`` values;
- ``bitmask``: ``ceil(n / 8)`` bytes, bit ``i`` (least significant first)
  set iff element ``i`` is non-zero, then the ``nnz`` non-zero values;
- ``delta``: ``nnz`` unsigned LEB128 varints, the k-th being the gap
  ``i_k - i_{k-1} - 1`` between the flat indices of consecutive non-zeros
  (``i_{-1} = -1``; at 97% sparsity most gaps take one byte), then the
  ``nnz`` non-zero values.

Values are little-endian in the ``values`` dtype: the leaf's own dtype, or,
with ``values="bfloat16"``, float32 and float64 leaves rounded to bfloat16
(to nearest even; zeros stay exactly 0) and widened back to ``dtype`` on
load. Per leaf
the writer takes the smallest of the three encodings, with or without zlib.

Cost per weight at sparsity ``s`` with 4-byte values: dense 4 bytes; bitmask
``1/8 + 4(1-s)``; delta about ``5(1-s)`` while the mean gap stays under 128,
i.e. ``0.15`` bytes (3.75% of dense) at ``s = 0.97``.
"""

from __future__ import annotations

import hashlib
import json
import os
import math
import struct
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import jax.numpy as jnp
import numpy as np

MAGIC = b"RDASPRS\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sHHIQ")
_DIGEST = 32
_ENCODINGS = ("dense", "bitmask", "delta")
_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
           "uint32", "uint64", "float16", "bfloat16", "float32", "float64")
_VALUES = ("float32", "bfloat16")
# What a reader accepts before allocating anything: decoded arrays of at most
# MAX_BYTES in all (load_sparse's max_bytes), trees at most _MAX_DEPTH dicts
# deep, rank 32 (numpy 1's limit), and varints of 9 bytes (any index < 2**63).
MAX_BYTES = 1 << 32
_MAX_DEPTH = 64
_MAX_NDIM = 32
_MAX_VARINT = 9

PathLike = Union[str, os.PathLike]


class SparseFormatError(ValueError):
  """A file that is not a valid sparse export: wrong magic or version,
  truncated, corrupt, or a checksum-valid header out of the reader's bounds.
  The message is one line naming the file and the problem; no weights are
  returned from such a file."""


def save_sparse(path: PathLike, variables: Mapping[str, Any], *,
                values: str = "float32") -> int:
  """Writes a variables tree to ``path`` in the compressed sparse format.

  Each leaf is stored densely, as a bitmask plus its non-zero values, or as
  delta-encoded indices plus its non-zero values, whichever is smallest,
  optionally zlib-compressed (format in the module docstring and
  docs/EXPORT.md). The file is written under a fresh temporary name in
  ``path``'s directory and renamed, so ``path`` never holds a partial file
  and no other file is touched; the temporary file is removed on failure.

  Args:
    path: destination file; replaced if it exists.
    variables: nested dicts (Flax variables, e.g. ``{"params": ...,
      "batch_stats": ...}``) with string keys and array leaves. Lists and
      tuples are refused: they would come back as one stacked array.
    values: ``"float32"`` keeps every value bit for bit; ``"bfloat16"``
      rounds the float32 and float64 leaves' values to bfloat16 (zeros
      stay 0), about half the size of the values. float16 and bfloat16
      leaves are kept as they are (bfloat16 would save nothing and lose
      float16's precision), and a finite value beyond bfloat16's range
      (about 3.39e38) is refused rather than saved as inf.

  Returns:
    The size of the file in bytes.

  Raises:
    ValueError: ``values`` unknown, a key not a string, a list or tuple in
      the tree, a leaf of an unsupported dtype, or (``"bfloat16"``) a value
      that would overflow. Raised before anything is written.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> import rda_optax
    >>> kernel = np.zeros((64, 64), np.float32)
    >>> kernel[::8, ::8] = 1.5
    >>> variables = {"params": {"dense": {"kernel": kernel,
    ...                                   "bias": np.ones(64, np.float32)}}}
    >>> f = os.path.join(tempfile.mkdtemp(), "model.rdasparse")
    >>> size = rda_optax.save_sparse(f, variables)
    >>> size < kernel.nbytes // 10
    True
    >>> back = rda_optax.load_sparse(f)
    >>> bool(np.array_equal(back["params"]["dense"]["kernel"], kernel))
    True
  """
  data = encode_sparse(variables, values=values)
  path = Path(path)
  # A name of our own in the destination's directory (so the rename stays on
  # one file system and is atomic): a fixed "path.tmp" would overwrite, then
  # delete, a file of that name that is not ours.
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      # mkstemp creates the file 0600; give it the mode open() would have.
      os.fchmod(f.fileno(), 0o666 & ~_umask())
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except FileNotFoundError:
      pass
    raise
  return len(data)


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def load_sparse(path: PathLike, *,
                max_bytes: int = MAX_BYTES) -> dict[str, Any]:
  """Reads a file written by :func:`save_sparse` back into a variables tree.

  Checks the magic, the format version, the lengths and the SHA-256 before
  decoding anything, then every leaf's entry against the header. A valid
  checksum proves only that the bytes are the ones written, so the header
  is bounded before anything is allocated: shapes of integers ``>= 0``,
  decoded arrays of at most ``max_bytes`` in all, trees at most 64 dicts
  deep, and no zlib stream inflated past the size its leaf allows.

  Args:
    path: a file written by :func:`save_sparse`.
    max_bytes: the most bytes the decoded arrays may take together (default
      4 GiB); a file announcing more is refused before anything is decoded.

  Returns:
    The nested dicts, with ``numpy`` arrays of the saved shapes and dtypes.

  Raises:
    SparseFormatError: the file is not a sparse export of a version this
      code reads, is truncated, is corrupt, or its header announces more
      than the limits above (crafted or from a faulty writer).
    OSError: the file cannot be read.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> import rda_optax
    >>> f = os.path.join(tempfile.mkdtemp(), "w.rdasparse")
    >>> _ = rda_optax.save_sparse(f, {"params": {"w": np.eye(3, dtype=np.float32)}})
    >>> rda_optax.load_sparse(f)["params"]["w"].dtype
    dtype('float32')
  """
  path = Path(path)
  return decode_sparse(path.read_bytes(), name=str(path), max_bytes=max_bytes)


def encode_sparse(variables: Mapping[str, Any], *,
                  values: str = "float32") -> bytes:
  """The bytes :func:`save_sparse` writes (see there)."""
  if values not in _VALUES:
    raise ValueError(f"values must be one of {_VALUES}, got {values!r}")
  leaves: list[dict[str, Any]] = []
  blobs: list[bytes] = []
  offset = 0

  def walk(node: Any, path: tuple[str, ...]) -> Any:
    nonlocal offset
    if isinstance(node, Mapping):
      out = {}
      for k, v in node.items():
        if not isinstance(k, str):
          raise ValueError(f"keys must be strings, got {k!r} under {list(path)}")
        out[k] = walk(v, path + (k,))
      return out
    if isinstance(node, (list, tuple)):
      # np.asarray would stack same-shape arrays into one leaf, which comes
      # back as an array, not as the container that was saved.
      raise ValueError(
          f"{list(path) or '<root>'} is a {type(node).__name__}: only nested "
          "dicts of arrays are stored (put its items under string keys)")
    arr = np.asarray(node)
    if arr.dtype.name not in _DTYPES:
      raise ValueError(f"leaf {list(path)}: unsupported dtype {arr.dtype}")
    stored = arr
    # 16-bit floats gain nothing from bfloat16 values and float16 would lose
    # mantissa bits (and 65504 would widen back to inf): kept as they are.
    if (values == "bfloat16" and jnp.issubdtype(arr.dtype, jnp.floating)
        and arr.dtype.itemsize > 2):
      with np.errstate(over="ignore"):  # found and named just below
        stored = arr.astype(jnp.bfloat16)
      overflow = np.isfinite(arr) & ~np.isfinite(stored)
      if overflow.any():
        i = int(np.flatnonzero(overflow.reshape(-1))[0])
        raise ValueError(
            f"leaf {list(path)}: value {arr.reshape(-1)[i]!r} (flat index "
            f"{i}) is beyond bfloat16's range and would be saved as inf; "
            "save it with values='float32'")
    encoding, nnz, compressed, blob = _encode_leaf(stored)
    leaves.append(dict(path=list(path), shape=list(arr.shape),
                       dtype=arr.dtype.name, values=stored.dtype.name,
                       encoding=encoding, nnz=nnz, zlib=compressed,
                       offset=offset, length=len(blob)))
    blobs.append(blob)
    offset += len(blob)
    return len(leaves) - 1

  tree = walk(variables, ())
  header = json.dumps(dict(tree=tree, leaves=leaves),
                      separators=(",", ":")).encode()
  body = (_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header), offset)
          + header + b"".join(blobs))
  return body + hashlib.sha256(body).digest()


def decode_sparse(data: bytes, *, name: str = "<bytes>",
                  max_bytes: int = MAX_BYTES) -> dict[str, Any]:
  """The tree :func:`load_sparse` returns, from the file's bytes ``data``."""

  def bad(problem: str) -> SparseFormatError:
    return SparseFormatError(f"{name}: {problem}")

  if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
    raise bad("not an rda-optax sparse export (wrong magic)")
  if len(data) < _PREFIX.size:
    raise bad(f"truncated ({len(data)} bytes, shorter than the fixed header)")
  _, version, _, hlen, plen = _PREFIX.unpack_from(data)
  if version != FORMAT_VERSION:
    raise bad(f"format version {version}; this code reads version "
              f"{FORMAT_VERSION}")
  end = _PREFIX.size + hlen + plen
  if len(data) < end + _DIGEST:
    raise bad(f"truncated ({len(data)} bytes, the header announces "
              f"{end + _DIGEST})")
  if len(data) > end + _DIGEST:
    raise bad(f"{len(data) - end - _DIGEST} unexpected bytes after the end")
  if hashlib.sha256(data[:end]).digest() != data[end:]:
    raise bad("checksum mismatch: the file is corrupt")
  # From here on the bytes are the ones written, but the writer may be
  # faulty or hostile (a checksum proves nothing about intent): every size is
  # checked before it is allocated, so a crafted file is refused here rather
  # than ending in MemoryError, RecursionError or a huge decompression.
  try:
    try:
      header = json.loads(data[_PREFIX.size:_PREFIX.size + hlen])
    except RecursionError:
      raise ValueError("header nested too deeply") from None
    if not isinstance(header, dict) or not isinstance(
        header.get("leaves"), list):
      raise ValueError("header is not {\"tree\": ..., \"leaves\": [...]}")
    leaves = [_check_leaf(l) for l in header["leaves"]]
    total = sum(n * _dtype(l["dtype"]).itemsize for l, n in leaves)
    if total > max_bytes:
      raise ValueError(
          f"the leaves hold {total} bytes, over the limit of {max_bytes} "
          "(load_sparse's max_bytes)")
    payload = memoryview(data)[_PREFIX.size + hlen:end]
    arrays = [_decode_leaf(l, n, payload) for l, n in leaves]
    return _rebuild(header.get("tree"), arrays, header["leaves"])
  except (ValueError, KeyError, TypeError, IndexError, zlib.error) as e:
    raise bad(f"invalid contents: {e}") from None


def _show(v: Any) -> str:
  # repr of a crafted value could be huge or nested past the stack limit.
  if v is None or isinstance(v, (bool, int, float, str)):
    return repr(v)[:40]
  return f"a {type(v).__name__}"


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _check_leaf(leaf: Any) -> tuple[dict[str, Any], int]:
  """The leaf entry, its types checked, and its element count."""
  if not isinstance(leaf, dict):
    raise ValueError(f"leaf entry {_show(leaf)} is not an object")
  path = leaf.get("path")
  if not isinstance(path, list) or not all(isinstance(k, str) for k in path):
    raise ValueError(f"leaf path {_show(path)} is not a list of strings")
  shape = leaf.get("shape")
  # A float such as 2.5 would pass int(); a bool would pass as 0 or 1.
  if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
      or not all(_is_int(s) and s >= 0 for s in shape)):
    shown = ("[" + ", ".join(_show(v) for v in shape[:_MAX_NDIM + 1]) + "]"
             if isinstance(shape, list) else _show(shape))
    raise ValueError(f"leaf {path}: shape {shown} is not a list of at "
                     f"most {_MAX_NDIM} integers >= 0")
  for key in ("nnz", "offset", "length"):
    if not _is_int(leaf.get(key)) or leaf[key] < 0:
      raise ValueError(f"leaf {path}: {key} {_show(leaf.get(key))} is not an "
                       "integer >= 0")
  if not isinstance(leaf.get("zlib"), bool):
    raise ValueError(f"leaf {path}: zlib {_show(leaf.get('zlib'))} is not a "
                     "boolean")
  return leaf, math.prod(shape)  # Python ints: no int64 overflow to 0


def _encode_leaf(arr: np.ndarray) -> tuple[str, int, bool, bytes]:
  flat = np.ascontiguousarray(arr).reshape(-1)
  bits = flat.view(_uint(flat.dtype))
  nz = bits != 0
  idx = np.flatnonzero(nz)
  vals = _le(flat[idx])
  raws = {"dense": _le(flat)}
  if idx.size < flat.size:
    raws["bitmask"] = np.packbits(nz, bitorder="little").tobytes() + vals
    gaps = np.diff(idx, prepend=-1) - 1
    raws["delta"] = _varints(gaps.astype(np.uint64)) + vals
  smallest = min(len(r) for r in raws.values())
  best = None
  for enc, raw in raws.items():
    options = [(len(raw), False, raw)]
    # zlib rarely halves packed values, so only near-winners are tried.
    if len(raw) <= 2 * smallest:
      packed = zlib.compress(raw, 6)
      options.append((len(packed), True, packed))
    for size, compressed, blob in options:
      if best is None or size < best[0]:
        best = (size, enc, compressed, blob)
  _, enc, compressed, blob = best
  return enc, int(idx.size), compressed, blob


def _decode_leaf(leaf: dict[str, Any], n: int,
                 payload: memoryview) -> np.ndarray:
  dtype, vdtype = _dtype(leaf["dtype"]), _dtype(leaf["values"])
  if leaf["values"] != leaf["dtype"] and not (
      leaf["values"] == "bfloat16" and jnp.issubdtype(dtype, jnp.floating)):
    raise ValueError(f"leaf {leaf['path']}: values {leaf['values']} for "
                     f"dtype {leaf['dtype']}")
  shape = tuple(leaf["shape"])
  nnz, off, length = leaf["nnz"], leaf["offset"], leaf["length"]
  if not (nnz <= n and off + length <= len(payload)):
    raise ValueError(f"leaf {leaf['path']}: nnz or extent out of range")
  enc, isz = leaf["encoding"], vdtype.itemsize
  if enc == "dense":
    expect = n * isz
  elif enc == "bitmask":
    expect = (n + 7) // 8 + nnz * isz
  elif enc == "delta":
    expect = nnz * (_MAX_VARINT + isz)
  else:
    raise ValueError(f"leaf {leaf['path']}: unknown encoding {_show(enc)}")
  raw = bytes(payload[off:off + length])
  if leaf["zlib"]:
    raw = _inflate(raw, expect, leaf["path"])
  if enc == "dense":
    if len(raw) != n * isz:
      raise ValueError(f"leaf {leaf['path']}: {len(raw)} bytes for {n} values")
    flat = _from_le(raw, vdtype)
  else:
    if len(raw) < nnz * isz:
      raise ValueError(f"leaf {leaf['path']}: too short for {nnz} values")
    where, vals = raw[:len(raw) - nnz * isz], raw[len(raw) - nnz * isz:]
    if enc == "bitmask":
      if len(where) != (n + 7) // 8:
        raise ValueError(f"leaf {leaf['path']}: bitmask of {len(where)} bytes")
      bits = np.unpackbits(np.frombuffer(where, np.uint8), bitorder="little")
      if bits[n:].any() or int(bits.sum()) != nnz:
        raise ValueError(f"leaf {leaf['path']}: bitmask disagrees with nnz")
      idx = np.flatnonzero(bits[:n])
    else:
      idx = _indices(_from_varints(where, nnz), n, leaf["path"])
    flat = np.zeros(n, vdtype)
    flat[idx] = _from_le(vals, vdtype)
  return flat.astype(dtype).reshape(shape)


def _inflate(raw: bytes, limit: int, path: Any) -> bytes:
  """zlib-decompresses at most ``limit`` bytes: a stream that would give more
  is refused after ``limit + 1`` bytes, not decompressed in full."""
  d = zlib.decompressobj()
  out = d.decompress(raw, limit + 1)
  if len(out) > limit:
    raise ValueError(f"leaf {path}: zlib stream decompresses beyond the "
                     f"{limit} bytes its header allows")
  if not d.eof or d.unused_data:
    raise ValueError(f"leaf {path}: incomplete zlib stream, or bytes after it")
  return out


def _rebuild(tree: Any, arrays: list[np.ndarray], leaves: list[dict]) -> Any:
  # Iterative, and the depth is bounded: a crafted tree nested thousands of
  # levels deep must be refused, not overflow the interpreter's stack.
  def check(node, path):
    if (not _is_int(node) or not 0 <= node < len(arrays)
        or leaves[node]["path"] != list(path)):
      raise ValueError(f"tree entry {list(path)} does not match the leaf list")
    return arrays[node]

  if not isinstance(tree, dict):
    used, root = 1, check(tree, ())
  else:
    used, root = _rebuild_dicts(tree, check)
  # Paths in a tree are distinct, so this also refuses two leaves of one path.
  if used != len(arrays):
    raise ValueError(f"the tree uses {used} of the {len(arrays)} leaves")
  return root


def _rebuild_dicts(tree: dict, check) -> tuple[int, dict[str, Any]]:
  used = 0
  root: dict[str, Any] = {}
  todo = [(tree, root, ())]
  while todo:
    node, out, path = todo.pop()
    if len(path) >= _MAX_DEPTH:
      raise ValueError(f"tree nested deeper than {_MAX_DEPTH} levels at "
                       f"{list(path)[:4]}...")
    for k, v in node.items():
      if isinstance(v, dict):
        out[k] = {}
        todo.append((v, out[k], path + (k,)))
      else:
        out[k] = check(v, path + (k,))
        used += 1
  return used, root


def _dtype(name: str) -> np.dtype:
  if name not in _DTYPES:
    raise ValueError(f"unsupported dtype {_show(name)}")
  return jnp.dtype(name)


def _uint(dtype: np.dtype) -> np.dtype:
  return np.dtype(f"u{dtype.itemsize}")


def _le(values: np.ndarray) -> bytes:
  # Bit patterns as little-endian unsigned ints: one path for every dtype,
  # bfloat16 included, whatever the machine's byte order.
  return values.view(_uint(values.dtype)).astype(
      _uint(values.dtype).newbyteorder("<")).tobytes()


def _from_le(raw: bytes, dtype: np.dtype) -> np.ndarray:
  u = np.frombuffer(raw, _uint(dtype).newbyteorder("<"))
  return u.astype(_uint(dtype)).view(dtype)


def _varints(v: np.ndarray) -> bytes:
  """Unsigned LEB128 of each element of a uint64 array, concatenated."""
  if not v.size:
    return b""
  nbytes = np.ones(v.shape, np.int64)
  rest = v >> np.uint64(7)
  while rest.any():
    nbytes += rest != 0
    rest >>= np.uint64(7)
  starts = np.cumsum(nbytes) - nbytes
  out = np.empty(int(nbytes.sum()), np.uint8)
  for k in range(int(nbytes.max())):
    sel = nbytes > k
    byte = (v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
    more = (nbytes[sel] > k + 1).astype(np.uint64) << np.uint64(7)
    out[starts[sel] + k] = (byte | more).astype(np.uint8)
  return out.tobytes()


def _from_varints(raw: bytes, count: int) -> np.ndarray:
  b = np.frombuffer(raw, np.uint8)
  last = (b & 0x80) == 0
  if int(last.sum()) != count or (b.size and not last[-1]):
    raise ValueError(f"{int(last.sum())} varints where {count} are announced")
  if not count:
    return np.zeros(0, np.uint64)
  ends = np.flatnonzero(last)
  starts = np.concatenate([[0], ends[:-1] + 1])
  lengths = ends - starts + 1
  if lengths.max() > _MAX_VARINT:  # 9 x 7 bits cover any index < 2**63
    raise ValueError("varint longer than 9 bytes")
  k = np.arange(b.size) - np.repeat(starts, lengths)
  terms = (b & 0x7F).astype(np.uint64) << (7 * k).astype(np.uint64)
  return np.add.reduceat(terms, starts)


def _indices(gaps: np.ndarray, n: int, path: Any) -> np.ndarray:
  if gaps.size and int(gaps.max()) >= n:
    raise ValueError(f"leaf {path}: index gap beyond the leaf")
  idx = np.cumsum(gaps.astype(np.int64) + 1) - 1
  if idx.size and (idx[-1] >= n or np.any(np.diff(idx) <= 0)):
    raise ValueError(f"leaf {path}: indices outside the leaf")
  return idx
