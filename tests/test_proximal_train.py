"""python -m train --method rmda|grda|prox-adam: the proximal family in the
trainer, with rda's options (a target sparsity, --l1 with --debias-epochs,
channel groups, ASR), end to end on digits."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rda_optax
from train import checks, cli, methods, report, structure
from train._errors import UsageError
from train.config import Config

NEW = ("rmda", "grda", "prox-adam")
# 20 steps per epoch on digits at batch 64.
FAST = ["--epochs", "2", "--asr-epochs", "1", "--batch-size", "64",
        "--progress", "none"]
KERNELS = 3 * 3 * 1 * 32 + 3 * 3 * 32 * 64 + 4096 * 128 + 128 * 10


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
  out = tmp_path_factory.mktemp("prox")
  code = cli.main(["--out", str(out / "runs"), "--run-name", "p", *FAST,
                   "--compare", ",".join(NEW), "--target-sparsity", "0.9",
                   "--lr", "0.002"])
  assert code == 0
  return {m: report.read_metrics(out / "runs" / f"p-{m}") for m in NEW}


@pytest.mark.parametrize("method", NEW)
def test_reaches_the_target_at_the_switch_and_asr_keeps_it(compared, method):
  rows = compared[method]
  assert [r["phase"] for r in rows] == [method, method, "asr"]
  # One global lambda: the target's count of zeros over all kernels, up to
  # ties at the threshold (a handful of weights), then frozen by ASR.
  want = 0.9
  assert abs(rows[1]["sparsity"] - want) * KERNELS <= 8
  assert rows[2]["sparsity"] == rows[1]["sparsity"]
  assert rows[0]["target_sparsity"] < want == pytest.approx(
      rows[1]["target_sparsity"])
  assert rows[2]["target_sparsity"] == 0.0 and rows[2]["l1"] == 0.0
  assert rows[1]["l1"] > 0  # the chosen lambda_t, logged
  assert np.isfinite(rows[2]["val_top1"]) and rows[2]["val_top1"] > 50


def test_rmda_takes_the_prox_point_at_the_last_step_before_asr():
  spe = 10
  cfg = Config(epochs=3, asr_epochs=1, rmda_momentum=0.25)
  c = methods._rmda_momentum(cfg, spe)  # pylint: disable=protected-access
  assert [float(c(s)) for s in (0, 28, 29, 30, 39)] == [0.25, 0.25, 1, 1, 1]


def test_rmda_momentum_ramps_linearly_to_one_over_the_last_share():
  spe = 10  # 30 steps of --epochs; a ramp of a third: 10 steps, 19 -> 29
  cfg = Config(epochs=3, asr_epochs=1, rmda_momentum=0.25,
               rmda_momentum_ramp=1 / 3)
  c = methods._rmda_momentum(cfg, spe)  # pylint: disable=protected-access
  got = [float(c(s)) for s in (0, 19, 24, 28, 29, 35)]
  assert got == pytest.approx([0.25, 0.25, 0.625, 0.925, 1, 1])


def test_rmda_momentum_schedule_reaches_the_prox_points_zeros():
  # With c = 1 at a step, the params are the prox point: exact zeros where
  # the l1 threshold holds; with c < 1 they only decay towards 0. Step 0:
  # beta = alpha = 1, W~ = S_0.5(W_0 - g) = [[0, 0], [0, 2.5]].
  params = {"w": jnp.array([[1.0, -0.5], [0.25, 2.0]])}
  g = {"w": jnp.array([[0.5, -0.25], [0.5, -1.0]])}
  for c, zeros in ((0.5, 0), (lambda step: jnp.where(step >= 0, 1.0, 0.5),
                              3)):
    tx = rda_optax.rmda(1.0, 0.5, momentum=c)
    u, _ = tx.update(g, tx.init(params), params)
    w = optax.apply_updates(params, u)["w"]
    assert int(jnp.sum(w == 0)) == zeros


@pytest.mark.parametrize("method", NEW)
def test_l1_is_zero_in_the_debias_epochs(method):
  spe = 10
  cfg = Config(epochs=2, asr_epochs=2, l1=1e-3, debias_epochs=1)
  opt = methods.optimizer(cfg, method, spe)
  assert opt.l1(3 * spe - 1) == pytest.approx(1e-3)
  assert opt.l1(3 * spe) == 0.0
  assert opt.gamma is None and opt.lr(0) == pytest.approx(cfg.lr)


@pytest.mark.parametrize("method", NEW)
def test_channel_groups_and_the_registry(method):
  cfg = checks.build(None, None, {"method": method, "structure": "channel"})
  assert structure.uses_groups(cfg, method)
  opt = methods.optimizer(cfg, method, 10)
  assert opt.l1(0) == 0.0  # channel: the group term alone
  with pytest.raises(UsageError, match=f"--method {method}"):
    checks.build(None, None, {"method": method, "structure": "channel",
                              "target_sparsity": 0.9})
  with pytest.raises(UsageError, match="--l1 cannot be combined"):
    checks.build(None, None, {"method": method, "l1": 1e-3,
                              "target_sparsity": 0.9})
  cfg = checks.build(None, None, {"compare": f"{method},gmp",
                                  "target_sparsity": 0.9})
  assert cfg.methods == [method, "gmp"]


def test_their_own_options_are_checked():
  for flags in ({"rmda_momentum": 0.0}, {"rmda_momentum": 1.5},
                {"grda_mu": 0.0}):
    with pytest.raises(UsageError, match="must be"):
      checks.build(None, None, {"method": "rmda", **flags})


@pytest.mark.parametrize("method", NEW)
def test_asr_freezes_the_zeros_of_the_l1_path(method):
  # Step 0 (the l1 phase, a huge l1): every kernel entry is thresholded to
  # 0. Step 1 is ASR with l1 = 0 (debiased): without the freeze the
  # gradient would move them again.
  cfg = Config(epochs=1, asr_epochs=1, l1=1e4, debias_epochs=1, lr=0.1)
  tx = methods.optimizer(cfg, method, 1).tx
  params = {"kernel": jnp.array([[0.3, -0.2], [0.1, 0.4]]),
            "bias": jnp.array([0.1, -0.1])}
  g = {"kernel": jnp.array([[1.0, -2.0], [3.0, -4.0]]),
       "bias": jnp.array([1.0, 1.0])}
  state = tx.init(params)
  for step in range(2):
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
    assert np.all(np.asarray(params["kernel"]) == 0), (step, params)
  assert np.all(np.asarray(params["bias"]) != 0.1)  # not frozen: trained
