"""scripts/cifar_tables.py: the tables RESULTS.md shows, from run folders."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import cifar_tables  # noqa: E402  pylint: disable=wrong-import-position


def _run(folder: Path, name: str, accs: list[float], done: bool = True):
  d = folder / name
  d.mkdir(parents=True)
  (d / "config.json").write_text("{}")
  per = {"['conv0']['kernel']": 0.5}
  (d / "metrics.jsonl").write_text("".join(
      json.dumps(dict(epoch=i + 1, val_top1=a, sparsity=0.98,
                      sparsity_per_layer=per)) + "\n"
      for i, a in enumerate(accs)))
  if done:
    (d / "summary.json").write_text(json.dumps(
        dict(val_top1=accs[-1], sparsity=0.98, flops=dict(ratio=1.0))))


def test_seed_table_means_and_spreads_over_finished_seeds(tmp_path):
  _run(tmp_path, "gmp-lr0.2-s0", [60.0, 70.0])
  _run(tmp_path, "gmp-lr0.2-s1", [62.0, 74.0])
  _run(tmp_path, "gmp-lr0.2-s2", [61.0, 50.0], done=False)  # still running
  _run(tmp_path, "rmda-lr0.4-s0", [55.0, 69.0])
  _run(tmp_path, "rmda-lr0.4-s1", [57.0, 68.0])
  _run(tmp_path, "rda-g1-s0", [50.0, 65.0])  # one seed: no row
  runs = sorted(p for p in tmp_path.iterdir())
  lines = cifar_tables.seeds(runs).splitlines()[2:]
  assert lines == [
      "| gmp-lr0.2 | 0, 1 | 70.00 / 74.00 | 72.00 | 4.00 | 0.9800 |",
      "| rmda-lr0.4 | 0, 1 | 69.00 / 68.00 | 68.50 | 1.00 | 0.9800 |"]
  png = tmp_path / "curves.png"
  assert cifar_tables.main([str(tmp_path), "--epochs", "2",
                            "--plot", str(png)]) == 0
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_folder_is_one_line_and_exit_2(tmp_path):
  r = subprocess.run([sys.executable, str(ROOT / "scripts/cifar_tables.py"),
                      str(tmp_path / "nope")], capture_output=True, text=True)
  assert r.returncode == 2 and r.stdout == ""
  assert r.stderr.strip().count("\n") == 0 and "nope" in r.stderr


@pytest.mark.parametrize("name", ["gmp-lr0.2", "gmp-lr0.2-sx"])
def test_names_without_a_seed_suffix_are_not_grouped(tmp_path, name):
  _run(tmp_path, name, [60.0])
  assert cifar_tables.seeds([tmp_path / name]).count("\n") == 1
