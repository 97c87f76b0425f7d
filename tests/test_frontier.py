"""benchmarks/frontier.py end to end on digits, 1 + 1 epochs."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("frontier", ROOT / "benchmarks" / "frontier.py")
frontier = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(frontier)


def _config(run_dir: Path) -> dict:
  return json.loads((run_dir / "config.json").read_text())


def test_frontier_prunes_to_rdas_sparsity_both_scopes_and_reuses_runs(tmp_path, capsys):
  out = tmp_path / "f"
  argv = ["--out", str(out), "--methods",
          "prune-finetune-global,rda,prune-finetune,rda-noasr",
          "--values", "1e-3", "--seeds", "0",
          "--", "--epochs", "1", "--asr-epochs", "1", "--debias-epochs", "1"]
  assert frontier.main(argv) == 0
  runs = out / "runs"
  assert _config(runs / "prune-finetune-l11e-3-seed0")["prune_scope"] == "layer"
  assert _config(runs / "prune-finetune-global-l11e-3-seed0")["prune_scope"] == "global"
  # rda-noasr folds the ASR epochs into the first phase, and drops the
  # debiasing that needs them.
  noasr = _config(runs / "rda-noasr-l11e-3-seed0")
  assert (noasr["method"], noasr["epochs"], noasr["asr_epochs"],
          noasr["debias_epochs"]) == ("rda", 2, 0, 0)
  assert _config(runs / "rda-l11e-3-seed0")["debias_epochs"] == 1
  points = {p["method"]: p for p in json.loads((out / "points.json").read_text())["points"]}
  assert set(points) == {"rda", "prune-finetune", "prune-finetune-global", "rda-noasr"}
  for method in ("prune-finetune", "prune-finetune-global"):
    # Listed first, yet run after rda: it needs rda's sparsity.
    assert points[method]["sparsity"] == pytest.approx(points["rda"]["sparsity"], abs=1e-3)
  assert "prune-finetune-global" in (out / "frontier.md").read_text()
  assert (out / "frontier.png").stat().st_size > 0
  capsys.readouterr()

  # A second call with the same runs trains nothing and gives the same table.
  before = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}
  assert frontier.main(argv) == 0
  assert "frontier:" not in capsys.readouterr().err
  assert {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")} == before
