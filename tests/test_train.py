"""The trainer: CLI, presets, methods end to end, ASR, resume, errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
import rda_optax
import _tiny_model  # tests/_tiny_model.py
from train import methods
from train import checks
from train import cli, engine, optim, prune, report
from train.checkpoint import Checkpoints
from train.config import Config
from train.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "4", "--asr-epochs", "2", "--batch-size", "64",
        "--progress", "none", "--checkpoint-every", "2"]


def _run(tmp_path, *args):
  code = cli.main(["--out", str(tmp_path / "runs"), *FAST, *args])
  runs = sorted((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else []
  return code, runs


def test_help_and_presets(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  for flag in ("--preset", "--model", "--dataset", "--data-dir", "--test-dir",
               "--method", "--epochs", "--asr-epochs", "--batch-size",
               "--gamma", "--l1", "--init-scale", "--lr", "--seed", "--out",
               "--resume", "--list-presets"):
    assert flag in out
  assert cli.main(["--list-presets"]) == 0
  listed = capsys.readouterr().out
  assert "paper-resnet18-cifar10" in listed and "fast-resnet18-cifar10" in listed
  p = PRESETS["paper-resnet18-cifar10"]
  assert (p["epochs"], p["asr_epochs"], p["batch_size"], p["init_scale"]) == (
      2400, 1200, 128, 10.0)


@pytest.mark.parametrize("args,needle", [
    (["--model", "resnet99"], "resnet99"),
    (["--preset", "nope"], "nope"),
    (["--method", "adamw"], "adamw"),
    (["--dataset", "svhn"], "svhn"),
    (["--epochs", "-1"], "--epochs"),
    (["--gamma", "0"], "--gamma"),
    (["--batch-size", "100000"], "--batch-size"),
    (["--dataset", "folder", "--data-dir", "/nonexistent/x.tar.xz"], "/nonexistent"),
    (["--dataset", "folder"], "--data-dir"),
    (["--method", "prune-finetune"], "target-sparsity"),
    (["--target-sparsity-from", "/nonexistent", "--method", "prune-finetune"], "/nonexistent"),
    (["--gamma-schedule", "10:1,5:2"], "--gamma-schedule"),
    (["--config", "/nonexistent.json"], "/nonexistent.json"),
    (["--num-classes", "7"], "--num-classes 7"),
    (["--asr-epochs", "2", "--debias-epochs", "3"], "--debias-epochs"),
])
def test_bad_input_one_line_exit_2_no_run_dir(tmp_path, capsys, args, needle):
  code, runs = _run(tmp_path, *args)
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1 and needle in err, err
  assert "Traceback" not in err
  assert runs == []


def test_argparse_errors_are_one_line(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--epochs", "many"])
  assert e.value.code == 2
  assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_config_file_and_precedence(tmp_path):
  f = tmp_path / "c.json"
  f.write_text(json.dumps({"l1": 0.5, "epochs": 7}))
  from train import config as config_lib
  cfg = checks.build("digits-demo", str(f), {"epochs": 3})
  assert (cfg.l1, cfg.epochs, cfg.model) == (0.5, 3, "small_cnn")
  f.write_text(json.dumps({"lr": "fast"}))
  with pytest.raises(ValueError, match="lr"):
    checks.build(None, str(f), {})


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory):
  """One short run of each method on digits, shared by the tests below."""
  tmp = tmp_path_factory.mktemp("methods")
  code = cli.main(["--out", str(tmp), *FAST, "--l1", "1e-3",
                   "--compare", "rda,prox-sgd,sgd,prune-finetune",
                   "--run-name", "t"])
  assert code == 0
  return {json.loads((d / "summary.json").read_text())["method"]: d
          for d in tmp.iterdir() if d.is_dir()}


@pytest.mark.parametrize("method", ["rda", "prox-sgd", "sgd", "prune-finetune"])
def test_each_method_learns(method_runs, method):
  d = method_runs[method]
  s = json.loads((d / "summary.json").read_text())
  for key in ("method", "model", "dataset", "test_top1", "test_top5",
              "sparsity", "epochs", "wall_s"):
    assert key in s
  assert s["epochs"] == 6
  # Chance is 10%; prune-finetune at RDA's sparsity (~0.9) recovers less.
  floor = 25.0 if method == "prune-finetune" else 80.0
  assert s["test_top1"] > floor, s
  lines = report.read_metrics(d)
  assert [l["epoch"] for l in lines] == list(range(1, 7))
  for key in ("epoch", "phase", "loss", "train_top1", "val_top1", "val_top5",
              "sparsity", "sparsity_per_layer", "gamma", "l1", "lr",
              "images_per_sec"):
    assert key in lines[0]
  assert (d / "curves.png").stat().st_size > 10_000
  assert (d / "layers.png").exists()
  assert (d / "config.json").exists()


def test_rda_is_sparse_and_prune_matches_it(method_runs):
  s = {m: json.loads((d / "summary.json").read_text())
       for m, d in method_runs.items()}
  assert s["rda"]["sparsity"] > 0.5
  assert s["sgd"]["sparsity"] == 0.0
  assert s["prune-finetune"]["sparsity"] == pytest.approx(
      s["rda"]["sparsity"], abs=1e-3)
  phases = [l["phase"] for l in report.read_metrics(method_runs["rda"])]
  assert phases == ["rda"] * 4 + ["asr"] * 2


def test_asr_never_revives_a_zero():
  cfg = Config(epochs=2, asr_epochs=3, batch_size=64, l1=1e-3)
  from train.data import load
  splits = load("digits", progress=False)
  x, y = splits.train
  spe = x.shape[0] // 64
  model = models.get("small_cnn", kernel_init=rda_optax.scaled_uniform(2.0))
  v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  tx = methods.optimizer(cfg, "rda", spe).tx
  state = engine.init_state(tx, v["params"], v["batch_stats"])
  epoch = engine.make_train_epoch(engine.EpochSpec(model, tx, spe, 64, np.zeros(1), np.ones(1),
                                  "none", 0.0, 10, jnp.float32, x.shape[0]))
  dx, dy = jax.device_put(x), jax.device_put(y)
  zeros = None
  for e in range(5):
    state, _ = epoch(state, dx, dy, jax.random.key(e))
    z = jax.tree.map(lambda p: np.asarray(p) == 0, state.params)
    if e >= 2:  # epochs 3..5 are ASR
      for old, new in zip(jax.tree.leaves(zeros), jax.tree.leaves(z)):
        assert not np.any(old & ~new)
    zeros = z
  assert float(rda_optax.sparsity(state.params)) > 0.3


@pytest.mark.parametrize("method", ["rda", "prox-sgd"])
def test_debias_epochs_keep_the_zeros_and_drop_the_shrinkage(method):
  """--debias-epochs 2 of 2 ASR epochs: l1 is 0 from the ASR switch on, the
  zero pattern at the switch is kept exactly (ASR freezes it, and l1 = 0
  makes no new zero), and the kept kernel weights grow: the shrinkage of
  the penalty is gone. Without debiasing, ASR keeps adding zeros."""
  from train.data import load
  x, y = load("digits", progress=False).train
  spe = x.shape[0] // 64
  runs = {}
  for k in (0, 2):
    # The reference run (k = 0) also has a debias switch, past its last
    # epoch here (epoch 4 of 6; 4 are run): both runs compile the same
    # program and differ only in the switch step, so up to the switch they
    # are bit-identical on any CPU. (A reference without --debias-epochs
    # compiles a constant l1 that XLA folds differently: rounding-level
    # differences that RDA's threshold can turn into a flipped weight.)
    # A constant lr keeps prox-SGD's schedule independent of the length.
    cfg = Config(epochs=2, asr_epochs=2 if k else 4, batch_size=64, l1=1e-3,
                 lr=0.05, lr_schedule="constant", debias_epochs=2)
    opt = methods.optimizer(cfg, method, spe)
    assert opt.l1(2 * spe - 1) == pytest.approx(1e-3)
    assert opt.l1(2 * spe) == (0.0 if k else pytest.approx(1e-3))
    model = models.get("small_cnn", kernel_init=rda_optax.scaled_uniform(2.0))
    v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    tx = opt.tx
    state = engine.init_state(tx, v["params"], v["batch_stats"])
    epoch = engine.make_train_epoch(engine.EpochSpec(model, tx, spe, 64, np.zeros(1),
                                    np.ones(1), "none", 0.0, 10, jnp.float32,
                                    x.shape[0]))
    dx, dy = jax.device_put(x), jax.device_put(y)
    snaps = []
    for e in range(4):
      state, _ = epoch(state, dx, dy, jax.random.key(e))
      snaps.append(jax.tree.map(np.asarray, state.params))
    runs[k] = snaps
  kern = lambda t: [l for l in jax.tree.leaves(t) if l.ndim >= 2]
  for k, snaps in runs.items():
    at_switch, end = kern(snaps[1]), kern(snaps[3])
    same = all(np.array_equal(a == 0, b == 0) for a, b in zip(at_switch, end))
    assert same == bool(k), (method, k)  # without debiasing, new zeros come
  # The same run up to the switch, bit for bit (same program, same data);
  # then larger weights with the penalty gone.
  for a, b in zip(jax.tree.leaves(runs[0][1]), jax.tree.leaves(runs[2][1])):
    np.testing.assert_array_equal(a, b)
  # On the weights both runs kept: RDA rebuilds its iterate without the
  # threshold at once; prox-SGD stops shrinking.
  a, b = kern(runs[0][3]), kern(runs[2][3])
  both = [(x != 0) & (y != 0) for x, y in zip(a, b)]
  mag = lambda t: np.mean(np.concatenate([np.abs(l[m]) for l, m in zip(t, both)]))
  assert mag(b) > mag(a)


def test_scan_and_loop_epochs_agree():
  """The accelerator path (one lax.scan per epoch) and the CPU path (a host
  loop of jitted steps) compute the same thing."""
  from train.data import load
  x, y = load("digits", progress=False).train
  cfg = Config(epochs=1, asr_epochs=1, batch_size=64)
  model = models.get("small_cnn", kernel_init=rda_optax.scaled_uniform(2.0))
  out = []
  for scan in (True, False):
    v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    tx = methods.optimizer(cfg, "sgd", 4).tx
    st = engine.init_state(tx, v["params"], v["batch_stats"])
    ep = engine.make_train_epoch(engine.EpochSpec(model, tx, 4, 64, np.zeros(1), np.ones(1),
                                 "crop", 0.0, 10, jnp.float32, x.shape[0],
                                 scan=scan))
    calls = []  # in-epoch progress: every step of the host loop, none in scan
    st, m = ep(st, jax.device_put(x), jax.device_put(y), jax.random.key(3),
               on_step=lambda done, steps, _: calls.append((done, steps)))
    assert calls == ([] if scan else [(i, 4) for i in range(1, 5)])
    out.append((st.params, float(m["loss"])))
  assert out[0][1] == pytest.approx(out[1][1], rel=1e-4)
  # SGD, not RDA: RDA's first steps (w_2 = -g_1/gamma ahead of BatchNorm)
  # amplify the rounding differences of the two programs' fusions.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               out[0][0], out[1][0])


def test_resume_ends_with_identical_parameters(tmp_path):
  args = ["--run-name", "full", "--l1", "1e-3"]
  assert _run(tmp_path, *args)[0] == 0
  full = tmp_path / "runs" / "full"
  args = ["--run-name", "cut", "--l1", "1e-3"]
  assert _run(tmp_path, *args)[0] == 0
  cut = tmp_path / "runs" / "cut"
  # Simulate a run killed after epoch 5, before its final save: only the
  # epoch-4 checkpoint survives and metrics run one epoch past it.
  shutil.rmtree(cut / "checkpoints" / "6")
  (cut / "summary.json").unlink()
  lines = (cut / "metrics.jsonl").read_text().splitlines()[:5]
  (cut / "metrics.jsonl").write_text("\n".join(lines) + "\n")
  assert cli.main(["--resume", str(cut)]) == 0
  assert [l["epoch"] for l in report.read_metrics(cut)] == list(range(1, 7))
  a = json.loads((full / "summary.json").read_text())
  b = json.loads((cut / "summary.json").read_text())
  assert a["test_top1"] == b["test_top1"] and a["sparsity"] == b["sparsity"]
  assert a["train_images_per_device"] == b["train_images_per_device"] == 1293

  def params(d):
    ck = Checkpoints(d)
    tree = ck.restore_local(6)
    ck.close()
    return tree["params"]

  jax.tree.map(np.testing.assert_array_equal, params(full), params(cut))


def test_resume_errors(tmp_path, capsys):
  assert cli.main(["--resume", str(tmp_path)]) == 2
  assert "config.json" in capsys.readouterr().err


def test_existing_run_dir_is_refused(tmp_path, capsys):
  (tmp_path / "runs" / "x").mkdir(parents=True)
  (tmp_path / "runs" / "x" / "keep.txt").write_text("mine")
  assert _run(tmp_path, "--run-name", "x")[0] == 2
  assert "already exists" in capsys.readouterr().err
  assert (tmp_path / "runs" / "x" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_prune_hits_target(scope):
  params = {"a": {"kernel": jax.random.normal(jax.random.key(0), (30, 40))},
            "b": {"kernel": jax.random.normal(jax.random.key(1), (3, 3, 8, 8)),
                  "bias": jnp.ones(8)}}
  out = prune.magnitude_prune(params, 0.75, scope)
  # Distinct magnitudes: exactly round(0.75 n) zeros, and they are the
  # smallest (per kernel with "layer", over both with "global").
  kernels = [("a", "kernel"), ("b", "kernel")]
  groups = ([[k] for k in kernels] if scope == "layer" else [kernels])
  for group in groups:
    w = np.concatenate([np.abs(np.asarray(params[a][b])).ravel()
                        for a, b in group])
    z = np.concatenate([np.asarray(out[a][b]).ravel() == 0 for a, b in group])
    k = round(0.75 * w.size)
    assert z.sum() == k
    assert w[z].max() < w[~z].min()
  np.testing.assert_array_equal(out["b"]["bias"], 1.0)
  # Target 0 prunes nothing; the default scope is "layer".
  zero = prune.magnitude_prune(params, 0.0, scope)
  assert all(np.all(np.asarray(p) != 0) for p in jax.tree.leaves(zero))
  if scope == "layer":
    for a, b in zip(jax.tree.leaves(prune.magnitude_prune(params, 0.75)),
                    jax.tree.leaves(out)):
      np.testing.assert_array_equal(a, b)
  # A kernel on which the (k-1)-th entry of a partition around k-2 is not
  # the k-th smallest (numpy 2's introselect; found by search): the threshold
  # must be exactly the k-th smallest magnitude.
  w = np.random.default_rng(52).normal(size=(24, 74)).astype(np.float32)
  z = np.asarray(prune.magnitude_prune({"k": jnp.asarray(w)}, 0.5,
                                       scope)["k"]) == 0
  assert z.sum() == 888 and np.abs(w)[z].max() < np.abs(w)[~z].min()


def test_python_dash_m_train_entry_point(tmp_path):
  r = subprocess.run([sys.executable, "-m", "train", "--model", "nope"],
                     cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 2 and "nope" in r.stderr


def test_dense_sgd_is_nesterov_momentum_with_decay_of_the_kernels():
  # Step 1 from a zero trace: -lr (1 + m) (g + wd w) on kernels, -lr (1 + m) g
  # on biases; step 2 with the same g: -lr (g' + m (g' + m g')) = (1 + m + m^2).
  cfg = Config(momentum=0.5, weight_decay=0.1)
  tx = optax.chain(*optim.dense_sgd(cfg, optax.constant_schedule(0.2)))
  params = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full(2, 2.0)}
  g = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  state = tx.init(params)
  u, state = tx.update(g, state, params)
  np.testing.assert_allclose(u["kernel"], -0.2 * 1.5 * 1.2, rtol=1e-6)
  np.testing.assert_allclose(u["bias"], -0.2 * 1.5, rtol=1e-6)
  u, _ = tx.update(g, state, params)
  np.testing.assert_allclose(u["bias"], -0.2 * 1.75, rtol=1e-6)


def test_piecewise_schedule_holds_the_base_until_the_first_epoch_named():
  # EPOCH:VALUE pairs of 10-step epochs; before the first epoch named, the
  # base value (--lr/--l1), unless the pairs start at epoch 0.
  late = optim.piecewise(0.1, "1:0.5,3:0.2", "lr_schedule", 10)
  assert [float(late(t)) for t in (0, 9, 10, 29, 30, 99)] == pytest.approx(
      [0.1, 0.1, 0.5, 0.5, 0.2, 0.2])
  early = optim.piecewise(0.1, "0:0.3,2:0.05", "lr_schedule", 10)
  assert [float(early(t)) for t in (0, 19, 20)] == pytest.approx(
      [0.3, 0.3, 0.05])


def test_on_step_gets_each_steps_metrics():
  # The host loop hands on_step each step's metrics (what a progress line
  # waits for); the epoch's mean loss is theirs.
  run, state = _tiny_model.epoch(steps=3, batch=4, n_images=12, scan=False)
  rng = np.random.default_rng(0)
  seen = []
  _, m = run(
      state, jnp.asarray(rng.integers(0, 256, (12, 2, 2, 1), np.uint8)),
      jnp.asarray(rng.integers(0, 10, 12), jnp.int32), jax.random.key(1),
      on_step=lambda done, steps, metrics: seen.append(
          (done, steps, np.asarray(metrics))))
  assert [(d, s) for d, s, _ in seen] == [(1, 3), (2, 3), (3, 3)]
  np.testing.assert_allclose(np.mean([x[0] for _, _, x in seen]),
                             float(m["loss"]), rtol=1e-6)
  # Top-1 and top-5 over the epoch's 12 images, from the per-step counts.
  for key, col in (("train_top1", 1), ("train_top5", 4)):
    assert float(m[key]) == pytest.approx(
        100.0 * sum(x[col] for _, _, x in seen) / 12), key
