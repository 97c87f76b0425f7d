"""benchmarks/goals.py and the device script it closes (scripts/gpu_issue5.sh)."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("goals", ROOT / "benchmarks" / "goals.py")
goals = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(goals)


def _run(run, method, top1, sparsity, model="resnet18", budget=100):
  return dict(run=run, method=method, model=model, budget=budget, top1=top1,
              sparsity=sparsity, split="val")


def test_gap_and_goals_against_peers_of_the_same_budget():
  runs = goals.check([
      _run("rda-good", "rda", 90.5, 0.96),
      _run("rda-dense-ish", "rda", 91.0, 0.90),      # within 1 point, not sparse
      _run("rda-far", "rda", 88.0, 0.97),            # sparse, 3.2 points behind
      _run("sgd", "sgd", 91.2, 0.0),
      _run("pft", "prune-finetune", 89.0, 0.9604),   # matches rda-good only
      _run("sgd-40", "sgd", 80.0, 0.0, budget=40),   # another budget: ignored
  ])
  by = {r["run"]: r for r in runs}
  assert by["rda-good"]["gap"] == pytest.approx(0.7)
  assert by["rda-good"]["goal2"] == "yes"
  assert by["rda-good"]["prune_ft"] == 89.0 and by["rda-good"]["goal3"] == "yes"
  assert by["rda-dense-ish"]["goal2"] == "no"
  assert by["rda-far"]["gap"] == pytest.approx(3.2) and by["rda-far"]["goal2"] == "no"
  # prune-finetune at another sparsity is no comparison.
  assert "goal3" not in by["rda-far"] and "goal3" not in by["rda-dense-ish"]
  assert "gap" not in by["sgd"] and "gap" not in by["pft"]


def test_dense_top1_is_the_fallback_only():
  alone = goals.check([_run("rda", "rda", 90.0, 0.97)], dense_top1=91.34)
  assert alone[0]["gap"] == pytest.approx(1.34) and alone[0]["goal2"] == "no"
  with_sgd = goals.check([_run("rda", "rda", 90.0, 0.97), _run("s", "sgd", 90.5, 0)],
                         dense_top1=99.0)
  assert with_sgd[0]["gap"] == pytest.approx(0.5) and with_sgd[0]["goal2"] == "yes"
  # Beaten by prune-finetune: goal 3 says so.
  lost = goals.check([_run("rda", "rda", 88.0, 0.97),
                      _run("p", "prune-finetune", 88.5, 0.9701)])
  assert lost[0]["goal3"] == "no" and "gap" not in lost[0]


def test_no_runs_is_one_line_and_exit_2(tmp_path, capsys):
  assert goals.main([str(tmp_path)]) == 2
  # Directories that are not finished rda-train runs are passed over.
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "config.json").write_text('{"name": "x"}')
  (tmp_path / "other" / "summary.json").write_text("[]")
  (tmp_path / "listy").mkdir()
  (tmp_path / "listy" / "config.json").write_text(
      '{"method": "rda", "model": "m", "epochs": 1, "asr_epochs": 1}')
  (tmp_path / "listy" / "summary.json").write_text("[]")
  (tmp_path / "half").mkdir()
  (tmp_path / "half" / "config.json").write_text("{}")
  assert goals.main([str(tmp_path / "missing")]) == 2
  assert goals.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 3 and all("no finished run" in line for line in err)


def _tiny_cifar(path: Path) -> Path:
  """A 2-class, 32x32 RGB tarball laid out class/image, like the CIFAR one."""
  from PIL import Image
  rng = np.random.default_rng(0)
  src = path / "src"
  for label, name in enumerate(("airplane", "cat")):
    (src / name).mkdir(parents=True)
    for i in range(300):  # 540 training images: one dense batch of 512
      px = rng.integers(0, 80, (32, 32, 3)) + np.array([160 * label, 40, 90])
      Image.fromarray(px.astype(np.uint8)).save(src / name / f"{i:03d}.jpg")
  tar = path / "train.tar.xz"
  with tarfile.open(tar, "w:xz") as archive:
    for name in ("airplane", "cat"):
      archive.add(src / name, arcname=name)
  return tar


def test_device_script_part_a_end_to_end(tmp_path):
  """PART=a with a small CNN and 1 + 1 epochs: the flags, the chaining of
  prune-finetune to the RDA run's sparsity, and the goals table."""
  runs = tmp_path / "runs"
  env = dict(os.environ, PART="a", MODEL="small_cnn", E1="1", E2="1",
             DEBIAS="1", DATA=str(_tiny_cifar(tmp_path)), RUNS=str(runs),
             PYTHON=sys.executable, PYTHONPATH=str(ROOT),
             RDA_OPTAX_CACHE=str(tmp_path / "cache"))
  done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_issue5.sh")],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "failed" not in done.stderr, done.stderr[-3000:]
  names = {"small_cnn-rda-debias1-2", "small_cnn-prune-ft-2", "small_cnn-sgd-2"}
  assert {p.name for p in runs.iterdir() if p.is_dir()} == names
  summary = {n: json.loads((runs / n / "summary.json").read_text()) for n in names}
  rda = summary["small_cnn-rda-debias1-2"]
  assert rda["sparsity"] > 0
  assert summary["small_cnn-prune-ft-2"]["sparsity"] == pytest.approx(
      rda["sparsity"], abs=goals._SAME_SPARSITY)
  config = json.loads((runs / "small_cnn-rda-debias1-2" / "config.json").read_text())
  assert (config["debias_epochs"], config["val_fraction"]) == (1, 0.1)
  table = (runs / "goals.md").read_text()
  row = next(line for line in table.splitlines() if "rda-debias1" in line)
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[-1] in ("yes", "no") and cells[-3] in ("yes", "no")
  assert (runs / "compare-small_cnn-2.png").stat().st_size > 0
  assert "rda-debias1" in done.stdout


def test_device_script_refuses_an_unknown_part(tmp_path):
  done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_issue5.sh")],
                        env=dict(os.environ, PART="z", RUNS=str(tmp_path)),
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == 2
  assert done.stderr.strip() == "gpu_issue5.sh: PART must be a, b or c, not 'z'"
