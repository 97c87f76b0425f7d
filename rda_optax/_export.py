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
with ``values="bfloat16"``, floating leaves rounded to bfloat16 (to nearest
even; zeros stay exactly 0) and widened back to ``dtype`` on load. Per leaf
the writer takes the smallest of the three encodings, with or without zlib.

Cost per weight at sparsity ``s`` with 4-byte values: dense 4 bytes; bitmask
``1/8 + 4(1-s)``; delta about ``5(1-s)`` while the mean gap stays under 128,
i.e. ``0.15`` bytes (3.75% of dense) at ``s = 0.97``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
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

PathLike = Union[str, os.PathLike]


class SparseFormatError(ValueError):
  """A file that is not a valid sparse export: wrong magic or version,
  truncated, or corrupt. The message names the file and the problem; no
  weights are returned from such a file."""


def save_sparse(path: PathLike, variables: Mapping[str, Any], *,
                values: str = "float32") -> int:
  """Writes a variables tree to ``path`` in the compressed sparse format.

  Each leaf is stored densely, as a bitmask plus its non-zero values, or as
  delta-encoded indices plus its non-zero values, whichever is smallest,
  optionally zlib-compressed (format in the module docstring and
  docs/EXPORT.md). The file is written to a temporary name and renamed, so
  ``path`` never holds a partial file.

  Args:
    path: destination file; replaced if it exists.
    variables: nested dicts (Flax variables, e.g. ``{"params": ...,
      "batch_stats": ...}``) with string keys and array leaves.
    values: ``"float32"`` keeps every value bit for bit; ``"bfloat16"``
      rounds the floating leaves' values to bfloat16 (zeros stay 0), about
      half the size of the values.

  Returns:
    The size of the file in bytes.

  Raises:
    ValueError: ``values`` unknown, a key not a string, or a leaf of an
      unsupported dtype.

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
  tmp = path.with_name(path.name + ".tmp")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return len(data)


def load_sparse(path: PathLike) -> dict[str, Any]:
  """Reads a file written by :func:`save_sparse` back into a variables tree.

  Checks the magic, the format version, the lengths and the SHA-256 before
  decoding anything, then every leaf's encoding against the header.

  Args:
    path: a file written by :func:`save_sparse`.

  Returns:
    The nested dicts, with ``numpy`` arrays of the saved shapes and dtypes.

  Raises:
    SparseFormatError: the file is not a sparse export of a version this
      code reads, is truncated, or is corrupt.
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
  return decode_sparse(path.read_bytes(), name=str(path))


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
    arr = np.asarray(node)
    if arr.dtype.name not in _DTYPES:
      raise ValueError(f"leaf {list(path)}: unsupported dtype {arr.dtype}")
    stored = arr
    if values == "bfloat16" and jnp.issubdtype(arr.dtype, jnp.floating):
      stored = arr.astype(jnp.bfloat16)
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


def decode_sparse(data: bytes, *, name: str = "<bytes>") -> dict[str, Any]:
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
  # From here on the bytes are the ones written; the checks below guard
  # against a writer that disagrees with this reader, not against noise.
  try:
    header = json.loads(data[_PREFIX.size:_PREFIX.size + hlen])
    payload = memoryview(data)[_PREFIX.size + hlen:end]
    arrays = [_decode_leaf(l, payload) for l in header["leaves"]]
    return _rebuild(header["tree"], arrays, header["leaves"], ())
  except (ValueError, KeyError, TypeError, IndexError, zlib.error) as e:
    raise bad(f"invalid contents: {e}") from None


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


def _decode_leaf(leaf: dict[str, Any], payload: memoryview) -> np.ndarray:
  dtype, vdtype = _dtype(leaf["dtype"]), _dtype(leaf["values"])
  if leaf["values"] != leaf["dtype"] and not (
      leaf["values"] == "bfloat16" and jnp.issubdtype(dtype, jnp.floating)):
    raise ValueError(f"leaf {leaf['path']}: values {leaf['values']} for "
                     f"dtype {leaf['dtype']}")
  shape = tuple(int(s) for s in leaf["shape"])
  if any(s < 0 for s in shape):
    raise ValueError(f"leaf {leaf['path']}: negative shape {shape}")
  n = int(np.prod(shape, dtype=np.int64))
  nnz, off, length = int(leaf["nnz"]), int(leaf["offset"]), int(leaf["length"])
  if not (0 <= nnz <= n and 0 <= off and off + length <= len(payload)):
    raise ValueError(f"leaf {leaf['path']}: nnz or extent out of range")
  raw = bytes(payload[off:off + length])
  if leaf["zlib"]:
    raw = zlib.decompress(raw)
  enc, isz = leaf["encoding"], vdtype.itemsize
  if enc == "dense":
    if len(raw) != n * isz:
      raise ValueError(f"leaf {leaf['path']}: {len(raw)} bytes for {n} values")
    flat = _from_le(raw, vdtype)
  elif enc in ("bitmask", "delta"):
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
  else:
    raise ValueError(f"leaf {leaf['path']}: unknown encoding {enc!r}")
  return flat.astype(dtype).reshape(shape)


def _rebuild(node: Any, arrays: list[np.ndarray], leaves: list[dict],
             path: tuple[str, ...]) -> Any:
  if isinstance(node, dict):
    return {k: _rebuild(v, arrays, leaves, path + (k,)) for k, v in node.items()}
  if (not isinstance(node, int) or isinstance(node, bool)
      or not 0 <= node < len(arrays) or leaves[node]["path"] != list(path)):
    raise ValueError(f"tree entry {list(path)} does not match the leaf list")
  return arrays[node]


def _dtype(name: str) -> np.dtype:
  if name not in _DTYPES:
    raise ValueError(f"unsupported dtype {name!r}")
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
  if lengths.max() > 9:  # 9 x 7 bits cover any index below 2**63
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
