"""The sparse export against hostile files and odd trees (issue 28).

A valid checksum proves only that the bytes are the ones written: every file
here is correctly signed (built with the module's own prefix and digest),
and each must be refused with one ``SparseFormatError`` line, never a
MemoryError, a RecursionError, a silently wrong shape or a decompression of
everything the file announces. The writer's side: a temporary file of its
own (never ``path.tmp``), containers it cannot round-trip refused, and
bfloat16 values that neither overflow nor lose float16's precision.
"""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
import zlib

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import rda_optax
from rda_optax import _export


def _sign(header_bytes: bytes, payload: bytes) -> bytes:
  body = (_export._PREFIX.pack(_export.MAGIC, _export.FORMAT_VERSION, 0,
                               len(header_bytes), len(payload))
          + header_bytes + payload)
  return body + hashlib.sha256(body).digest()


def _parts(data: bytes) -> tuple[dict, bytes]:
  _, _, _, hlen, _ = _export._PREFIX.unpack_from(data)
  start = _export._PREFIX.size
  return json.loads(data[start:start + hlen]), data[start + hlen:-32]


def _small() -> bytes:
  k = np.zeros((4, 5), np.float32)
  k[1, 2], k[3, 4] = 1.5, -2.0
  return _export.encode_sparse(
      {"params": {"k": k, "b": np.ones(3, np.float32)}})


def _with_leaf(**fields) -> bytes:
  """The small file, correctly signed, with the leaf ``params/k``'s header
  fields replaced."""
  header, payload = _parts(_small())
  leaf = next(l for l in header["leaves"] if l["path"] == ["params", "k"])
  leaf.update(fields)
  return _sign(json.dumps(header).encode(), payload)


def _refused(data: bytes, says: str) -> str:
  with pytest.raises(rda_optax.SparseFormatError) as e:
    _export.decode_sparse(data, name="f.rdasparse")
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("f.rdasparse: "), msg
  assert says in msg, msg
  return msg


# --- crafted headers ---------------------------------------------------------

def test_a_huge_shape_is_refused_before_anything_is_allocated():
  # 2**44 float32 zeros fit in a 0-byte delta blob; the old reader called
  # np.zeros(2**44) and died of MemoryError.
  _refused(_with_leaf(shape=[2**44], encoding="delta", nnz=0, zlib=False,
                      offset=0, length=0), "over the limit of")


def test_a_shape_whose_product_overflows_int64_is_refused():
  # np.prod of [2**32, 2**32] in int64 is 0: the product is taken in
  # Python ints, so it is seen for what it is.
  _refused(_with_leaf(shape=[2**32, 2**32], encoding="delta", nnz=0,
                      zlib=False, offset=0, length=0), "over the limit of")


@pytest.mark.parametrize("shape", [[2.5], [4.0, 5], [True, 20], [-1, -20],
                                   "20", [[4], 5], None, [1] * 40])
def test_a_shape_that_is_not_a_list_of_counts_is_refused(shape):
  # [2.5] used to load as (2,) via int(); bools pass int() as 0 and 1.
  _refused(_with_leaf(shape=shape), "shape")


@pytest.mark.parametrize("field,value", [
    ("nnz", 2.0), ("nnz", True), ("offset", -1), ("offset", 1e300),
    ("length", "8"), ("zlib", 1), ("path", "params/k"), ("path", [1, 2])])
def test_counts_and_flags_of_the_wrong_type_are_refused(field, value):
  _refused(_with_leaf(**{field: value}), field if field != "path" else "path")


def test_a_tree_nested_past_the_json_stack_is_refused():
  # json.loads raises RecursionError on this; it is refused as a format
  # error, not let through as a crash.
  depth = 100_000
  header = ('{"tree":' + '{"a":' * depth + "0" + "}" * depth
            + ',"leaves":[]}').encode()
  _refused(_sign(header, b""), "nested too deeply")


def test_a_tree_nested_deeper_than_the_limit_is_refused():
  depth = 200  # parses, then the (iterative) rebuild refuses it
  header = ('{"tree":' + '{"a":' * depth + "0" + "}" * depth
            + ',"leaves":[{"path":' + json.dumps(["a"] * depth)
            + ',"shape":[],"dtype":"float32","values":"float32",'
            '"encoding":"dense","nnz":0,"zlib":false,"offset":0,'
            '"length":4}]}').encode()
  _refused(_sign(header, bytes(4)), "nested deeper than 64")


def _bomb(enc: str, inflated: int) -> bytes:
  """A leaf of 4 float32 values whose zlib blob inflates to ``inflated``
  zero bytes."""
  blob = zlib.compress(bytes(inflated), 9)
  header = dict(tree={"w": 0}, leaves=[dict(
      path=["w"], shape=[4], dtype="float32", values="float32",
      encoding=enc, nnz=1 if enc != "dense" else 0, zlib=True, offset=0,
      length=len(blob))])
  return _sign(json.dumps(header).encode(), blob)


@pytest.mark.parametrize("enc", ["dense", "bitmask", "delta"])
def test_a_zlib_bomb_is_not_inflated_past_what_its_leaf_allows(enc):
  data = _bomb(enc, 64 << 20)  # 64 MiB of zeros in ~64 KiB
  tracemalloc.start()
  try:
    _refused(data, "decompresses beyond")
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  # The old reader inflated all 64 MiB before comparing sizes.
  assert peak < 1 << 20, peak


@pytest.mark.parametrize("tree,says", [
    ({"params": {"k": 0}}, "the tree uses 1 of the 2 leaves"),
    ({"params": {"k": 0, "b": 1}, "x": {}}, None)])
def test_a_tree_must_use_every_leaf(tree, says):
  header, payload = _parts(_small())
  header["tree"] = tree
  data = _sign(json.dumps(header).encode(), payload)
  if says:
    _refused(data, says)
  else:  # empty dicts survive
    assert _export.decode_sparse(data)["x"] == {}


def test_a_truncated_zlib_stream_is_refused():
  header, payload = _parts(_small())
  leaf = header["leaves"][0]
  blob = zlib.compress(bytes(payload[leaf["offset"]:leaf["offset"]
                                     + leaf["length"]]))[:-3]
  leaf.update(zlib=True, offset=len(payload), length=len(blob))
  _refused(_sign(json.dumps(header).encode(), payload + blob),
           "incomplete zlib stream")


def test_max_bytes_bounds_a_genuine_file_and_can_be_raised(tmp_path):
  f = tmp_path / "w.rdasparse"
  w = np.arange(1000, dtype=np.float32)
  rda_optax.save_sparse(f, {"w": w})
  with pytest.raises(rda_optax.SparseFormatError, match="4000 bytes, over "
                     "the limit of 3999"):
    rda_optax.load_sparse(f, max_bytes=3999)
  np.testing.assert_array_equal(rda_optax.load_sparse(f, max_bytes=4000)["w"],
                                w)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda kids: st.lists(kids, max_size=3)
    | st.dictionaries(st.text(max_size=3), kids, max_size=3),
    max_leaves=6)
_FIELDS = ["path", "shape", "dtype", "values", "encoding", "nnz", "zlib",
           "offset", "length"]
# Values a field could plausibly hold: they get past the type checks and
# reach the decoding itself far more often than arbitrary JSON does.
_PLAUSIBLE = (st.sampled_from(list(_export._DTYPES)
                              + ["dense", "bitmask", "delta", True, False])
              | st.integers(-3, 40) | st.lists(st.integers(0, 6), max_size=3)
              | st.lists(st.sampled_from(["params", "k", "b"]), max_size=3))
_TREES = st.none() | _JSON | st.sampled_from(
    [{"params": {"k": 1, "b": 0}}, {"params": {"k": 0}}, 0])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, 1), st.sampled_from(_FIELDS),
                                _JSON | _PLAUSIBLE), min_size=1, max_size=3),
       tree=_TREES)
def test_any_signed_header_edit_loads_or_raises_sparse_format_error(edits,
                                                                    tree):
  """The property: whatever a correctly signed header says, the reader
  returns arrays of the announced shapes or raises SparseFormatError."""
  header, payload = _parts(_small())
  for i, field, value in edits:
    header["leaves"][i][field] = value
  if tree is not None:
    header["tree"] = tree
  data = _sign(json.dumps(header).encode(), payload)
  try:
    out = _export.decode_sparse(data)
  except rda_optax.SparseFormatError as e:
    assert "\n" not in str(e)
    return
  # Loaded: every leaf of the header, each at its path, of its shape.
  got = jax.tree_util.tree_flatten_with_path(out)[0]
  assert len(got) == len(header["leaves"])
  for path, arr in got:
    keys = [k.key for k in path]
    leaf = next(l for l in header["leaves"] if l["path"] == keys)
    assert list(arr.shape) == leaf["shape"]


# --- the writer --------------------------------------------------------------

def test_save_leaves_an_unrelated_tmp_file_alone(tmp_path):
  f = tmp_path / "weights"
  other = tmp_path / "weights.tmp"
  other.write_bytes(b"someone else's file")
  rda_optax.save_sparse(f, {"w": np.ones(3, np.float32)})
  assert other.read_bytes() == b"someone else's file"
  # and nothing of the writer's own is left behind
  assert sorted(p.name for p in tmp_path.iterdir()) == ["weights",
                                                       "weights.tmp"]


def test_a_failed_save_removes_its_temporary_file_and_keeps_the_old_one(
    tmp_path, monkeypatch):
  f = tmp_path / "weights"
  f.write_bytes(b"the previous export")

  def no_rename(*a, **k):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "replace", no_rename)
  with pytest.raises(OSError, match="No space"):
    rda_optax.save_sparse(f, {"w": np.ones(3, np.float32)})
  assert f.read_bytes() == b"the previous export"
  assert [p.name for p in tmp_path.iterdir()] == ["weights"]


def test_a_saved_file_has_the_mode_open_would_give(tmp_path):
  # mkstemp's 0600 would make an export unreadable to the rest of a group.
  mask = os.umask(0o022)
  os.umask(mask)
  f = tmp_path / "w"
  rda_optax.save_sparse(f, {"w": np.ones(3, np.float32)})
  assert f.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("tree,where", [
    ({"params": {"layers": [np.ones(3, np.float32)] * 2}},
     "['params', 'layers'] is a list"),
    ({"params": (np.ones(3, np.float32), np.zeros(3, np.float32))},
     "['params'] is a tuple"),
    ([np.ones(3, np.float32)], "<root> is a list")])
def test_lists_and_tuples_are_refused_before_anything_is_written(tmp_path,
                                                                 tree, where):
  # [a, b] of one shape used to be saved as one (2, 3) array.
  f = tmp_path / "w"
  with pytest.raises(ValueError, match="only nested dicts") as e:
    rda_optax.save_sparse(f, tree)
  assert where in str(e.value)
  assert not any(tmp_path.iterdir())


def test_bfloat16_values_keep_float16_leaves_as_they_are(tmp_path):
  # Rounded to bfloat16 and back, 65504 became inf and 1/3 lost 3 bits.
  h = np.array([65504.0, 1 / 3, 0.0, -6e-8], np.float16)
  f = tmp_path / "w"
  rda_optax.save_sparse(f, {"h": h, "w": np.full(3, 1 / 3, np.float32)},
                        values="bfloat16")
  header, _ = _parts(f.read_bytes())
  assert {tuple(l["path"]): l["values"] for l in header["leaves"]} == {
      ("h",): "float16", ("w",): "bfloat16"}
  back = rda_optax.load_sparse(f)["h"]
  assert back.dtype == np.float16
  np.testing.assert_array_equal(back.view(np.uint16), h.view(np.uint16))


@pytest.mark.parametrize("dtype,value", [
    (np.float32, np.finfo(np.float32).max), (np.float64, 1e300)])
def test_bfloat16_values_refuse_a_value_that_would_become_inf(tmp_path, dtype,
                                                              value):
  f = tmp_path / "w"
  f.write_bytes(b"old")
  w = np.array([1.0, value, 0.0], dtype)
  with pytest.raises(ValueError, match=r"leaf \['p', 'w'\]: value .* "
                     r"\(flat index 1\) is beyond bfloat16's range"):
    rda_optax.save_sparse(f, {"p": {"w": w}}, values="bfloat16")
  assert f.read_bytes() == b"old"
  # float32 values keep it exactly.
  rda_optax.save_sparse(f, {"p": {"w": w}})
  assert rda_optax.load_sparse(f)["p"]["w"][1] == value
