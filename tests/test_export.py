"""Sparse export: exact round trips, the size goal, every corruption caught,
and ``rda-train export`` / ``evaluate`` on a tiny digits run."""

import doctest
import hashlib
import json
import re
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import rda_optax
from rda_optax import _export
from train import cli
from train import export as export_lib
from _refusal import assert_refused  # tests/_refusal.py


def _bits(a):
  a = np.asarray(a)
  return a.view(np.dtype(f"u{a.dtype.itemsize}")) if a.dtype.itemsize else a


def _same_tree(a, b):
  """Same key order, shapes, dtypes and bit patterns."""
  if isinstance(a, dict):
    assert isinstance(b, dict) and list(a) == list(b)
    for k in a:
      _same_tree(a[k], b[k])
    return
  a = np.asarray(a)
  assert (b.shape, b.dtype) == (a.shape, a.dtype)
  assert np.array_equal(_bits(a), _bits(b))


def _sparse(rng, shape, sparsity, dtype=np.float32):
  x = rng.standard_normal(shape).astype(dtype)
  x.reshape(-1)[rng.random(x.size) < sparsity] = 0
  return x


def _tree(seed=0):
  rng = np.random.default_rng(seed)
  odd = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -3.5, 0.0],
                 np.float32)
  return {
      "params": {
          "conv": {"kernel": _sparse(rng, (3, 3, 16, 32), 0.99)},  # delta
          "hidden": {"kernel": _sparse(rng, (64, 48), 0.5),  # bitmask
                     "bias": rng.standard_normal(48).astype(np.float32)},
          "odd": odd, "scalar": np.float32(0.25), "empty": np.zeros((0, 4)),
          "half": jnp.asarray(_sparse(rng, (40, 40), 0.9), jnp.bfloat16),
      },
      "batch_stats": {"bn": {"mean": rng.standard_normal(8).astype(np.float32),
                             "var": np.ones(8, np.float32)}},
      "counters": {"steps": np.arange(-3, 5, dtype=np.int64),
                   "mask": np.array([True, False, False, True])},
      "empty": {},
  }


def _header(data):
  _, _, _, hlen, _ = _export._PREFIX.unpack_from(data)
  return json.loads(data[_export._PREFIX.size:_export._PREFIX.size + hlen])


def test_float32_round_trip_is_bit_identical_with_every_encoding(tmp_path):
  tree = _tree()
  f = tmp_path / "v.rdasparse"
  size = rda_optax.save_sparse(f, tree)
  assert size == f.stat().st_size
  back = rda_optax.load_sparse(f)
  _same_tree(tree, back)
  assert jax.tree.structure(back) == jax.tree.structure(
      jax.tree.map(np.asarray, tree))
  encodings = {l["encoding"] for l in _header(f.read_bytes())["leaves"]}
  assert encodings == {"dense", "bitmask", "delta"}


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 300), st.floats(0, 1), st.integers(0, 2**31 - 1),
       st.sampled_from(["float32", "bfloat16"]))
def test_round_trip_property(n, sparsity, seed, values):
  rng = np.random.default_rng(seed)
  x = _sparse(rng, (n,), sparsity)
  back = _export.decode_sparse(_export.encode_sparse({"w": x}, values=values))
  want = x if values == "float32" else x.astype(jnp.bfloat16).astype(np.float32)
  _same_tree({"w": want}, back)


def test_a_leaf_with_no_nonzeros_round_trips():
  # A layer pruned away entirely: no positions, no values to write.
  tree = {"params": {"dead": np.zeros((4, 6), np.float32),
                     "live": np.arange(5, dtype=np.float32)}}
  assert _export._varints(np.zeros(0, np.uint64)) == b""
  back = _export.decode_sparse(_export.encode_sparse(tree))
  np.testing.assert_array_equal(back["params"]["dead"], tree["params"]["dead"])
  np.testing.assert_array_equal(back["params"]["live"], tree["params"]["live"])


def test_varints_round_trip_large_gaps():
  gaps = np.array([0, 1, 127, 128, 16383, 16384, 2**35, 2**62], np.uint64)
  raw = _export._varints(gaps)
  assert len(raw) == 1 + 1 + 1 + 2 + 2 + 3 + 6 + 9
  assert np.array_equal(_export._from_varints(raw, gaps.size), gaps)


def test_bfloat16_values_round_nonzeros_and_keep_zeros(tmp_path):
  tree = _tree()
  rda_optax.save_sparse(tmp_path / "b", tree, values="bfloat16")
  back = rda_optax.load_sparse(tmp_path / "b")
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    got = back
    for k in path:
      got = got[k.key]
    x = np.asarray(x)
    assert (got.shape, got.dtype) == (x.shape, x.dtype)
    if jnp.issubdtype(x.dtype, jnp.floating):
      want = x.astype(jnp.bfloat16).astype(x.dtype)
      assert np.array_equal(_bits(got), _bits(want)), path
      assert np.all(_bits(got)[_bits(x) == 0] == 0), path
    else:
      assert np.array_equal(got, x), path
  assert (tmp_path / "b").stat().st_size < rda_optax.save_sparse(
      tmp_path / "f", tree)


@pytest.mark.parametrize("values,goal", [("float32", 0.065), ("bfloat16", 0.05)])
def test_size_at_97_percent(values, goal):
  x = _sparse(np.random.default_rng(0), (3, 3, 128, 128), 0.97)
  data = _export.encode_sparse({"params": {"k": x}}, values=values)
  assert len(data) <= goal * x.nbytes


def _small_file():
  rng = np.random.default_rng(1)
  return _export.encode_sparse({
      "params": {"k": _sparse(rng, (12, 12), 0.9), "b": np.ones(3, np.float32)},
      "batch_stats": {}})


def test_every_flipped_byte_is_refused():
  data = _small_file()
  for i in range(len(data)):
    bad = bytearray(data)
    bad[i] ^= 0x41
    with pytest.raises(rda_optax.SparseFormatError, match="^f.bin: "):
      _export.decode_sparse(bytes(bad), name="f.bin")


def test_every_truncation_is_refused():
  data = _small_file()
  for n in range(len(data)):
    with pytest.raises(rda_optax.SparseFormatError):
      _export.decode_sparse(data[:n])
  with pytest.raises(rda_optax.SparseFormatError, match="truncated"):
    _export.decode_sparse(data[:-1])
  with pytest.raises(rda_optax.SparseFormatError, match="unexpected bytes"):
    _export.decode_sparse(data + b"\0")


def _resign(body: bytes) -> bytes:
  return body + hashlib.sha256(body).digest()


def test_wrong_magic_and_version_are_named(tmp_path):
  data = _small_file()
  f = tmp_path / "m.rdasparse"
  f.write_bytes(b"PK\x03\x04" + data[4:])
  with pytest.raises(rda_optax.SparseFormatError, match=f"{f}: .*magic"):
    rda_optax.load_sparse(f)
  body = bytearray(data[:-32])
  struct.pack_into("<H", body, 8, 2)
  f.write_bytes(_resign(bytes(body)))  # valid checksum, newer version
  with pytest.raises(rda_optax.SparseFormatError, match=f"{f}: format version 2"):
    rda_optax.load_sparse(f)


_K = re.escape("leaf ['params', 'k']: ")


@pytest.mark.parametrize("field,value,says", [
    ("nnz", 1000, _K + "nnz or extent out of range"),
    ("nnz", 3, "36 varints where 3 are announced"),
    ("offset", 10**6, _K + "nnz or extent out of range"),
    ("encoding", "rle", _K + "unknown encoding 'rle'"),
    ("dtype", "complex64", "unsupported dtype 'complex64'"),
    ("values", "bfloat16", "29 varints where 15 are announced"),
    ("shape", [2, 3], _K + "nnz or extent out of range"),
    ("shape", [4, 5], _K + "index gap beyond the leaf"),
    ("path", ["params", "x"], "tree entry .* does not match the leaf list"),
])
def test_header_that_disagrees_with_the_payload_is_refused(field, value,
                                                           says):
  # The message names what disagrees (and the leaf), not only that it does.
  with pytest.raises(rda_optax.SparseFormatError,
                     match="invalid contents: " + says):
    _export.decode_sparse(_signed_with(field, value))


def test_values_of_another_type_than_the_leaf_are_named():
  # A float32 leaf: only bfloat16 values may differ from its dtype.
  with pytest.raises(rda_optax.SparseFormatError,
                     match="values int32 for dtype float32"):
    _export.decode_sparse(_signed_with("values", "int32"))


def _signed_with(field, value):
  """A correctly signed file from a writer that disagrees with this reader:
  ``field`` of the leaf ``params/k`` set to ``value`` in the header."""
  data = _small_file()
  header = _header(data)
  leaf = next(l for l in header["leaves"] if l["path"] == ["params", "k"])
  leaf[field] = value
  h = json.dumps(header).encode()
  _, v, r, hlen, plen = _export._PREFIX.unpack_from(data)
  body = (_export._PREFIX.pack(_export.MAGIC, v, r, len(h), plen) + h
          + data[_export._PREFIX.size + hlen:-32])
  return _resign(body)


def test_index_gaps_that_run_past_the_leaf_are_refused():
  # Each gap is below the leaf's size, but their sum is not: a correctly
  # signed file from a faulty writer must not index past the leaf.
  with pytest.raises(ValueError, match="indices outside the leaf"):
    _export._indices(np.array([3, 3], np.uint64), 5, "w")  # 3, then 7
  np.testing.assert_array_equal(
      _export._indices(np.array([3, 0], np.uint64), 5, "w"), [3, 4])


def test_doctests():
  assert doctest.testmod(_export).failed == 0


# --- the trainer ------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("runs")
  code = cli.main(["--out", str(out), "--run-name", "r", "--method", "rda",
                   "--epochs", "2", "--asr-epochs", "1", "--progress", "none",
                   "--batch-size", "64"])
  assert code == 0
  return out / "r"


def test_export_then_evaluate_gives_the_runs_test_top1(run_dir, tmp_path, capsys):
  f = tmp_path / "m.rdasparse"
  assert cli.main(["export", str(run_dir), "--out", str(f)]) == 0
  assert f"wrote {f}" in capsys.readouterr().out
  _same_tree(export_lib.final_variables(run_dir), rda_optax.load_sparse(f))
  summary = json.loads((run_dir / "summary.json").read_text())
  # A model that has learned (chance is 10%), so wrong weights or a wrong
  # normalization would change the count.
  assert summary["test_top1"] > 30
  top1, top5 = export_lib.evaluate_file(f, run_dir)
  assert (top1, top5) == (summary["test_top1"], summary["test_top5"])
  assert cli.main(["evaluate", str(f), "--run", str(run_dir)]) == 0
  assert f"test top-1 {summary['test_top1']:.2f}%" in capsys.readouterr().out
  # The default destination, and --force to replace it.
  assert cli.main(["export", str(run_dir), "--values", "bfloat16"]) == 0
  default = run_dir / export_lib.DEFAULT_NAME
  assert default.stat().st_size < f.stat().st_size
  assert cli.main(["export", str(run_dir), "--force"]) == 0
  assert default.read_bytes() == f.read_bytes()
  default.unlink()


@pytest.mark.parametrize("case", ["missing", "not_a_run", "no_checkpoints",
                                  "exists", "no_parent",
                                  "bad_values", "corrupt", "other_model"])
def test_export_evaluate_bad_input_one_line_exit_2(case, run_dir, tmp_path,
                                                    capsys):
  f = tmp_path / "m.rdasparse"
  if case == "missing":
    argv, needle = ["export", str(tmp_path / "nope")], "nope"
  elif case == "not_a_run":
    argv, needle = ["export", str(tmp_path)], "config.json"
  elif case == "no_checkpoints":
    (tmp_path / "config.json").write_bytes((run_dir / "config.json").read_bytes())
    argv, needle = ["export", str(tmp_path)], "checkpoints"
  elif case == "exists":
    f.write_bytes(b"keep")
    argv, needle = ["export", str(run_dir), "--out", str(f)], "--force"
  elif case == "no_parent":
    argv, needle = ["export", str(run_dir), "--out", str(tmp_path / "d" / "m")], "does not exist"
  elif case == "bad_values":
    argv, needle = ["export", str(run_dir), "--values", "int8"], "int8"
  elif case == "corrupt":
    data = bytearray(_small_file())
    data[-40] ^= 1
    f.write_bytes(bytes(data))
    argv, needle = ["evaluate", str(f), "--run", str(run_dir)], "checksum"
  else:
    f.write_bytes(_small_file())
    argv, needle = ["evaluate", str(f), "--run", str(run_dir)], "does not hold"
  assert_refused(argv, needle, tmp_path, capsys)
  assert not (run_dir / export_lib.DEFAULT_NAME).exists()
  if case == "exists":
    assert f.read_bytes() == b"keep"
