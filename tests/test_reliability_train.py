"""Reliability round 3 of the trainer (issue 28; docs/RELIABILITY.md,
"Round 3 (trainer)").

Each test states what the trainer guarantees for odd data or hostile input:
16-bit images keep their gray levels, unfinished runs are not exported,
crafted sparse files end in one line, every pruning method prunes, a FLOPs
target comes from a comparable run, the preset in force is visible, and the
logged sparsity counts exact zeros only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from train import cli
from train.data import _decode

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
SMALL = ["--batch-size", "64", "--progress", "none"]


def _main(argv) -> tuple[object, str, str]:
  """Runs the CLI in-process: (exit code, stdout, stderr)."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
    try:
      code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse
      code = e.code
  return code, out.getvalue(), err.getvalue()


def _one_line(err: str, needle: str, prefix: str = "rda-train") -> None:
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  assert lines[0].startswith(prefix) and needle in lines[0], err
  assert "Traceback" not in err


def _listing(path: Path) -> list[str]:
  return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- 1. images wider than 8 bits ----------------------------------------------

GRADIENT = np.arange(65536, dtype=np.uint16).reshape(256, 256)


@pytest.mark.parametrize("mode,fmt,pixels,full", [
    ("I;16", "PNG", GRADIENT, 65535),
    ("I", "TIFF", GRADIENT.astype(np.int32), 65535),
    ("F", "TIFF", GRADIENT.astype(np.float32) / 65535, 1.0),
])
def test_wide_gray_images_are_scaled_not_clipped(mode, fmt, pixels, full,
                                                 tmp_path):
  f = tmp_path / f"g.{fmt.lower()}"
  image = Image.fromarray(pixels)
  image = image if image.mode == mode else image.convert(mode)
  image.save(f, fmt)
  with Image.open(f) as back:
    assert back.mode == mode  # the case under test, not an 8-bit file
  [(got, error)] = _decode.decode_chunk([str(f)], None)
  assert error is None, error
  assert got.dtype == np.uint8 and got.shape == pixels.shape
  # Every one of the 256 gray levels, in the gradient's order, each within
  # rounding of the value's share of the mode's full scale.
  assert np.unique(got).tolist() == list(range(256))
  assert (np.diff(got.reshape(-1).astype(int)) >= 0).all()
  assert np.abs(got - pixels.astype(np.float64) * 255 / full).max() <= 0.5 + 1e-6
  # Resized too: the scaling happens before the resampling.
  [(small, _)] = _decode.decode_chunk([str(f)], 16)
  assert small.min() < 16 and small.max() > 239


@pytest.mark.parametrize("mode,pixels", [
    ("I", np.array([[-5, 70000]], np.int32)),
    ("F", np.array([[0.0, 2.5]], np.float32)),
])
def test_wide_gray_images_of_unknown_scale_are_refused(mode, pixels, tmp_path):
  f = tmp_path / "g.tiff"
  Image.fromarray(pixels).save(f, "TIFF")
  [(got, error)] = _decode.decode_chunk([str(f)], None)
  assert got is None and len(error.splitlines()) == 1
  assert mode in error and "8- or 16-bit" in error


# --- a finished run shared by the tests below --------------------------------

@pytest.fixture(scope="module")
def pf(tmp_path_factory):
  """prune-finetune to 0.01, 1 + 1 epochs, under the implied digits-demo
  preset: (run directory, stderr). At 0.01 the smallest kept weights are
  below 1e-3 (at 0.5 magnitude pruning removes every one of them)."""
  out = tmp_path_factory.mktemp("runs")
  code, _, err = _main(["--out", out, "--run-name", "pf", *SMALL,
                        "--method", "prune-finetune", "--target-sparsity",
                        "0.01", "--epochs", "1", "--asr-epochs", "1"])
  assert code == 0, err
  return out / "pf", err


def _copy(run_dir: Path, dest: Path, **config) -> Path:
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(run_dir, dest)
  if config:
    cfg = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps(dict(cfg, **config)))
  return dest


# --- 7. the logged sparsity counts exact zeros only ------------------------------

def test_logged_sparsity_counts_exact_zeros_not_small_weights(pf):
  from rda_optax import sparsity_report  # pylint: disable=g-import-not-at-top
  from train import export as export_lib  # pylint: disable=g-import-not-at-top
  run_dir, _ = pf
  params = export_lib.final_variables(run_dir)["params"]
  paths_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  kernels = {jax.tree_util.keystr(p): np.asarray(w) for p, w in paths_leaves
             if np.ndim(w) >= 2}
  flat = np.concatenate([w.reshape(-1) for w in kernels.values()])
  zeros = np.count_nonzero(flat == 0)
  tiny = np.count_nonzero((flat != 0) & (np.abs(flat) < 1e-3))
  # The case the test needs: exact zeros (the pruned ones) and, apart from
  # them, weights that a tolerance would count as zero.
  assert zeros > 0 and tiny > 0.001 * flat.size, (zeros, tiny)
  exact = zeros / flat.size
  rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text()
          .splitlines()]
  summary = json.loads((run_dir / "summary.json").read_text())
  # float32 division in the trainer, float64 here: equal to 1e-6, while
  # counting the tiny weights would move it by at least 1e-3.
  assert rows[-1]["sparsity"] == pytest.approx(exact, rel=1e-6, abs=1e-9)
  assert summary["sparsity"] == pytest.approx(exact, rel=1e-6, abs=1e-9)
  assert summary["sparsity"] == pytest.approx(0.01, abs=1e-3)  # pruned
  per_layer = rows[-1]["sparsity_per_layer"]
  assert len(per_layer) == len(kernels)
  for (name, w), (logged_name, logged) in zip(
      sorted(kernels.items()), sorted(per_layer.items())):
    assert logged == pytest.approx(np.mean(w == 0), rel=1e-6, abs=1e-9), (
        name, logged_name)
  assert [l.sparsity for l in sparsity_report(params)] == pytest.approx(
      [np.mean(w == 0) for w in kernels.values()], rel=1e-6, abs=1e-9)


# --- 2. export: finished runs only; evaluate: one line for any bad file --------

def test_export_refuses_an_unfinished_run(pf, tmp_path):
  # A run stopped after some epoch has config, metrics and checkpoints but
  # no summary.json: exactly the copy without it.
  run_dir = _copy(pf[0], tmp_path / "stopped")
  (run_dir / "summary.json").unlink()
  before = _listing(tmp_path)
  for argv in (["export", run_dir],
               ["export", run_dir, "--out", tmp_path / "w.rdasparse"]):
    code, out, err = _main(argv)
    assert code == 2 and not out
    _one_line(err, f"{run_dir}: not a finished run (no summary.json",
              "rda-train export: error:")
  assert _listing(tmp_path) == before


@pytest.mark.parametrize("exc", [
    "SparseFormatError", "MemoryError", "RecursionError", "ValueError"])
def test_evaluate_on_a_file_the_reader_chokes_on_is_one_line(
    pf, tmp_path, monkeypatch, exc):
  import builtins  # pylint: disable=g-import-not-at-top
  import rda_optax  # pylint: disable=g-import-not-at-top
  error = getattr(rda_optax, exc, None) or getattr(builtins, exc)

  def load_sparse(path):
    raise error(f"crafted {exc} from {path}\nsecond line")

  monkeypatch.setattr(rda_optax, "load_sparse", load_sparse)
  f = tmp_path / "m.rdasparse"
  f.write_bytes(b"crafted")
  code, out, err = _main(["evaluate", f, "--run", pf[0]])
  assert code == 2 and not out
  _one_line(err, f"crafted {exc} from {f}", "rda-train evaluate: error:")


# --- 3. methods that prune when --epochs end need an --asr-epochs epoch ----------

@pytest.mark.parametrize("args,name", [
    (["--method", "prune-finetune", "--target-sparsity", "0.9"],
     "prune-finetune"),
    (["--method", "net-slim", "--target-flops", "0.5"], "net-slim"),
    (["--method", "net-slim", "--prune-channels", "0.5"], "net-slim"),
    (["--compare", "rda,prune-finetune"], "prune-finetune"),
])
def test_pruning_at_the_boundary_without_asr_epochs_is_refused(
    tmp_path, args, name):
  out = tmp_path / "runs"
  code, _, err = _main(["--out", out, *SMALL, "--epochs", "1",
                        "--asr-epochs", "0", *args])
  assert code == 2
  _one_line(err, f"--method {name} ", "rda-train: error:")
  assert "--asr-epochs >= 1" in err
  assert not out.exists()


def test_gmp_and_rda_still_run_without_asr_epochs():
  from train import checks  # pylint: disable=g-import-not-at-top
  for flags in ({"method": "gmp", "target_sparsity": 0.9},
                {"method": "rda", "target_sparsity": 0.9}, {"method": "rda"}):
    cfg = checks.build(None, None, dict(flags, epochs=1, asr_epochs=0))
    assert cfg.asr_epochs == 0


# --- 4. --target-flops-from: the same model and data, a run that removed channels

@pytest.mark.parametrize("change,needle", [
    (dict(model="resnet18"), "trained model 'resnet18', this run model "
     "'small_cnn'; its FLOPs ratio is no target for this run"),
    (dict(dataset="cifar10"), "trained dataset 'cifar10'"),
    ({}, "trained 'prune-finetune' without --structure"),
    (dict(method="rda", structure="none"), "trained 'rda' without --structure"),
])
def test_target_flops_from_an_incomparable_run_is_refused(pf, tmp_path,
                                                          change, needle):
  source = _copy(pf[0], tmp_path / "src", **change)
  out = tmp_path / "runs"
  code, _, err = _main(["--out", out, *SMALL, "--epochs", "1",
                        "--asr-epochs", "1", "--method", "net-slim",
                        "--target-flops-from", source])
  assert code == 2
  _one_line(err, f"--target-flops-from: {source} {needle}",
            "rda-train: error:")
  assert not out.exists()


@pytest.mark.parametrize("change", [dict(method="net-slim"),
                                    dict(method="rda", structure="channel")])
def test_target_flops_from_a_channel_run_of_the_same_model_is_taken(
    pf, tmp_path, change):
  from train import checks, preflight  # pylint: disable=g-import-not-at-top
  source = _copy(pf[0], tmp_path / "src", **change)
  cfg = checks.build("digits-demo", None, dict(
      method="net-slim", target_flops_from=str(source), asr_epochs=1))
  preflight.check(cfg, [])


# --- 5. the preset in force is visible; --init-scale's help says what it does --

def test_the_first_line_and_config_name_the_preset(pf):
  run_dir, err = pf
  first = [l for l in err.splitlines() if l.startswith("[prune-finetune]")]
  assert len(first) == 1 and ", preset: digits-demo: " in first[0], err
  assert json.loads((run_dir / "config.json").read_text())["preset"] == (
      "digits-demo")


def test_init_scale_help_matches_the_preset():
  from train import checks, methods  # pylint: disable=g-import-not-at-top
  helps = {a.dest: a.help for a in cli.parser()._actions}  # pylint: disable=protected-access
  assert "digits-demo: 2, for every method" in helps["init_scale"]
  assert "--model small_cnn" in cli.parser().description
  for name in methods.names():
    flags = dict(method=name)
    if methods.get(name).needs_target:
      flags["target_sparsity"] = 0.5
    if name == "net-slim":
      flags["target_flops"] = 0.5
    demo = checks.build("digits-demo", None, flags)
    assert methods.init_scale(name, demo) == 2.0, name
    plain = checks.build(None, None, flags)
    assert methods.init_scale(name, plain) == (2.0 if name == "rda" else None)


# --- 6. --compare "" -------------------------------------------------------------

@pytest.mark.parametrize("value", ["", " "])
def test_empty_compare_is_refused(tmp_path, value):
  out = tmp_path / "runs"
  code, _, err = _main(["--out", out, *SMALL, "--compare", value])
  assert code == 2
  _one_line(err, "--compare: no method given", "rda-train: error:")
  assert not out.exists()


# --- 6. the data's warnings: one clean line each ------------------------------------

def test_data_warnings_are_one_line_each_on_stderr(tmp_path):
  """Run as a command (Python's warning machinery as a user sees it, not
  pytest's capture): 40 classes of one image each, so a validation split of
  4 images takes 4 classes whole, and one unreadable file."""
  data = tmp_path / "data"
  rng = np.random.default_rng(0)
  for c in range(40):
    (data / f"c{c:02d}").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (8, 8), np.uint8)).save(
        data / f"c{c:02d}" / "a.png")
  (data / "c00" / "x.png").write_text("junk")
  r = subprocess.run(
      [sys.executable, "-m", "train", "--out", tmp_path / "runs",
       "--run-name", "w", "--dataset", "folder", "--data-dir", data,
       "--cache-dir", tmp_path / "cache", "--skip-bad-images",
       "--method", "sgd", "--epochs", "1", "--asr-epochs", "0",
       "--val-fraction", "0.1", "--batch-size", "8", "--progress", "none"],
      env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  warned = [l for l in lines if l.startswith("rda-train: warning:")]
  assert len(warned) == 2, r.stderr
  assert "skipped 1 unreadable image file(s), the first is c00/x.png" in (
      warned[0] + warned[1])
  assert sum("4 of the 40 classes have all their images in the validation "
             "split (val_fraction 0.1)" in l for l in warned) == 1, r.stderr
  # Nothing of Python's own format: no file:line, category or source line.
  assert not any("Warning" in l or "warnings.warn" in l or ".py:" in l
                 for l in lines), r.stderr
  assert any(l.startswith("[sgd] ") and ", preset: none: " in l
             for l in lines), r.stderr
  assert json.loads((tmp_path / "runs" / "w" / "config.json").read_text())[
      "preset"] is None


def test_no_class_warning_when_every_class_trains():
  import warnings  # pylint: disable=g-import-not-at-top
  from train import data  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter("error", data.DataWarning)
    splits = data.load("digits", val_fraction=0.1, seed=0, progress=False)
  assert set(splits.train.labels.tolist()) == set(range(10))


def test_export_of_a_value_bfloat16_cannot_hold_is_one_line(tmp_path,
                                                            monkeypatch):
  # The library refuses a finite value that bfloat16 would turn into inf;
  # export says so in one line, exit 2, and writes nothing.
  from train import export
  huge = {"params": {"w": np.array([1.0, 3.4e38, 0.0], np.float32)}}
  monkeypatch.setattr(export, "final_variables", lambda run_dir: huge)
  run = tmp_path / "run"
  run.mkdir()
  with pytest.raises(export.UsageError, match=r"^--values bfloat16: .*"
                     r"beyond bfloat16's range"):
    export.export(run, values="bfloat16")
  assert list(run.iterdir()) == []
