"""The method registry and the run's decision after each epoch."""

import itertools

import pytest

from train import cli, methods, optim
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
    opt = optim.build(cfg, name, 5)
    assert opt.tx.init is not None
    assert methods.phase(name, 1, cfg) == m.phases[0]
    assert methods.phase(name, 2, cfg) == m.phases[1]
    flags = {"method": name, "target_sparsity": 0.5}
    assert config_lib.build(None, None, flags).method == name
  for name in methods.demo().split(","):
    assert name in methods.REGISTRY


def test_a_new_method_is_one_entry(monkeypatch):
  """Registered, it is valid for --method and --compare, and its target
  requirement is enforced up front."""
  monkeypatch.setitem(methods.REGISTRY, "toy", methods.Method(
      "toy", "a toy", methods.REGISTRY["sgd"].optimizer, ("a", "b"),
      needs_target=True))
  with pytest.raises(config_lib.UsageError, match="--method toy needs"):
    config_lib.build(None, None, {"method": "toy"})
  with pytest.raises(config_lib.UsageError, match="--compare: toy needs"):
    config_lib.build(None, None, {"compare": "sgd,toy"})
  assert config_lib.build(None, None, {"compare": "rda,toy"}).compare
  assert methods.init_scale("toy", config_lib.Config()) is None
  assert methods.init_scale("rda", config_lib.Config()) == 2.0
  assert methods.init_scale("rda", config_lib.Config(init_scale=5.0)) == 5.0
