"""``python -m train export RUN_DIR --slim``: the slim network as a
``jax.export`` artifact that a program importing only jax and numpy runs,
with the run's test top-1."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import models
from train import cli, deploy, inputs
from train import export as export_lib
from _refusal import assert_refused  # tests/_refusal.py

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "deploy_example.py"

# Runs a script with the project and the libraries it builds on made
# unimportable: the editable install of rda_optax and the venv's flax would
# otherwise hide a loader that needs them.
BLOCKED = """
import importlib.abc, runpy, sys
BLOCKED = {"models", "train", "rda_optax", "flax", "optax"}
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
for m in sorted(BLOCKED):
  try:
    __import__(m)
  except ImportError:
    pass
  else:
    raise SystemExit("importable: " + m)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """Group RDA on digits, 4 + 1 epochs: 2.5e-3 leaves about 8 of the 128
  hidden channels and a model that has learned something (about 34% test
  top-1, chance is 10%), so wrong weights or normalization would show."""
  out = tmp_path_factory.mktemp("runs")
  code = cli.main(["--out", str(out), "--run-name", "c", "--method", "rda",
                   "--structure", "channel", "--group-l1", "2.5e-3",
                   "--epochs", "4", "--asr-epochs", "1", "--batch-size", "64",
                   "--progress", "none", "--checkpoint-every", "9"])
  assert code == 0
  return out / "c"


def _summary(run_dir):
  return json.loads((run_dir / "summary.json").read_text())


def _test_split(run_dir, path):
  cfg = export_lib.run_config(run_dir)
  test = inputs.load_data(cfg).test
  np.savez(path, images=test.images, labels=test.labels)
  return test


def _deploy(tmp_path, artifact, variables, images, batch):
  """The docs' loader, run from an empty directory in isolated mode with
  the project unimportable; returns (its line, the logits)."""
  work = tmp_path / f"deploy{batch}"
  work.mkdir()
  shutil.copy(EXAMPLE, work / "deploy_example.py")
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
  logits = work / "logits.npy"
  p = subprocess.run(
      [sys.executable, "-I", "-c", BLOCKED, "deploy_example.py",
       str(artifact), str(variables), str(images), "--batch", str(batch),
       "--logits", str(logits)],
      cwd=work, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  return p.stdout.strip(), np.load(logits)


def test_slim_artifact_reproduces_the_runs_test_top1_without_the_project(
    run_dir, tmp_path, capsys):
  s = _summary(run_dir)
  assert s["test_top1"] > 25  # learned: chance is 10%
  alive = s["channels_per_layer"]
  assert alive["bn_hidden"] < 128  # something to slim
  art = tmp_path / "m.jaxexport"
  assert cli.main(["export", str(run_dir), "--slim", "--out", str(art)]) == 0
  line = capsys.readouterr().out.strip()
  npz = tmp_path / "m.npz"
  widths = (32, 64, 16)  # bn_hidden's 8 alive, rounded up to the run's 16
  assert export_lib.run_config(run_dir).width_multiple == 16
  flops = models.flops(models.get("small_cnn", widths=widths), (8, 8, 1))
  assert line == (
      f"wrote {art} ({art.stat().st_size} bytes) and {npz} "
      f"({npz.stat().st_size} bytes): slim widths {widths}, {flops} FLOPs, "
      f"{100 * flops / s['flops']['dense']:.1f}% of the dense "
      f"{s['flops']['dense']}")
  exported = jax.export.deserialize(bytearray(art.read_bytes()))
  assert not isinstance(exported.in_avals[-1].shape[0], int)  # symbolic
  test = _test_split(run_dir, tmp_path / "test.npz")
  n = len(test.labels)
  # Batches of 64 end with a smaller one (360 = 5 x 64 + 40); 360 is one.
  assert n % 64
  out64, logits64 = _deploy(tmp_path, art, npz, tmp_path / "test.npz", 64)
  out_all, logits_all = _deploy(tmp_path, art, npz, tmp_path / "test.npz", n)
  correct = round(s["test_top1"] * n / 100)
  assert out64 == out_all == (f"top-1 {correct}/{n} = "
                              f"{100 * correct / n:.2f}%")
  assert s["slim"]["test_top1"] == s["test_top1"]
  # Certified, not hoped for: the run's dense model gives the same logits
  # up to float rounding (d), and every image's top-2 margin is wider than
  # 2 d, so no rounding of that size can change a prediction.
  dense = export_lib.final_variables(run_dir)
  cfg = export_lib.run_config(run_dir)
  mean, std = export_lib.normalization(cfg, inputs.load_data(cfg).train.images)
  ref = np.asarray(jax.jit(deploy.inference_fn(
      models.get("small_cnn"), jax.tree.structure(dense), mean, std,
      np.float32))(*jax.tree.leaves(dense), test.images))
  d = max(np.abs(logits64 - ref).max(), np.abs(logits_all - ref).max())
  assert d <= 1e-4 * np.abs(ref).max()
  top2 = np.sort(ref, axis=-1)[:, -2:]
  assert np.min(top2[:, 1] - top2[:, 0]) > 2 * d


def test_width_multiple_and_force(run_dir, tmp_path, capsys):
  """--width-multiple 1 keeps only the alive channels; the default is the
  run's own; the files are replaced only with --force."""
  art = tmp_path / "m.jaxexport"
  base = ["export", str(run_dir), "--slim", "--out", str(art)]
  assert cli.main(base + ["--width-multiple", "1"]) == 0
  alive = _summary(run_dir)["channels_per_layer"]
  widths = (alive["bn0"], alive["bn1"], alive["bn_hidden"])
  assert f"slim widths {widths}," in capsys.readouterr().out
  with np.load(tmp_path / "m.npz") as z:
    # NNNN/path keys: the path says what each argument is.
    by_path = {k.split("/", 1)[1]: z[k] for k in z.files}
  assert by_path["params/classifier/kernel"].shape == (widths[2], 10)
  assert by_path["params/hidden/kernel"].shape == (8 * 8 * 64, widths[2])
  first = art.read_bytes()
  assert cli.main(base) == 2
  assert art.read_bytes() == first
  assert cli.main(base + ["--force"]) == 0
  assert "slim widths (32, 64, 16)," in capsys.readouterr().out
  assert art.read_bytes() != first


@pytest.mark.parametrize("case", [
    "not_a_run", "no_checkpoints", "exists", "npz_exists", "npz_out",
    "no_parent", "values", "multiple_without_slim", "multiple_0"])
def test_export_slim_bad_input_one_line_exit_2_nothing_written(
    case, run_dir, tmp_path, capsys):
  art = tmp_path / "m.jaxexport"
  argv = ["export", str(run_dir), "--slim", "--out", str(art)]
  if case == "not_a_run":
    argv, needle = ["export", str(tmp_path), "--slim"], "config.json"
  elif case == "no_checkpoints":
    (tmp_path / "config.json").write_bytes(
        (run_dir / "config.json").read_bytes())
    argv, needle = ["export", str(tmp_path), "--slim"], "checkpoints"
  elif case == "exists":
    art.write_bytes(b"keep")
    needle = "--force"
  elif case == "npz_exists":
    (tmp_path / "m.npz").write_bytes(b"keep")
    needle = "m.npz already exists"
  elif case == "npz_out":
    argv[-1], needle = str(tmp_path / "m.npz"), ".npz"
  elif case == "no_parent":
    argv[-1], needle = str(tmp_path / "d" / "m.jaxexport"), "does not exist"
  elif case == "values":
    argv, needle = argv + ["--values", "bfloat16"], "--values"
  elif case == "multiple_without_slim":
    argv = ["export", str(run_dir), "--out", str(tmp_path / "m.rdasparse"),
            "--width-multiple", "8"]
    needle = "--slim"
  else:
    argv, needle = argv + ["--width-multiple", "0"], "--width-multiple"
  run_before = sorted(p.name for p in run_dir.iterdir())
  assert_refused(argv, needle, tmp_path, capsys)
  assert sorted(p.name for p in run_dir.iterdir()) == run_before
  if case in ("exists", "npz_exists"):
    assert all(p.read_bytes() == b"keep" for p in tmp_path.iterdir()
               if p.suffix in (".jaxexport", ".npz"))
