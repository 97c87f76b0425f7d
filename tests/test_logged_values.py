"""What a run directory records: the per-epoch gamma/l1/lr of the schedules
(with --debias-epochs), images_per_sec, train top-5, the summary's
sparsity_all_params and val_top5; and resuming across the prune epoch of
prune-finetune and across the debias switch, bit-identical to a run that
was never interrupted.

Two tiny digits runs (batch 512: 2 steps per epoch) serve every test.
"""

import json
import shutil
import types

import jax
import numpy as np
import pytest

from train import cli, report
from train import run as run_lib
from train.checkpoint import Checkpoints

BASE = ["--batch-size", "512", "--progress", "none", "--checkpoint-every",
        "1", "--l1", "1e-3"]
RUNS = {
    # RDA, then ASR; the l1 schedule halves l1 at epoch 1, gamma doubles at
    # epoch 2, where the last (debias) epoch drops l1 to 0.
    "rda": ["--epochs", "1", "--asr-epochs", "2", "--debias-epochs", "1",
            "--l1-schedule", "0:1e-3,1:5e-4", "--gamma-schedule", "0:1,2:2"],
    "pf": ["--method", "prune-finetune", "--target-sparsity", "0.5",
           "--epochs", "1", "--asr-epochs", "1",
           "--lr-schedule", "0:0.05,1:0.02"],
}
SPE, BATCH = 1293 // 512, 512


class _Clock:
  """A clock for train.run alone that ticks 1 s per reading, so the time
  an epoch takes is a whole number of seconds (one reading on each side of
  the epoch: 1 s)."""

  def __init__(self):
    self.now = 0.0

  def time(self):
    self.now += 1.0
    return self.now


# What train.timing reports as compile time for each epoch: images_per_sec
# must leave it out of the epoch's 1 s.
COMPILE_S = 0.25


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("logged") / "runs"
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(run_lib, "time", types.SimpleNamespace(time=_Clock().time))
    mp.setattr(run_lib.timing, "take_compile_seconds", lambda: COMPILE_S)
    for name, args in RUNS.items():
      assert cli.main(["--out", str(out), "--run-name", name, *BASE,
                       *args]) == 0, name
  return out


def _metrics(d):
  return report.read_metrics(d)


def _params(d, epoch=None):
  ck = Checkpoints(d)
  tree = ck.restore_local(epoch)
  ck.close()
  return tree["params"]


def test_logged_schedules_per_epoch(runs):
  """Each epoch logs the value its steps used: the EPOCH:VALUE schedules
  (epochs counted from the start of the run, whatever the phase), and
  l1 = 0 in the debias epochs whatever --l1-schedule says."""
  rda = _metrics(runs / "rda")
  assert [r["l1"] for r in rda] == pytest.approx([1e-3, 5e-4, 0.0])
  assert [r["gamma"] for r in rda] == pytest.approx([1.0, 1.0, 2.0])
  assert [r["lr"] for r in rda] == [None] * 3
  assert [r["phase"] for r in rda] == ["rda", "asr", "asr"]
  pf = _metrics(runs / "pf")
  assert [r["lr"] for r in pf] == pytest.approx([0.05, 0.02])
  assert [(r["gamma"], r["l1"]) for r in pf] == [(None, None)] * 2


def test_logged_speed_top5_and_summary(runs):
  """images_per_sec is the images of the epoch (steps x batch) over its
  seconds less the compile seconds, which are logged beside it; train top-5 is logged beside top-1; the summary's val_top5 is
  the last epoch's, and sparsity_all_params is the zero fraction of every
  parameter (biases and BatchNorm included) of the final checkpoint."""
  for name in RUNS:
    d = runs / name
    rows = _metrics(d)
    for r in rows:
      assert r["compile_s"] == COMPILE_S, (name, r)
      assert r["images_per_sec"] == SPE * BATCH / (1 - COMPILE_S), (name, r)
      assert 0 < r["train_top1"] <= r["train_top5"] <= 100, (name, r)
    # An early epoch of a 10-class problem: top-5 is well above top-1.
    assert rows[0]["train_top5"] > rows[0]["train_top1"] + 5, rows[0]
    s = json.loads((d / "summary.json").read_text())
    assert s["val_top5"] == rows[-1]["val_top5"] >= rows[-1]["val_top1"]
    assert s["val_top1"] == rows[-1]["val_top1"]
    leaves = [np.asarray(l) for l in jax.tree.leaves(_params(d))]
    zeros = sum(int(np.sum(l == 0)) for l in leaves)
    total = sum(l.size for l in leaves)
    assert s["sparsity_all_params"] == pytest.approx(zeros / total, abs=1e-7)
    kernels = [l for l in leaves if l.ndim >= 2]
    ksp = sum(int(np.sum(l == 0)) for l in kernels) / sum(l.size for l in kernels)
    assert s["sparsity"] == pytest.approx(ksp, abs=1e-7)
    assert 0 < s["sparsity_all_params"] < s["sparsity"], (name, s)


@pytest.mark.parametrize("name,cut_at", [("pf", 1), ("rda", 2)])
def test_resume_across_prune_and_debias_is_bit_identical(runs, tmp_path,
                                                         name, cut_at):
  """Killed right after the last dense epoch of prune-finetune (pruning and
  the lr restart still to come), or right before the debias epoch of RDA
  (l1 about to drop to 0): the resumed run ends with the same parameters,
  bit for bit, and the same log."""
  full = runs / name
  cut = tmp_path / name
  shutil.copytree(full, cut)
  rows = _metrics(full)
  last = len(rows)
  for e in range(cut_at + 1, last + 1):
    shutil.rmtree(cut / "checkpoints" / str(e), ignore_errors=True)
  (cut / "summary.json").unlink()
  (cut / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows[:cut_at]))
  assert Checkpoints(cut).latest() == cut_at
  assert cli.main(["--resume", str(cut), "--progress", "none"]) == 0
  jax.tree.map(np.testing.assert_array_equal, _params(full, last),
               _params(cut, last))
  drop = ("images_per_sec", "compile_s")
  strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]
  assert strip(_metrics(cut)) == strip(rows)
