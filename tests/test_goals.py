"""benchmarks/goals.py: gap to dense, goals, baselines at equal sparsity, speed.

The device script that ends with it: tests/test_gpu_script.py."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("goals", ROOT / "benchmarks" / "goals.py")
goals = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(goals)


def _run(run, method, top1, sparsity, model="resnet18", budget=100, **kw):
  return dict(run=run, method=method, model=model, budget=budget, top1=top1,
              sparsity=sparsity, split="val", **kw)


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
  assert by["rda-good"]["goal1"] == "yes"
  assert by["rda-good"]["prune_ft"] == 89.0 and by["rda-good"]["goal2"] == "yes"
  assert by["rda-dense-ish"]["goal1"] == "no"
  assert by["rda-far"]["gap"] == pytest.approx(3.2) and by["rda-far"]["goal1"] == "no"
  # prune-finetune at another sparsity is no comparison.
  assert "goal2" not in by["rda-far"] and "goal2" not in by["rda-dense-ish"]
  assert "gap" not in by["sgd"]
  # Every sparse method gets its gap to dense; only l1 runs get goal 2.
  assert by["pft"]["gap"] == pytest.approx(2.2) and by["pft"]["goal1"] == "no"
  assert "goal2" not in by["pft"]


def test_dense_top1_is_the_fallback_only():
  alone = goals.check([_run("rda", "rda", 90.0, 0.97)], dense_top1=91.34)
  assert alone[0]["gap"] == pytest.approx(1.34) and alone[0]["goal1"] == "no"
  with_sgd = goals.check([_run("rda", "rda", 90.0, 0.97), _run("s", "sgd", 90.5, 0)],
                         dense_top1=99.0)
  assert with_sgd[0]["gap"] == pytest.approx(0.5) and with_sgd[0]["goal1"] == "yes"
  # Beaten by prune-finetune: goal 2 says so.
  lost = goals.check([_run("rda", "rda", 88.0, 0.97),
                      _run("p", "prune-finetune", 88.5, 0.9701)])
  assert lost[0]["goal2"] == "no" and "gap" not in lost[0]


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


def test_rda_against_gmp_and_rigl_of_its_seed_at_its_sparsity():
  runs = goals.check([
      _run("rda0", "rda", 90.0, 0.970, seed=0),
      _run("gmp0", "gmp", 89.5, 0.9702, seed=0),
      _run("rigl0", "rigl", 90.0, 0.9699, seed=0),   # a tie is "at or above"
      _run("rigl-other", "rigl", 95.0, 0.80, seed=0),  # another sparsity
      _run("sgd0", "sgd", 91.0, 0.0, seed=0),
      _run("rda1", "rda", 89.0, 0.9705, seed=1),
      _run("gmp1", "gmp", 89.8, 0.9705, seed=1),
      _run("sgd1", "sgd", 92.0, 0.0, seed=1),
      _run("rda2", "rda", 88.0, 0.9703, seed=2),      # no twin of seed 2
  ])
  by = {r["run"]: r for r in runs}
  r0, r1, r2 = by["rda0"], by["rda1"], by["rda2"]
  assert (r0["gmp"], r0["rigl"], r0["goal2"]) == (89.5, 90.0, "yes")
  assert (r1["gmp"], r1["goal2"]) == (89.8, "no") and "rigl" not in r1
  # Seed 1's GMP sits within 0.001 of seed 0's RDA, but seeds do not mix.
  assert "goal2" not in r2 and "gmp" not in r2
  # Dense: the same seed's, else the other seeds' mean.
  assert r0["dense"] == 91.0 and r1["dense"] == 92.0
  assert r2["dense"] == pytest.approx(91.5)
  # The baselines themselves are set against dense, not against RDA.
  assert by["gmp0"]["gap"] == pytest.approx(1.5) and "goal2" not in by["gmp0"]


def test_the_strongest_baseline_of_a_method_counts():
  # Two GMP runs at RDA's sparsity (ERK and global allocation), in either
  # order: RDA must beat the better one, and the column shows it.
  for order in (1, -1):
    runs = goals.check([
        _run("rda", "rda", 69.66, 0.9823, seed=0),
        *[_run("gmp-erk", "gmp", 68.12, 0.9823, seed=0),
          _run("gmp-global", "gmp", 72.96, 0.9823, seed=0)][::order],
        _run("sgd", "sgd", 79.14, 0.0, seed=0),
    ])
    r = next(r for r in runs if r["run"] == "rda")
    assert (r["gmp"], r["goal2"]) == (72.96, "no"), order


def test_channel_run_against_net_slim_at_its_flops():
  runs = goals.check([
      _run("ch", "rda", 90.0, 0.5, model="vgg16bn", flops=0.40),
      _run("slim", "net-slim", 90.5, 0.3, model="vgg16bn", flops=0.395),
      _run("slim-far", "net-slim", 80.0, 0.6, model="vgg16bn", flops=0.20),
  ])
  ch = runs[0]
  assert ch["net_slim"] == 90.5 and ch["goal2"] == "no"
  assert [c[0] for c in goals.columns(runs)][-3:] == ["flops", "net_slim", "goal2"]
  assert "flops" not in [c[0] for c in goals.columns([_run("r", "rda", 1, 0)])]


def _write_run(root, name, method, top1, sparsity, speeds, seed=0, rows=90):
  d = root / name
  d.mkdir(parents=True)
  (d / "config.json").write_text(json.dumps(dict(
      method=method, model="m", epochs=2, asr_epochs=1, seed=seed, batch_size=8)))
  (d / "summary.json").write_text(json.dumps(dict(
      val_top1=top1, sparsity=sparsity, train_images_per_device=rows)))
  (d / "metrics.jsonl").write_text("".join(
      json.dumps(dict(epoch=i + 1, images_per_sec=s)) + "\n"
      for i, s in enumerate(speeds)))


def test_speed_per_run_and_per_wave_from_the_timeline(tmp_path, capsys):
  _write_run(tmp_path, "a", "sgd", 90.0, 0.0, [10.0, 400.0, 420.0])
  _write_run(tmp_path, "b", "rda", 89.0, 0.9, [5.0, 300.0, 310.0, 290.0])
  _write_run(tmp_path, "c", "gmp", 88.0, 0.9, [7.0, 500.0, 500.0])
  (tmp_path / "timeline.tsv").write_text(
      "1\ta\t100.0\t110.0\t0\n1\tb\t101.0\t120.0\t0\n"
      "garbled line\n2\tc\t121.0\t130.0\t1\n")
  per_run, waves = goals.speed(
      [goals._load(tmp_path / n) for n in "abc"],
      goals.read_timeline(tmp_path / "timeline.tsv"))
  assert [(r["run"], r["speed"], r["images"]) for r in per_run] == [
      ("a", 410.0, 270), ("b", 300.0, 270), ("c", 500.0, 270)]
  w1, w2 = waves
  assert (w1["runs"], w1["at_once"], w1["speed"], w1["wall"]) == (2, 2, 710.0, 20.0)
  assert w1["overall"] == pytest.approx(540 / 20)
  assert (w2["runs"], w2["wall"]) == (1, 9.0) and per_run[2]["rc"] == 1
  assert goals.main([str(tmp_path), "--no-plots"]) == 0
  out = capsys.readouterr().out
  assert "total img/s (sum of medians)" in out and "710" in out
  assert "at most side by side" in (tmp_path / "goals.md").read_text()
  # Three runs of one wave, two at a time: at most 2 side by side.
  queued = [dict(wave="1", run=n, start=a, end=b, rc=0)
            for n, a, b in (("a", 0.0, 10.0), ("b", 1.0, 5.0), ("c", 5.0, 9.0))]
  assert goals.speed([], queued)[1][0]["at_once"] == 2
