"""The method registry and the run's decision after each epoch."""

import itertools

import pytest

from train import checks
from train import cli, methods, report
from train import config as config_lib
from train.run import Decision, after_epoch


def _decisions(total, every, bad, max_bad=10, interrupted_at=None):
  """The decisions of a whole run; ``bad[e]``: consecutive skipped steps at
  the end of 1-based epoch e (0 if absent)."""
  out, deferred = [], False
  for epoch in range(1, total + 1):
    d = after_epoch(epoch, total, every, bad.get(epoch, 0), max_bad,
                    epoch == interrupted_at, deferred)
    out.append(d)
    deferred = d.deferred
    if d.stop:
      break
  return out


def test_periodic_and_final_saves():
  ds = _decisions(total=5, every=2, bad={})
  assert [e for e, d in enumerate(ds, 1) if d.save] == [2, 4, 5]
  assert not any(d.stop or d.deferred for d in ds)


def test_a_due_save_waits_for_an_epoch_that_ends_on_an_applied_step():
  ds = _decisions(total=6, every=2, bad={2: 3, 3: 1})
  assert [e for e, d in enumerate(ds, 1) if d.save] == [4, 6]
  assert [d.deferred for d in ds] == [False, True, True, False, False, False]


def test_the_last_epoch_is_saved_even_after_skips():
  for every in (3, 10):  # the final save due as a periodic one, or not
    ds = _decisions(total=3, every=every, bad={3: 2})
    assert [d.save for d in ds] == [False, False, True]
    assert not ds[-1].deferred


def test_too_many_skips_stop_without_saving():
  ds = _decisions(total=5, every=1, bad={2: 4}, max_bad=4)
  assert ds[-1] == Decision(False, "diverged", False) and len(ds) == 2


def test_an_interrupt_saves_only_a_clean_epoch():
  assert _decisions(4, 10, {}, interrupted_at=2)[-1] == Decision(
      True, "interrupted", False)
  assert _decisions(4, 10, {2: 1}, interrupted_at=2)[-1] == Decision(
      False, "interrupted", False)


def test_after_epoch_never_saves_a_state_that_ends_in_skips_before_the_end():
  for total, every, epoch, bad, inter, deferred in itertools.product(
      (3, 5), (1, 2, 5), range(1, 6), (0, 1, 3), (False, True), (False, True)):
    if epoch > total:
      continue
    d = after_epoch(epoch, total, every, bad, 3, inter, deferred)
    if bad and epoch < total:
      assert not d.save
    if bad >= 3:
      assert d.stop == "diverged"


def test_every_method_builds_and_is_known_to_config_and_cli(capsys):
  with pytest.raises(SystemExit):
    cli.main(["--help"])
  # argparse wraps lines, at spaces and after hyphens.
  help_text = "".join(capsys.readouterr().out.split())
  cfg = config_lib.Config(epochs=2, asr_epochs=1)
  for name, m in methods.REGISTRY.items():
    assert f"{name}:{''.join(m.help.split())}" in help_text
    opt = methods.optimizer(cfg, name, 5, 0.5)
    assert opt.tx.init is not None
    assert methods.phase(name, 1, cfg) == m.phases[0]
    assert methods.phase(name, 2, cfg) == m.phases[1]
    flags = {"method": name}
    if m.needs_target or m.takes_target:
      flags["target_sparsity"] = 0.5
    if m.target_of is not None:  # net-slim's target is FLOPs
      flags = {"method": name, "target_flops": 0.5}
    assert checks.build(None, None, flags).method == name
  for name in methods.demo().split(","):
    assert name in methods.REGISTRY


def test_a_new_method_is_one_entry(monkeypatch):
  """Registered, it is valid for --method and --compare, and its target
  requirement is enforced up front."""
  monkeypatch.setitem(methods.REGISTRY, "toy", methods.Method(
      "toy", "a toy", methods.REGISTRY["sgd"].optimizer, ("a", "b"),
      needs_target=True))
  with pytest.raises(config_lib.UsageError, match="--method toy needs"):
    checks.build(None, None, {"method": "toy"})
  with pytest.raises(config_lib.UsageError, match="--compare: toy needs"):
    checks.build(None, None, {"compare": "sgd,toy"})
  assert checks.build(None, None, {"compare": "rda,toy"}).compare
  assert methods.init_scale("toy", config_lib.Config()) is None
  assert methods.init_scale("rda", config_lib.Config()) == 2.0
  assert methods.init_scale("rda", config_lib.Config(init_scale=5.0)) == 5.0


@pytest.mark.parametrize("args,needle", [
    (["--method", "gmp"], "--method gmp needs --target-sparsity"),
    (["--compare", "sgd,gmp"], "--compare: gmp needs"),
    (["--method", "gmp", "--target-sparsity", "0.5", "--gmp-end-epoch", "9"],
     "--gmp-end-epoch 9"),
    (["--method", "gmp", "--target-sparsity", "0.5", "--gmp-start-epoch", "2",
      "--gmp-end-epoch", "1"], "--gmp-start-epoch 2"),
    (["--gmp-every", "0"], "--gmp-every"),
    (["--sparsity-distribution", "random"], "--sparsity-distribution"),
    (["--rigl-alpha", "0"], "--rigl-alpha"),
    (["--rigl-alpha", "1.5"], "--rigl-alpha"),
    (["--rigl-delta-t", "0"], "--rigl-delta-t"),
    (["--method", "rigl", "--target-sparsity", "0.5",
      "--sparsity-distribution", "global"], "--method rigl"),
    (["--rigl-t-end-fraction", "0"], "--rigl-t-end-fraction"),
    (["--rigl-t-end-fraction", "nan"], "--rigl-t-end-fraction"),
])
def test_bad_pruning_flags_one_line_exit_2(tmp_path, capsys, args, needle):
  code = cli.main(["--out", str(tmp_path / "runs"), "--epochs", "2",
                   "--asr-epochs", "1", *args])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
  assert not (tmp_path / "runs").exists()


def test_gmp_reaches_its_target_gradually(tmp_path):
  """One epoch of pruning (every 5 of its 20 steps, the cubic schedule),
  one at the final mask: every kernel at the target (uniform), the first
  epoch short of it."""
  out = tmp_path / "runs"
  assert cli.main(["--out", str(out), "--run-name", "g", "--method", "gmp",
                   "--target-sparsity", "0.8", "--epochs", "1",
                   "--asr-epochs", "1", "--batch-size", "64",
                   "--gmp-every", "5", "--sparsity-distribution", "uniform",
                   "--progress", "none"]) == 0
  rows = report.read_metrics(out / "g")
  assert [r["phase"] for r in rows] == ["gmp", "finetune"]
  assert 0.5 < rows[0]["sparsity"] < 0.8 - 1e-3
  # Each kernel keeps round(n (1 - 0.8)) weights.
  assert rows[1]["sparsity"] == pytest.approx(0.8, abs=1e-3)
  for s in rows[1]["sparsity_per_layer"].values():
    assert s == pytest.approx(0.8, abs=5e-3)


def test_rigl_is_sparse_from_the_start_and_keeps_its_target(tmp_path):
  """ERK budgets: the target over all kernels at once, from the first
  epoch on, while the mask moves (every 5 steps to 75% of 40)."""
  out = tmp_path / "runs"
  assert cli.main(["--out", str(out), "--run-name", "r", "--method", "rigl",
                   "--target-sparsity", "0.8", "--epochs", "1",
                   "--asr-epochs", "1", "--batch-size", "64",
                   "--rigl-delta-t", "5", "--progress", "none"]) == 0
  rows = report.read_metrics(out / "r")
  assert [r["phase"] for r in rows] == ["rigl", "rigl"]
  for r in rows:
    assert r["sparsity"] == pytest.approx(0.8, abs=1e-3)
  layers = rows[-1]["sparsity_per_layer"].values()
  assert max(layers) - min(layers) > 0.05  # ERK, not uniform
  assert rows[-1]["val_top1"] > 50.0  # chance is 10%
