"""Slim widths that keep the FLOPs target (issue 25).

With a FLOPs target and ``--width-multiple k > 1`` the widths after the
switch are multiples of k (or the full width) fitted to the target
(``structure.fit_widths``), not the live counts rounded up: rounding up
kept dead channels and trained a model well over the target (CIFAR small
CNN, net-slim at 0.5: 0.79 of the dense FLOPs).

The unit tests take small_cnn on 8x8x1 inputs, where the FLOPs of widths
``(a, b, c)`` are ``576 a + 576 a b + 64 b c + 10 c``
(``models.flops_polynomial``; dense 1723648), and work the answers out by
hand. The run tests train net-slim and group RDA on digits (3 + 2 epochs,
batch 512: 2 steps an epoch) at the default multiple 16.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from train import cli, structure
from train.checkpoint import Checkpoints

from _runs import final_state, resume_from  # tests/_runs.py

SHAPE = (8, 8, 1)
WIDTHS = {"conv0": 32, "conv1": 64, "hidden": 128}
DENSE = 1723648


def _flops(a, b, c):
  return 576 * a + 576 * a * b + 64 * b * c + 10 * c


def _scores(live, value=1.0):
  """``live[unit]`` channels at ``value`` (or the given array), then zeros
  (dead)."""
  out = {}
  for u, w in WIDTHS.items():
    v = np.asarray(live[u] if not isinstance(live[u], int)
                   else np.full(live[u], value), float)
    out[u] = np.concatenate([v, np.zeros(w - v.size)])
  return out


def _fit(scores, k, target):
  return structure.fit_widths(models.get("small_cnn"), SHAPE, scores, k,
                              target)


def test_flops_formula_of_the_hand_answers():
  assert models.flops(models.get("small_cnn"), SHAPE) == DENSE == _flops(
      32, 64, 128)
  for w in ((32, 32, 112), (16, 48, 128), (16, 64, 128), (16, 16, 16)):
    assert models.flops(models.get("small_cnn", widths=w), SHAPE) == _flops(
        *w)


def test_rounds_down_then_adds_the_blocks_that_fit():
  """Live 32/40/100 at k = 16, F = 0.5 (861824 FLOPs). Rounded down:
  32/32/96, 805824. conv0 is full; conv1 to 48 adds 294912 + 98304 (over);
  hidden to 112 adds 64 x 32 x 16 + 160 = 32928 (838752, fits); hidden to
  128 another 32928 (871680, over). So 32/32/112: hidden rounded up over
  12 dead channels, 8 live conv1 channels cut; rounding the live counts up
  (32/48/112) would cost 0.72 of the dense FLOPs."""
  fit = _fit(_scores({"conv0": 32, "conv1": 40, "hidden": 100}), 16, 0.5)
  assert fit.counts == {"conv0": 32, "conv1": 32, "hidden": 112}
  assert fit.flops == _flops(32, 32, 112) <= 0.5 * DENSE
  assert fit.reached and fit.live_cut == 8
  assert fit.live == {"conv0": 32, "conv1": 40, "hidden": 100}
  assert fit.live_flops == _flops(32, 40, 100)


def test_the_start_is_the_live_counts_rounded_down():
  """Live 32/60/86 at k = 16, F = 0.7 (1206553.6 FLOPs). Rounded down,
  32/48/80 costs 1149728; conv1 to 64 adds 294912 + 81920 (over), hidden
  to 96 adds 49312 for its 6 live channels (1199040, fits): 32/48/96 keeps
  166 live channels at 0.696. Rounding up first (32/64/96, 1592256) and
  cutting the least score per FLOP saved would drop conv0's 16 channels
  (599040 saved) and end at 16/64/96: 162 channels at 0.576."""
  fit = _fit(_scores({"conv0": 32, "conv1": 60, "hidden": 86}), 16, 0.7)
  assert fit.counts == {"conv0": 32, "conv1": 48, "hidden": 96}
  assert fit.flops == _flops(32, 48, 96) == 1199040
  assert fit.live_cut == 12


def test_the_block_with_the_most_score_per_flop_comes_back():
  """Live 20/60/128 at k = 16, F = 0.8: from 16/48/128 (846080) either
  conv0 to 32 (4 live channels for 451584 FLOPs) or conv1 to 64 (12 for
  278528) fits, not both. At equal scores conv1's block is worth more per
  FLOP; with conv0's channels at score 4 too (16 / 451584 < 12 / 278528,
  though 16 > 12: per FLOP, not the larger block score); with them at
  score 100, conv0's (400 / 451584 > 12 / 278528)."""
  live = {"conv0": 20, "conv1": 60, "hidden": 128}
  fit = _fit(_scores(live), 16, 0.8)
  assert fit.counts == {"conv0": 16, "conv1": 64, "hidden": 128}
  assert fit.flops == _flops(16, 64, 128)
  live["conv0"] = np.full(20, 4.0)
  assert _fit(_scores(live), 16, 0.8).counts == fit.counts
  live["conv0"] = np.full(20, 100.0)
  fit = _fit(_scores(live), 16, 0.8)
  assert fit.counts == {"conv0": 32, "conv1": 48, "hidden": 128}
  assert fit.flops == _flops(32, 48, 128) <= 0.8 * DENSE


def test_over_the_target_cuts_the_cheapest_score_per_flop_saved():
  """Everything live (a grouped run that has not reached its target at
  the switch), F = 0.5. Dropping 16 channels saves 599040 FLOPs in conv0,
  425984 in conv1, 65696 in hidden: at equal scores conv0 goes first
  (16/64/128, 1124608, still over), then conv1 (278528 saved against
  hidden's 65696): 16/48/128, 846080. The same with hidden's channels at
  half the score: a hidden block loses the least score (8), but per FLOP
  saved the most (8 / 65696 against 16 / 599040 and 16 / 278528)."""
  fit = _fit(_scores({u: w for u, w in WIDTHS.items()}), 16, 0.5)
  assert fit.counts == {"conv0": 16, "conv1": 48, "hidden": 128}
  assert fit.flops == _flops(16, 48, 128) <= 0.5 * DENSE
  assert fit.live_cut == 32
  half = _scores({"conv0": 32, "conv1": 64, "hidden": np.full(128, 0.5)})
  assert _fit(half, 16, 0.5).counts == fit.counts


def test_an_unreachable_target_leaves_every_unit_at_k():
  fit = _fit(_scores({u: w for u, w in WIDTHS.items()}), 16, 0.01)
  assert fit.counts == {"conv0": 16, "conv1": 16, "hidden": 16}
  assert not fit.reached and fit.flops == _flops(16, 16, 16)


def test_a_dead_unit_stays_at_k_and_the_full_width_is_allowed():
  """A whole dead layer keeps k (zero) channels, never more (no live
  channel to add); k = 48 allows 48 or the full width 64 in conv1."""
  fit = _fit(_scores({"conv0": 32, "conv1": 0, "hidden": 128}), 16, 1.0)
  assert fit.counts == {"conv0": 32, "conv1": 16, "hidden": 128}
  fit = _fit(_scores({"conv0": 32, "conv1": 50, "hidden": 128}), 48, 1.0)
  assert fit.counts["conv1"] == 64


def _random_variables(seed=0):
  model = models.get("small_cnn")
  v = jax.device_get(models.init(model, jax.random.key(seed), SHAPE))
  rng = np.random.default_rng(seed)
  v = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), v)
  v["batch_stats"] = jax.tree_util.tree_map_with_path(
      lambda p, x: np.abs(x) + 0.5 if p[-1].key == "var" else x,
      v["batch_stats"])
  return model, v


@pytest.mark.parametrize("method", ["net-slim", "rda"])
def test_fit_keeps_the_top_scored_channels_and_slims_exactly(method):
  """fit_to_flops zeroes whole groups beyond the kept channels: slimming
  with the multiple gives exactly the fitted widths, the kept channels are
  each unit's top-scored ones (|scale| for net-slim, the group's l2 norm
  for the grouped methods), and the slim logits are the masked dense
  model's."""
  model, v = _random_variables()
  units = models.channel_units(model)
  scores = structure.channel_scores(v["params"], units, method)
  params, fit, line = structure.fit_to_flops(model, v["params"], SHAPE,
                                             method, 16, 0.5)
  assert fit.reached and fit.flops <= 0.5 * DENSE
  assert f"the rounding cut {fit.live_cut} live channels" in line
  masked = {"params": params, "batch_stats": v["batch_stats"]}
  small, sv = models.slim(model, masked, multiple=16)
  assert small.widths == tuple(fit.counts[u.key] for u in units)
  assert all(w % 16 == 0 for w in small.widths)
  assert models.flops(small, SHAPE) == fit.flops
  after = structure.channel_scores(params, units, method)
  for u in units:
    kept = np.flatnonzero(after[u.key] > 0)
    np.testing.assert_array_equal(kept, fit.keep[u.key])
    worst_kept = scores[u.key][kept].min()
    assert np.all(np.delete(scores[u.key], kept) <= worst_kept)
    np.testing.assert_array_equal(after[u.key][kept], scores[u.key][kept])
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, *SHAPE)),
                  jnp.float32)
  want = np.asarray(model.apply(masked, x))
  # Float32 summation order only (as tests/test_slim.py bounds it).
  np.testing.assert_allclose(small.apply(sv, x), want, rtol=0,
                             atol=1e-4 * np.abs(want).max())


def test_scores_follow_the_method():
  model, v = _random_variables()
  units = models.channel_units(model)
  p = v["params"]
  p["bn1"]["scale"][5] = p["bn1"]["bias"][5] = 0  # dead: scores 0
  ns = structure.channel_scores(p, units, "net-slim")
  np.testing.assert_allclose(ns["conv1"], np.abs(p["bn1"]["scale"]))
  g = structure.channel_scores(p, units, "rda")
  want = np.sqrt(np.sum(np.square(p["conv1"]["kernel"].astype(float)),
                        axis=(0, 1, 2)) + np.square(p["bn1"]["scale"])
                 + np.square(p["bn1"]["bias"].astype(float)))
  want[5] = 0
  np.testing.assert_allclose(g["conv1"], want)
  assert ns["conv1"][5] == 0


def test_no_target_or_multiple_one_keeps_the_old_widths():
  from train.config import Config
  assert structure.width_target(Config(method="net-slim", target_flops=0.5,
                                       width_multiple=1), "net-slim",
                                0.5) is None
  assert structure.width_target(Config(method="net-slim",
                                       prune_channels=0.5), "net-slim",
                                None) is None
  assert structure.width_target(Config(method="rda", structure="channel"),
                                "rda", None) is None
  assert structure.width_target(Config(method="net-slim", target_flops=0.5),
                                "net-slim", 0.5) == 0.5
  assert structure.width_target(
      Config(method="rda", structure="channel", target_flops=0.4), "rda",
      None) == 0.4


def test_slim_latency_times_given_widths(capsys):
  """benchmarks/slim_latency.py --widths: a slim model at exactly those
  widths beside the dense one, its logits the masked dense model's."""
  from benchmarks import slim_latency  # pylint: disable=g-import-not-at-top
  assert slim_latency.main(["--model", "small_cnn", "--widths", "16/48/128",
                            "--fractions", "0.5", "--side", "8", "--repeats",
                            "1", "--batch-sizes", "2"]) == 0
  rows = {l.split()[0]: l.split() for l in capsys.readouterr().out
          .splitlines() if l.split()}
  row = rows["16/48/128"]
  assert row[-1] == "16/48/128"
  assert float(row[row.index("widths") - 1]) < 1e-4  # max|dlogit|
  assert float(row[4]) == pytest.approx(
      models.flops(models.get("small_cnn"), (8, 8, 3)) / models.flops(
          models.get("small_cnn", widths=(16, 48, 128)), (8, 8, 3)), abs=0.01)
  assert slim_latency.main(["--model", "small_cnn", "--widths", "16/48"]) == 2


# --- runs --------------------------------------------------------------------

BASE = ["--epochs", "3", "--asr-epochs", "2", "--batch-size", "512",
        "--progress", "none", "--checkpoint-every", "1", "--target-flops",
        "0.5"]
RUNS = {"net-slim": ["--method", "net-slim"],
        "rda": ["--method", "rda", "--structure", "channel"],
        "net-slim-full": ["--method", "net-slim", "--no-slim-training"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("honest-widths")
  for name, extra in RUNS.items():
    assert cli.main(["--out", str(out), *BASE, "--run-name", name,
                     *extra]) == 0
  return {name: out / name for name in RUNS}


def _summary(run_dir):
  return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("name", sorted(RUNS))
def test_runs_end_at_multiples_of_16_within_the_target(runs, name):
  """Every run trains (or ships) widths at multiples of 16 whose FLOPs,
  the summary's flops row, are at most 0.5 of the dense model's."""
  s = _summary(runs[name])
  widths = s["slim"]["widths"]
  assert all(w % 16 == 0 for w in widths), widths
  assert s["slim"]["flops"] <= 0.5 * DENSE
  assert s["flops"]["slim"] == s["slim"]["flops"]
  assert s["flops"]["ratio"] == s["slim"]["flops"] / DENSE <= 0.5
  if name != "net-slim-full":
    rec = s["train_slim"]
    assert rec["widths_after"] == widths
    assert rec["flops_after"] == s["slim"]["flops"]
    assert rec["fit"]["reached"] and rec["fit"]["flops_goal"] == 0.5 * DENSE
    assert rec["fit"]["live_cut"] >= 0
    assert models.flops(models.get("small_cnn", widths=tuple(widths)),
                        SHAPE) == rec["flops_after"]


def test_full_width_fine_tuning_ships_the_same_widths(runs):
  """--no-slim-training: the cut channels stay 0 through the fine-tuning,
  so the slim model written at the end has the slim run's widths."""
  a, b = _summary(runs["net-slim"]), _summary(runs["net-slim-full"])
  assert a["slim"]["widths"] == b["slim"]["widths"]
  assert a["flops"] == b["flops"]


def _final(run_dir, epoch=5):
  return final_state(run_dir, epoch)


def _same_end(a, b):
  jax.tree.map(np.testing.assert_array_equal, _final(a), _final(b))
  assert _summary(a)["slim"] == _summary(b)["slim"]
  assert (json.loads((a / structure.TRAIN_SLIM).read_text())
          == json.loads((b / structure.TRAIN_SLIM).read_text()))


def test_resume_after_the_fitted_switch_is_bit_identical(runs, tmp_path):
  """Killed after the first slim epoch: the fitted widths come back from
  train_slim.json and the run ends bit for bit where it did."""
  full = runs["net-slim"]
  _same_end(full, resume_from(full, tmp_path / "cut", 4))


def test_resume_before_the_fitted_switch_is_bit_identical(runs, tmp_path,
                                                          monkeypatch):
  """Stopped after epoch 3 (the last before the switch; only two
  checkpoints are kept, so the fixture's run has none there): the resumed
  run fits the widths itself and ends bit for bit where the uninterrupted
  one did."""
  from train import run as run_lib
  real = run_lib.after_epoch

  def stop_after_3(epoch, *args, **kwargs):
    d = real(epoch, *args, **kwargs)
    return d._replace(save=True, stop="interrupted") if epoch == 3 else d

  monkeypatch.setattr(run_lib, "after_epoch", stop_after_3)
  out = tmp_path / "runs"
  assert cli.main(["--out", str(out), *BASE, "--run-name", "net-slim",
                   *RUNS["net-slim"]]) == 130
  monkeypatch.undo()
  cut = out / "net-slim"
  assert Checkpoints(cut).latest() == 3
  assert not (cut / structure.TRAIN_SLIM).exists()
  assert cli.main(["--resume", str(cut), "--progress", "none"]) == 0
  _same_end(runs["net-slim"], cut)
