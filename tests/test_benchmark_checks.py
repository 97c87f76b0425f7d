"""benchmarks/goals.py's dense reference over seeds, and frontier.py's
refusal to reuse a run directory trained with another configuration."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from train import methods
from train import checks
from train import config as config_lib

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
  spec = importlib.util.spec_from_file_location(
      name, ROOT / "benchmarks" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


goals, frontier = _load("goals"), _load("frontier")


def _run(run, method, top1, sparsity, budget=100, seed=0):
  return dict(run=run, method=method, model="resnet18", budget=budget,
              top1=top1, sparsity=sparsity, split="val", seed=seed)


def test_goals_dense_reference_over_seeds():
  """Three dense seeds (91.0, 92.0, 93.5): a sparse run of another seed is
  set against their mean, 92.17, whichever is listed first; a run of seed 1
  against seed 1's dense run; a run of another budget does not count."""
  for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
    dense = [_run(f"sgd-seed{i}", "sgd", t, 0.0, seed=i)
             for i, t in enumerate((91.0, 92.0, 93.5))]
    runs = goals.check([_run("rda", "rda", 91.5, 0.96, seed=7),
                        _run("rda-1", "rda", 91.5, 0.96, seed=1),
                        _run("sgd-other", "sgd", 50.0, 0.0, budget=40, seed=7),
                        *[dense[i] for i in order]])
    assert runs[0]["dense"] == pytest.approx((91.0 + 92.0 + 93.5) / 3)
    assert runs[0]["gap"] == pytest.approx(92.1667 - 91.5, abs=1e-3)
    assert runs[0]["goal1"] == "yes"  # issue 17 numbering
    assert runs[1]["dense"] == 92.0


def test_goals_repeats_of_one_seed_count_as_their_mean():
  runs = goals.check([_run("rda", "rda", 91.5, 0.96),
                      _run("sgd-a", "sgd", 91.0, 0.0),
                      _run("sgd-b", "sgd", 93.0, 0.0)])
  assert runs[0]["dense"] == pytest.approx(92.0)


def _fake_run(runs, name, **fields):
  """A finished run directory whose config.json is what rda-train writes
  for the digits-demo preset with ``fields``."""
  flags = {"progress": "none", "out": str(runs), "run_name": name, **fields}
  cfg = checks.build("digits-demo", None, flags)
  d = runs / name
  d.mkdir(parents=True)
  (d / "config.json").write_text(json.dumps(
      dict(dataclasses.asdict(cfg), compare=None, target_sparsity=None)))
  (d / "summary.json").write_text(json.dumps(
      dict(test_top1=90.0, val_top1=91.0, sparsity=0.5)))
  return d


def test_frontier_reuses_only_runs_of_the_same_configuration(tmp_path, capsys):
  out = tmp_path / "f"
  runs = out / "runs"
  argv = ["--out", str(out), "--methods", "rda", "--values", "1e-3",
          "--seeds", "0", "--", "--epochs", "3", "--asr-epochs", "1"]
  d = _fake_run(runs, "rda-l11e-3-seed0", method="rda", seed=0, l1=1e-3,
                epochs=3, asr_epochs=1)
  # The same configuration: reused, nothing trained.
  assert frontier.main(argv) == 0
  assert "frontier: rda-" not in capsys.readouterr().err
  # A stale run (another --epochs, or another preset value): refused with
  # one line naming the option, before anything is trained or written.
  for key, stale in (("epochs", 30), ("gamma", 2.0)):
    cfg = json.loads((d / "config.json").read_text())
    good = cfg[key]
    cfg[key] = stale
    (d / "config.json").write_text(json.dumps(cfg))
    (out / "points.json").unlink(missing_ok=True)
    assert frontier.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--{key}: {stale!r} vs {good!r}" in err[0], err
    assert not (out / "points.json").exists()
    assert sorted(p.name for p in runs.iterdir()) == ["rda-l11e-3-seed0"]
    cfg[key] = good
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("methods", ["sgd", "rda,sgd"])
def test_train_throughput_runs_any_method_list(methods, tmp_path, capsys):
  """``--methods sgd`` alone used to raise KeyError computing rda / sgd; the
  ratio is given only when both were measured."""
  throughput = _load("train_throughput")
  out = tmp_path / "t.json"
  throughput.main(["--model", "small_cnn", "--batch-size", "8", "--steps",
                   "1", "--repeats", "1", "--image-shape", "8,8,1",
                   "--methods", methods, "--json", str(out)])
  res = json.loads(out.read_text())
  assert set(res["images_per_sec"]) == set(methods.split(","))
  assert all(v > 0 for v in res["images_per_sec"].values())
  printed = capsys.readouterr().out
  if "rda" in methods:
    ips = res["images_per_sec"]
    assert res["ratio"] == pytest.approx(ips["rda"] / ips["sgd"])
    assert "rda / sgd" in printed
  else:
    assert res["ratio"] is None and "rda / sgd" not in printed
