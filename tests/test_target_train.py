"""rda-train --method rda --target-sparsity: end to end on digits, and the
flag combinations it refuses."""

import json

import jax
import jax.numpy as jnp
import optax
import pytest

import rda_optax
from train import rundir
from train import methods
from train import cli, optim, report
from train.config import Config

# 20 steps per epoch on digits at batch 64.
FAST = ["--epochs", "1", "--asr-epochs", "1", "--batch-size", "64",
        "--progress", "none"]


def _zeros_needed(n, s):
  return n - int(round(n * (1.0 - s)))


def _sizes():
  # The small CNN's kernels on digits (8x8x1 inputs, 10 classes).
  return {"['conv0']['kernel']": 3 * 3 * 1 * 32,
          "['conv1']['kernel']": 3 * 3 * 32 * 64,
          "['hidden']['kernel']": 4096 * 128,
          "['classifier']['kernel']": 128 * 10}


def _zeros(row):
  return {k: round(row["sparsity_per_layer"][k] * n)
          for k, n in _sizes().items()}


def test_rda_reaches_the_target_per_layer_and_asr_keeps_it(tmp_path):
  """--target-sparsity-from another run, uniform: after the RDA epoch
  (exact select; the ramp ends halfway through it) each kernel has the
  target's count of zeros, up to ties at its lambda_t; ASR (lambda = 0,
  zeros frozen) keeps them; the logged l1 is the chosen lambda_t (0 in
  ASR), the logged target the schedule's."""
  other = tmp_path / "other"
  other.mkdir()
  (other / "summary.json").write_text(json.dumps({"sparsity": 0.9}))
  # A run of the same model and data (preflight.check_source_run).
  (other / "config.json").write_text(json.dumps(
      {"model": "small_cnn", "dataset": "digits", "data_dir": None,
       "image_size": None}))
  code = cli.main(["--out", str(tmp_path / "runs"), "--run-name", "u",
                   *FAST, "--method", "rda", "--target-sparsity-from",
                   str(other), "--sparsity-distribution", "uniform"])
  assert code == 0
  rda, asr = report.read_metrics(tmp_path / "runs" / "u")
  assert (rda["phase"], asr["phase"]) == ("rda", "asr")
  assert (rda["target_sparsity"], asr["target_sparsity"]) == (
      pytest.approx(0.9), 0.0)
  for name, z in _zeros(rda).items():
    k = _zeros_needed(_sizes()[name], 0.9)
    assert k <= z <= k + 2, (name, z, k)
  assert _zeros(asr) == _zeros(rda)
  assert rda["l1"] > 0 and asr["l1"] == 0.0
  s = json.loads((tmp_path / "runs" / "u" / "summary.json").read_text())
  assert s["target_sparsity"] == 0.9
  assert s["test_top1"] > 50.0  # chance is 10%


def test_cubic_ramp_then_target_then_zero_in_asr():
  cfg = Config(epochs=4, asr_epochs=2, target_ramp=0.5)
  s = optim.target_schedule(cfg, 0.8, 10)  # 40 RDA steps, ramp over 20
  vals = [float(s(t)) for t in range(60)]
  assert vals[0] == 0.0
  assert vals[10] == pytest.approx(0.8 * (1 - 0.5 ** 3))
  assert all(a <= b for a, b in zip(vals[:20], vals[1:21]))
  assert vals[20:40] == [pytest.approx(0.8)] * 20
  assert vals[40:] == [0.0] * 20


def test_threshold_samples_reach_rda():
  """Exact by default: one step at target 0.5 zeros exactly half of a
  1,000-entry kernel; --threshold-samples 64 estimates lambda_t from 64 of
  them, which misses that count (fixed gradients and sample positions)."""
  params = {"k": jnp.ones((40, 25))}
  grads = {"k": jax.random.normal(jax.random.key(0), (40, 25))}
  zeros = []
  for m in (None, 64):
    cfg = Config(epochs=1, asr_epochs=0, target_ramp=0.0, threshold_samples=m)
    tx = methods.optimizer(cfg, "rda", 10, 0.5).tx
    u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    zeros.append(int(jnp.sum(optax.apply_updates(params, u)["k"] == 0)))
  assert zeros[0] == 500 and zeros[1] != 500, zeros


@pytest.mark.parametrize("args,needle", [
    (["--target-sparsity", "0.9", "--l1", "1e-3"], "--l1 "),
    (["--target-sparsity", "0.9", "--l1-schedule", "0:1e-3"], "--l1-schedule"),
    (["--compare", "rda,gmp", "--target-sparsity", "0.9", "--l1", "1e-3"],
     "--l1 "),
    (["--method", "prox-sgd", "--target-sparsity", "0.9"], "prox-sgd"),
    (["--method", "sgd", "--target-sparsity-from", "/nonexistent"], "sgd"),
    (["--target-sparsity", "0.9", "--target-sparsity-from", "/x"],
     "give one"),
    (["--target-sparsity", "0.9", "--target-ramp", "1.5"], "--target-ramp"),
    (["--target-sparsity", "0.9", "--threshold-samples", "0"],
     "--threshold-samples"),
    (["--threshold-samples", "100"], "--threshold-samples"),
    (["--target-ramp", "0.2"], "--target-ramp"),
    (["--target-sparsity", "0.9", "--epochs", "0"], "--epochs >= 1"),
    (["--target-sparsity-from", "/nonexistent"], "/nonexistent"),
    (["--target-sparsity", "0.9", "--structure", "channel"], "--structure"),
])
def test_bad_target_flags_one_line_exit_2(tmp_path, capsys, args, needle):
  code = cli.main(["--out", str(tmp_path / "runs"), "--progress", "none",
                   *args])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1 and needle in err, err
  assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("fn,flag,summary,needle", [
    ("sparsity", "--target-sparsity-from", None, "does not exist"),
    ("sparsity", "--target-sparsity-from", "{not json", "no readable 'sparsity'"),
    ("sparsity", "--target-sparsity-from", {"flops": {}}, "no readable"),
    ("sparsity", "--target-sparsity-from", {"sparsity": 1.0}, "not in [0, 1)"),
    ("flops", "--target-flops-from", None, "does not exist"),
    ("flops", "--target-flops-from", {"flops": None}, "no readable flops ratio"),
    ("flops", "--target-flops-from", {"flops": {"ratio": 0}}, "not in (0, 1]"),
])
def test_a_source_runs_summary_is_read_or_refused_in_one_line(
    tmp_path, fn, flag, summary, needle):
  from train import config as config_lib
  from train import structure
  from train._errors import UsageError
  if summary is not None:
    (tmp_path / "summary.json").write_text(
        summary if isinstance(summary, str) else json.dumps(summary))
  read = {"sparsity": rundir.target_from_run,
          "flops": structure.flops_from_run}[fn]
  with pytest.raises(UsageError) as info:
    read(str(tmp_path))
  msg = str(info.value)
  assert msg.startswith(flag) and needle in msg and "\n" not in msg, msg


def test_a_source_runs_summary_values(tmp_path):
  from train import config as config_lib
  from train import structure
  (tmp_path / "summary.json").write_text(json.dumps(
      {"sparsity": 0.97, "flops": {"ratio": 0.4}}))
  assert rundir.target_from_run(str(tmp_path)) == 0.97
  assert structure.flops_from_run(str(tmp_path)) == 0.4


def test_target_log_reads_the_last_steps_lambda_and_target():
  # The logged target is the schedule at the step just taken (count - 1),
  # and lambda_t the one RDA's state chose there.
  sched = lambda step: 0.1 * (step + 1.0)
  tx = rda_optax.rda(1.0, None, target_sparsity=sched)
  params = {"w": jnp.arange(1.0, 11.0).reshape(2, 5)}
  state = tx.init(params)
  read = optim.target_log(sched)
  _, state = tx.update({"w": jnp.ones((2, 5))}, state, params)
  got = read(state)
  assert got["target_sparsity"] == pytest.approx(0.1)
  assert got["l1"] == float(state.lambda_t["w"])
  _, state = tx.update({"w": jnp.ones((2, 5))}, state, params)
  assert read(state)["target_sparsity"] == pytest.approx(0.2)
  assert read(()) == {}
