"""Training on the slim model after the switch (``--slim-training``).

At the switch to the second phase the trainer cuts the dead channels out of
the model, its variables and its optimizer state, and trains on. The unit
tests check that the cut optimizer state is the full one's kept part: one
more update on the slim state equals the full update, cut, bit for bit, for
every optimizer whose update is per element. The run tests (network
slimming on digits, 3 + 2 epochs, batch 512: 2 steps an epoch) check the
slim run against the same run at full width, --resume after the switch, and
that export gives the full-width variables back.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
import rda_optax
from train import cli, engine, export, structure

from _runs import final_state, resume_from  # tests/_runs.py

SHAPE = (8, 8, 1)


def _dead_variables(seed=0):
  """small_cnn variables with channels 0-7 of bn0 and 3, 70 of bn_hidden
  dead (their groups at exactly 0) and everything else random."""
  model = models.get("small_cnn")
  v = jax.device_get(models.init(model, jax.random.key(seed), SHAPE))
  v = jax.tree.map(np.array, v)
  rng = np.random.default_rng(seed)
  v["params"] = jax.tree.map(
      lambda x: rng.normal(size=x.shape).astype(np.float32), v["params"])
  for bn, conv, dead in (("bn0", "conv0", slice(0, 8)),
                         ("bn_hidden", "hidden", [3, 70])):
    for leaf in ("scale", "bias"):
      v["params"][bn][leaf][dead] = 0
    v["params"][conv]["kernel"][..., dead] = 0
  return model, v


OPTIMIZERS = {
    "rda": lambda: rda_optax.rda(1.0, 1e-3),
    "rmda": lambda: rda_optax.rmda(0.1, 1e-3, momentum=0.3),
    "grda": lambda: rda_optax.grda(0.1, 1e-3),
    "prox_adam": lambda: rda_optax.prox_adam(1e-2, 1e-3),
    "sgd_momentum": lambda: optax.chain(optax.add_decayed_weights(5e-4),
                                        optax.sgd(0.1, momentum=0.9)),
    "rda_asr": lambda: optax.chain(rda_optax.rda(1.0, 1e-3),
                                   rda_optax.freeze_zeros(2)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_cut_state_continues_exactly_as_the_full_state(name):
  """Three updates at full width, then the state is cut: the fourth update
  from the cut state, on the cut gradient, is the full fourth update cut,
  bit for bit. Per-element updates commute with taking entries, so any
  leaf of the state cut wrongly (or left uncut) shows up here."""
  model, v = _dead_variables()
  tx = OPTIMIZERS[name]()
  params = v["params"]
  state = tx.init(params)
  rng = np.random.default_rng(1)

  def grad():
    return jax.tree.map(
        lambda x: rng.normal(size=x.shape).astype(np.float32), params)

  for _ in range(3):
    u, state = tx.update(grad(), state, params)
    params = optax.apply_updates(params, u)
  # The dead groups stay dead only by construction here; zero them again
  # so the slicer sees them dead after the updates.
  params = jax.tree.map(np.array, params)
  for bn in ("bn0", "bn_hidden"):
    dead = (v["params"][bn]["scale"] == 0)
    params[bn]["scale"][dead] = params[bn]["bias"][dead] = 0
  full = engine.TrainState(params, v["batch_stats"], state, 3)
  slicing, small = structure.slim_state(model, jax.device_get(full))
  assert slicing.model.widths == (24, 64, 126)
  g = grad()
  u_full, _ = tx.update(g, full.opt_state, full.params)
  g_small = {k: {n: slicing.cut(f"{k}/{n}", x) for n, x in d.items()}
             for k, d in g.items()}
  u_small, _ = tx.update(g_small, small.opt_state, small.params)
  flat = lambda t: {f"{k}/{n}": np.asarray(x) for k, d in t.items()  # noqa: E731
                    for n, x in d.items()}
  want, got = flat(u_full), flat(u_small)
  for path in want:
    np.testing.assert_array_equal(slicing.cut(path, want[path]), got[path],
                                  err_msg=f"{name}: {path}")


def test_uncut_puts_the_kept_entries_back():
  model, v = _dead_variables()
  s = models.slicer(model, v)
  for path, x in (("hidden/kernel", v["params"]["hidden"]["kernel"]),
                  ("conv1/kernel", v["params"]["conv1"]["kernel"]),
                  ("bn0/scale", v["params"]["bn0"]["scale"])):
    small = s.cut(path, x)
    back = s.uncut(path, small, x.shape)
    np.testing.assert_array_equal(s.cut(path, back), small)
    # What is not kept is 0; what is kept is where it was.
    kept = back != 0
    np.testing.assert_array_equal(back[kept], np.asarray(x)[kept])
    assert np.count_nonzero(back) == np.count_nonzero(small)


BASE = ["--method", "net-slim", "--target-flops", "0.7", "--epochs", "3",
        "--asr-epochs", "2", "--batch-size", "512", "--progress", "none",
        "--checkpoint-every", "1",
        # Exact widths: at the default 16, net-slim's 70% rounds back to
        # nearly the dense widths on this small CNN.
        "--width-multiple", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("slim-training")
  for name, extra in (("slim", []), ("full", ["--no-slim-training"])):
    assert cli.main(["--out", str(out), *BASE, "--run-name", name,
                     *extra]) == 0
  return out


def _final(run_dir, epoch=5):
  return final_state(run_dir, epoch)


def _summary(run_dir):
  return json.loads((run_dir / "summary.json").read_text())


def test_slim_run_trains_on_the_slim_model_and_records_the_switch(runs):
  s = _summary(runs / "slim")
  rec = s["train_slim"]
  assert rec["epoch"] == 3
  assert rec["widths_before"] == [32, 64, 128]
  assert rec["widths_after"] == s["slim"]["widths"] != [32, 64, 128]
  assert rec["flops_after"] / rec["flops_before"] == pytest.approx(
      s["flops"]["ratio"]) and s["flops"]["ratio"] <= 0.7
  assert rec["images_per_sec_before"] > 0 and rec["images_per_sec_after"] > 0
  # The checkpoints after the switch hold the slim variables.
  w = rec["widths_after"]
  assert _final(runs / "slim")["params"]["conv1"]["kernel"].shape == (
      3, 3, w[0], w[1])
  assert not (runs / "full" / structure.TRAIN_SLIM).exists()
  assert "train_slim" not in _summary(runs / "full")


def test_slim_run_equals_the_full_width_run(runs):
  """The fine-tuning on the slim model is the full-width fine-tuning
  (dead channels frozen at 0) up to float summation order: every kept
  entry within 1e-4, the same FLOPs, the same slim model. Its sparsity
  counts the removed entries as zeros (those of the full-width variables
  it exports), where the full-width run keeps the consumers' weights on
  dead inputs: more zeros, never fewer."""
  a, b = _summary(runs / "slim"), _summary(runs / "full")
  assert a["flops"] == b["flops"] and a["slim"]["widths"] == b["slim"]["widths"]
  slim, full = _final(runs / "slim"), _final(runs / "full")
  dense = structure.dense_variables(
      runs / "slim", {k: slim[k] for k in ("params", "batch_stats")})
  kernels = [x for x in jax.tree.leaves(dense["params"]) if x.ndim >= 2]
  zeros = sum(int(np.sum(x == 0)) for x in kernels)
  assert a["sparsity"] == zeros / sum(x.size for x in kernels)
  assert a["sparsity"] > b["sparsity"]
  s = models.slicer(models.get("small_cnn"), full)
  for col in ("params", "batch_stats"):
    for path, x in structure._flat(full[col]).items():
      np.testing.assert_allclose(
          s.cut(path, structure._flat(dense[col])[path]), s.cut(path, x),
          rtol=1e-4, atol=1e-4, err_msg=path)


def test_resume_after_the_switch_is_bit_identical(runs, tmp_path):
  """Killed after the first slim epoch: the run resumes into the slim
  model from train_slim.json and ends bit for bit where it would have."""
  full = runs / "slim"
  cut = resume_from(full, tmp_path / "cut", 4)
  jax.tree.map(np.testing.assert_array_equal, _final(full), _final(cut))
  assert _summary(cut)["test_top1"] == _summary(full)["test_top1"]


def test_export_gives_the_full_width_variables_back(runs):
  """final_variables of a slim-trained run: full-width arrays whose kept
  entries are the slim ones and whose logits are the slim model's."""
  run = runs / "slim"
  slim = {k: _final(run)[k] for k in ("params", "batch_stats")}
  dense = export.final_variables(run)
  model = models.get("small_cnn")
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, *SHAPE)))
  assert jax.tree.map(np.shape, dense) == jax.tree.map(
      lambda x: x.shape, dict(shapes))
  small = model.clone(widths=tuple(_summary(run)["train_slim"]["widths_after"]))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, *SHAPE)),
                  jnp.float32)
  np.testing.assert_allclose(model.apply(dense, x, train=False),
                             small.apply(slim, x, train=False),
                             rtol=1e-5, atol=1e-5)
