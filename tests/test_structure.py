"""Channel sparsity in the trainer: --structure, net-slim, slim models."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
import rda_optax
from train import methods
from train import cli, structure
from train.config import Config

FAST = ["--batch-size", "64", "--progress", "none", "--checkpoint-every", "9"]


@pytest.mark.parametrize("args,needle", [
    (["--method", "sgd", "--structure", "channel"], "--structure channel"),
    (["--structure", "rows"], "--structure"),
    (["--group-l1", "1e-3"], "--group-l1"),
    (["--structure", "channel", "--group-l1", "0"], "--group-l1"),
    (["--structure", "channel", "--group-weighting", "flops"],
     "--group-weighting"),
    (["--group-weighting", "uniform"], "--group-weighting"),
    (["--method", "net-slim"], "net-slim"),
    (["--method", "net-slim", "--target-flops", "1.5"], "--target-flops"),
    (["--method", "net-slim", "--prune-channels", "1"], "--prune-channels"),
    (["--target-flops", "0.5"], "--target-flops"),
    (["--method", "net-slim", "--target-flops", "0.5", "--prune-channels",
      "0.5"], "one of"),
    (["--method", "net-slim", "--target-flops-from", "/nonexistent"],
     "/nonexistent"),
    (["--method", "net-slim", "--target-flops", "0.5", "--bn-l1", "-1"],
     "--bn-l1"),
])
def test_bad_structure_flags_one_line_exit_2(tmp_path, capsys, args, needle):
  code = cli.main(["--out", str(tmp_path / "runs"), *FAST, *args])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1 and needle in err, err
  assert not (tmp_path / "runs").exists()


def test_a_model_without_channel_groups_is_refused(tmp_path, capsys,
                                                   monkeypatch):
  # Every model of models/ has BatchNorms; one without would give no group.
  monkeypatch.setattr(structure, "_abstract_params", lambda name: {
      "classifier": {"kernel": np.zeros((4, 10)), "bias": np.zeros(10)}})
  code = cli.main(["--out", str(tmp_path / "runs"), *FAST,
                   "--structure", "channel"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and "no channel groups" in err and "--model" in err, err


@pytest.mark.parametrize("weighting", ["size", "uniform"])
def test_group_weighting_reaches_the_optimizer(weighting):
  """--group-weighting sets lambda_g of the trainer's rda: one step from
  the same state matches the library's rda with that weighting and no
  other."""
  p = _params()
  g = jax.tree.map(lambda x: 0.3 * jnp.cos(jnp.arange(x.size) + 1.0
                                          ).reshape(x.shape), p)
  cfg = Config(method="rda", structure="channel", group_l1=0.02,
               group_weighting=weighting, epochs=2, asr_epochs=1)
  tx = methods.optimizer(cfg, "rda", 10).tx
  got, _ = tx.update(g, tx.init(p), p)
  outs = {}
  for w in ("size", "uniform"):
    ref = rda_optax.rda(cfg.gamma, 0.0, groups=functools.partial(
        rda_optax.channel_groups, weighting=w), group_l1=0.02)
    outs[w], _ = ref.update(g, ref.init(p), p)
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(  # noqa: E731
      jax.tree.leaves(a), jax.tree.leaves(b)))
  other = "uniform" if weighting == "size" else "size"
  assert same(got, outs[weighting]) and not same(got, outs[other])


@pytest.mark.parametrize("weighting,default", [("size", 1.5e-3),
                                               ("uniform", 0.06)])
def test_default_group_l1_follows_the_weighting(weighting, default):
  """The documented defaults of --group-l1 (the uniform threshold is not
  scaled by sqrt(|g|), so its useful values are ~30x larger)."""
  cfg = Config(method="rda", structure="channel", group_weighting=weighting)
  assert structure.group_args(cfg, 10)["group_l1"] == default


def _params():
  """A conv + BatchNorm pair whose channel 0 is dead (its whole group 0)."""
  k = jax.random.normal(jax.random.key(0), (3, 3, 1, 4))
  p = {"conv0": {"kernel": k.at[..., 0].set(0.0)},
       "bn0": {"scale": jnp.ones(4).at[0].set(0.0),
               "bias": jnp.full(4, 0.1).at[0].set(0.0)},
       "classifier": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
  return p


@pytest.mark.parametrize("method,struct", [
    ("rda", "channel"), ("rda", "sparse-group"), ("prox-sgd", "channel"),
    ("net-slim", "none")])
def test_second_phase_keeps_dead_channels_dead_batchnorm_included(method,
                                                                 struct):
  """In the second phase (here from step 0) a dead channel's BatchNorm
  scale and bias get large gradients, which would revive its group (RDA
  rebuilds it from the average; SGD moves it), and must stay exactly 0;
  the live channels do move."""
  slim = method == "net-slim"
  cfg = Config(method=method, epochs=0, asr_epochs=1, structure=struct,
               l1=1e-3, group_l1=None if slim else 1e-3,
               target_flops=0.5 if slim else None, lr=0.1)
  tx = methods.optimizer(cfg, method, 10, None).tx
  params = _params()
  state = tx.init(params)
  grads = jax.tree.map(lambda x: jnp.full_like(x, -5.0), params)

  @jax.jit
  def step(params, state):
    u, state = tx.update(grads, state, params)
    return optax.apply_updates(params, u), state

  for _ in range(3):
    params, state = step(params, state)
  assert float(params["bn0"]["scale"][0]) == 0.0
  assert float(params["bn0"]["bias"][0]) == 0.0
  assert not np.any(np.asarray(params["conv0"]["kernel"][..., 0]))
  assert np.all(np.asarray(params["bn0"]["scale"][1:]) != 1.0)
  assert structure.channel_counts(params) == {"bn0": 3}


@pytest.fixture(scope="module")
def slim_runs(tmp_path_factory):
  """Group RDA and network slimming side by side on digits, 10 + 4 epochs
  (an epoch is 20 steps: the compiles dominate); net-slim to 70% of the
  dense FLOPs. group_l1 = 1.5e-3 removes some hidden channels and keeps the
  network healthy (about 90 of 128 remain, 99.7% test top-1, on the 2-core
  CPU); a larger value removes the whole layer (docs/RESULTS.md)."""
  out = tmp_path_factory.mktemp("structure")
  code = cli.main(["--out", str(out), *FAST, "--epochs", "6",
                   "--asr-epochs", "2", "--compare", "rda,net-slim",
                   "--structure", "channel", "--group-l1", "2e-3",
                   "--target-flops", "0.7", "--run-name", "s"])
  assert code == 0
  return {m: out / f"s-{m}" for m in ("rda", "net-slim")}


def _summary(run_dir):
  return json.loads((run_dir / "summary.json").read_text())


def _rows(run_dir):
  return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text()
          .splitlines()]


@pytest.mark.parametrize("method", ["rda", "net-slim"])
def test_slim_model_is_written_reloads_and_scores_the_same(slim_runs, method):
  """The slim model in the run directory has the dead channels cut out
  (its widths are the last row's alive channel counts), its FLOPs are the
  summary's, and its top-1 is the unslimmed model's. Equality of top-1 is
  certified, not hoped for: slimming changes logits by float32 rounding
  only (at most 1e-4 x the largest logit, tests/test_slim.py), and every
  test image's top-2 margin is checked to be wider than twice that."""
  from train import engine
  from train.data import load
  run_dir = slim_runs[method]
  s = _summary(run_dir)
  counts = _rows(run_dir)[-1]["channels_per_layer"]
  assert counts == s["channels_per_layer"]
  small, sv = structure.load_slim(run_dir)
  alive = tuple(max(1, counts[k]) for k in ("bn0", "bn1", "bn_hidden"))
  assert alive != (32, 64, 128)  # something was removed
  # The written widths: the alive counts rounded up to --width-multiple
  # (default 16), or the full width.
  assert s["slim"]["width_multiple"] == 16
  widths = tuple(min(-(-a // 16) * 16, full)
                 for a, full in zip(alive, (32, 64, 128)))
  assert tuple(small.widths) == widths == tuple(s["slim"]["widths"])
  assert sv["params"]["conv1"]["kernel"].shape == (3, 3, widths[0], widths[1])
  assert s["slim"]["params"] == models.param_count(sv["params"])
  # Fewer channels than a multiple removed from every layer leave the
  # written model at the dense widths (net-slim at 70% can).
  assert ((s["slim"]["params"] < s["slim"]["dense_params"])
          == (widths != (32, 64, 128)))
  assert s["slim"]["flops"] == models.flops(small, (8, 8, 1))
  # The summary's FLOPs ratio: with a FLOPs target (net-slim) the widths
  # were fitted to it at the switch, and it is the FLOPs of the model that
  # trains and ships; without one (rda with --group-l1), the alive
  # channels alone.
  assert s["flops"]["slim"] == models.flops(
      small if method == "net-slim" else models.get("small_cnn", widths=alive),
      (8, 8, 1))
  assert s["flops"]["dense"] == models.flops(models.get("small_cnn"),
                                             (8, 8, 1))
  splits = load("digits", progress=False)
  mean, std = engine.channel_stats(splits.train.images)
  x = engine.normalize(jnp.asarray(splits.test.images), mean, std,
                       jnp.float32)
  logits = np.asarray(jax.jit(small.apply)(sv, x))
  top2 = np.sort(logits, axis=-1)[:, -2:]
  assert np.min(top2[:, 1] - top2[:, 0]) > 2e-4 * np.abs(logits).max()
  assert s["slim"]["test_top1"] == s["test_top1"]
  assert s["slim"]["test_top1"] == pytest.approx(100 * np.mean(
      logits.argmax(-1) == splits.test.labels))
  assert s["slim"]["val_top1"] == s["val_top1"]


def test_group_rda_asr_keeps_dead_channels_dead(slim_runs):
  rows = _rows(slim_runs["rda"])
  assert [r["phase"] for r in rows] == ["rda"] * 6 + ["asr"] * 2
  for prev, row in zip(rows[5:], rows[6:]):
    for k, before in prev["channels_per_layer"].items():
      assert row["channels_per_layer"][k] <= before
  assert json.loads((slim_runs["rda"] / "config.json").read_text())[
      "structure"] == "channel"


def test_net_slim_hits_the_flops_target_within_one_channel(slim_runs):
  """Pruning stops at the first channel that brings FLOPs under 70%, so
  the live channels are at most one channel's FLOPs under the target. One
  channel costs at most its layer's share at the dense widths (FLOPs are
  bilinear in neighbouring widths, so narrower neighbours only lower it).
  The model that trains on is then fitted to multiples of 16 within the
  target (tests/test_honest_widths.py): the summary's ratio is at most
  0.7, not within one channel of it."""
  s = _summary(slim_runs["net-slim"])
  rows = _rows(slim_runs["net-slim"])
  assert [r["phase"] for r in rows] == ["dense"] * 6 + ["finetune"] * 2
  assert rows[5]["channels_per_layer"] == {"bn0": 32, "bn1": 64,
                                           "bn_hidden": 128}
  assert all(r["channels_per_layer"] == s["channels_per_layer"]
             for r in rows[6:])
  dense = models.flops(models.get("small_cnn"), (8, 8, 1))
  one = max(dense - models.flops(models.get("small_cnn", widths=w), (8, 8, 1))
            for w in ((31, 64, 128), (32, 63, 128), (32, 64, 127)))
  assert s["target_flops"] == 0.7
  live = s["train_slim"]["fit"]["live_flops"] / dense
  assert 0.7 - one / dense < live <= 0.7
  assert s["flops"]["ratio"] <= 0.7


def test_net_slim_target_comes_from_the_group_run():
  cfg = Config(method="net-slim", compare="rda,net-slim", structure="channel")
  got = structure.net_slim_target(cfg, [
      {"method": "rda", "flops": {"ratio": 0.61}}])
  assert got == 0.61
  assert structure.net_slim_target(
      Config(method="net-slim", target_flops=0.5), []) == 0.5
  assert structure.net_slim_target(
      Config(method="net-slim", prune_channels=0.5), []) is None


def test_prune_to_flops_removes_the_fewest_smallest_scale_channels():
  """The fewest units that reach the target: one fewer is above it; the
  ones removed have the smallest |scale| (each layer keeps one)."""
  model = models.get("small_cnn")
  v = models.init(model, jax.random.key(0), (8, 8, 1))
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.asarray(rng.normal(size=x.shape), jnp.float32)
      if p[-1].key == "scale" else x, v["params"])
  dense = models.flops(model, (8, 8, 1))
  pruned, k = structure.prune_to_flops(model, params, (8, 8, 1), 0.5)
  assert structure.slim_flops(model, pruned, (8, 8, 1)) <= 0.5 * dense
  units = structure.prune_units(params)
  fewer = structure.zero_units(params, units, k - 1)
  assert structure.slim_flops(model, fewer, (8, 8, 1)) > 0.5 * dense
  counts = structure.channel_counts(pruned)
  assert 32 + 64 + 128 - sum(counts.values()) == k
  removed = max(units.score[:k])
  for bn in ("bn0", "bn1", "bn_hidden"):
    alive = np.asarray(pruned[bn]["scale"]) != 0
    assert alive.any()
    assert np.all(np.abs(np.asarray(params[bn]["scale"]))[~alive] <= removed)
    assert not np.any(np.asarray(pruned[bn]["bias"])[~alive])


def test_each_run_of_a_compare_writes_a_config_that_resume_accepts():
  """A --compare shares one set of flags; each run directory's config.json
  keeps only its own method's structure options, so --resume validates it
  (--structure on sgd, or --target-flops on rda, would be refused)."""
  import dataclasses
  from train.checks import validate
  cfg = Config(compare="rda,net-slim,sgd", structure="channel",
               group_l1=2e-3, target_flops=0.6)
  for method, target in (("rda", None), ("net-slim", 0.6), ("sgd", None)):
    raw = dict(dataclasses.asdict(cfg), method=method, compare=None,
               target_sparsity=target) | structure.config_fields(
                   cfg, method, target)
    validate(Config(**raw))
    assert structure.resume_target(Config(**raw)) == target
  # With net-slim in the compare, rda takes --group-l1, not the target.
  assert structure.config_fields(cfg, "rda", None)["target_flops"] is None


def test_a_grouped_flops_target_is_written_and_resumed(tmp_path):
  """--target-flops with --structure (no net-slim): rda's config.json keeps
  target_flops, so that --resume trains to it (with None it would fall
  back to --group-l1's default); sgd of the same compare drops it."""
  import dataclasses
  from train import resume_checks
  from train.checks import validate
  cfg = Config(compare="rda,sgd", structure="channel", target_flops=0.4)
  raw = dict(dataclasses.asdict(cfg), method="rda", compare=None,
             target_sparsity=None) | structure.config_fields(cfg, "rda", None)
  (tmp_path / "config.json").write_text(json.dumps(raw))
  resumed = resume_checks.load_config(tmp_path, {})
  validate(resumed)
  assert resumed.target_flops == 0.4
  assert structure.flops_target_groups(resumed)
  assert "target_flops" in structure.group_args(
      resumed, 10, flops=models.flops_polynomial(models.get("small_cnn"),
                                                 (8, 8, 1)))
  sgd = dict(dataclasses.asdict(cfg), method="sgd", compare=None,
             target_sparsity=None) | structure.config_fields(cfg, "sgd", None)
  validate(Config(**sgd))
  assert sgd["target_flops"] is None


def test_slim_latency_times_a_trained_run_and_refuses_a_bad_one(
    slim_runs, capsys, tmp_path):
  """benchmarks/slim_latency.py --run-dir: the run's dense variables beside
  its slim model, with the parameter and FLOPs ratios of its summary, and the
  slim logits equal to the dense ones (the dead channels are exact zeros)."""
  from benchmarks import slim_latency  # pylint: disable=g-import-not-at-top
  # The rda run: net-slim's, rounded up to --width-multiple 16, is dense.
  run = slim_runs["rda"]
  assert slim_latency.main(["--run-dir", str(run), "--side", "8",
                            "--repeats", "1", "--batch-sizes", "2"]) == 0
  out = capsys.readouterr().out
  rows = {l.split()[0]: l.split() for l in out.splitlines()
          if l.split() and l.split()[0] in ("dense", "slim")}
  s = _summary(run)
  dense_p, slim_p = s["slim"]["dense_params"], s["slim"]["params"]
  assert int(rows["dense"][1].replace(",", "")) == dense_p
  assert int(rows["slim"][1].replace(",", "")) == slim_p < dense_p
  assert float(rows["slim"][4]) == pytest.approx(
      s["flops"]["dense"] / s["slim"]["flops"], abs=0.01)
  slim = rows["slim"]
  assert float(slim[slim.index("widths") - 1]) < 1e-4  # max|dlogit|
  assert slim[-1] == "/".join(map(str, s["slim"]["widths"]))
  assert slim_latency.main(["--run-dir", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and str(tmp_path) in err, err
