"""Reliability of the trainer under faults (docs/RELIABILITY.md).

Non-finite gradients, SIGKILL during checkpoint saves, SIGINT/SIGTERM, a
full or unwritable disk, corrupt inputs, determinism and run-directory
locking. Each test injects the fault for real (tmpfs mounts, subprocesses,
signals) where this machine allows it and says why it skips where not.

Each test states behaviour the reliability issue asks for; none is marked
as expected to fail.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import models
import rda_optax
from train import rundir
from train import inputs
from train import methods
from train import checks
from train import cli, engine, optim, report
from train import config as config_lib
from train._errors import UsageError
from train._lock import run_lock
from train.checkpoint import Checkpoints
from train.config import Config

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
SMALL = ["--batch-size", "64", "--progress", "none"]
# Most runs below share this shape (1 RDA + N ASR epochs of the small CNN on
# digits, seed 0), so they share one compiled training step: the session's
# persistent compilation cache (tests/conftest.py), which ENV passes on to
# the subprocesses, cuts each run after the first from ~7 s to ~2 s.
RDA1 = ["--epochs", "1", "--asr-epochs"]


def _main(argv) -> tuple[object, str]:
  """Runs the CLI in-process: (exit code, or the exception; stderr)."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse
      code = e.code
    except Exception as e:  # pylint: disable=broad-except
      code = e
  return code, err.getvalue()


def _lines(text: str) -> list[str]:
  return [l for l in text.splitlines() if l.strip()]


def _one_error_line(err: str, needle: str) -> None:
  lines = _lines(err)
  assert len(lines) == 1, err
  assert lines[0].startswith("rda-train: error:"), err
  assert needle in lines[0], err
  assert "Traceback" not in err


def _runs(out: Path) -> list[Path]:
  return sorted(out.iterdir()) if out.exists() else []


def _latest(run_dir: Path):
  ck = Checkpoints(run_dir)
  try:
    return ck.latest()
  finally:
    ck.close()


def _np(tree):
  return jax.tree.map(np.asarray, tree)


def _tree_equal(a, b) -> bool:
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  return ta == tb and all(np.array_equal(x, y, equal_nan=True)
                          for x, y in zip(la, lb))


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, ro: bool = False):
  """Mounts a small tmpfs at ``path``, or skips the test saying why."""
  path.mkdir(parents=True, exist_ok=True)
  opts = f"size={size}" + (",ro" if ro else "")
  try:
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs",
                        str(path)], capture_output=True, text=True)
  except FileNotFoundError:
    pytest.skip("cannot mount a tmpfs here: no mount(8)")
  if r.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): "
                f"{r.stderr.strip()}")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _remount(path: Path, opts: str) -> None:
  subprocess.run(["mount", "-o", f"remount,{opts}", str(path)], check=True,
                 capture_output=True)


# --- Non-finite gradients ---------------------------------------------------


class _NaNOnMarker(nn.Module):
  """The small CNN, with NaN logits for a batch holding a marked image
  (pixel (0, 0) at 255; in digits it is always 0). Multiplying, not
  jnp.where, so the NaN reaches the gradients."""
  inner: nn.Module

  @nn.compact
  def __call__(self, x, train=False):
    logits = self.inner(x, train=train)
    return logits * jnp.where(jnp.any(x[:, 0, 0, 0] > 0.99), jnp.nan, 1.0)


def _nan_setup(epochs: int, batch: int):
  """Digits, the same images with the NaN marker set, and an RDA state of
  the small CNN wrapped in _NaNOnMarker."""
  from train.data import load
  x, y = load("digits", progress=False).train
  assert not x[:, 0, 0, 0].any()
  x_bad = x.copy()
  x_bad[:, 0, 0, 0] = 255
  spe = x.shape[0] // batch
  cfg = Config(epochs=epochs, asr_epochs=0, batch_size=batch, l1=1e-3)
  model = _NaNOnMarker(models.get(
      "small_cnn", kernel_init=rda_optax.scaled_uniform(2.0)))
  v = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  tx = methods.optimizer(cfg, "rda", spe).tx
  state = engine.init_state(tx, v["params"], v["batch_stats"])
  return x, y, x_bad, spe, model, tx, state


def test_nonfinite_steps_are_skipped_and_leave_no_trace():
  """Epochs whose every batch has a NaN loss skip every step: params,
  BatchNorm statistics and the whole RDA state (count, average, w_1) stay
  bit-identical, the skips are counted (consecutively, across epochs), and
  the next good epoch computes exactly what it would have computed without
  the bad ones. One compiled step serves both: the fault is in the data."""
  batch = 64
  x, y, x_bad, spe, model, tx, state = _nan_setup(3, batch)
  epoch = engine.make_train_epoch(engine.EpochSpec(model, tx, spe, batch, np.zeros(1),
                                  np.ones(1), "none", 0.0, 10, jnp.float32,
                                  x.shape[0]))
  dx, dy, dbad = jax.device_put(x), jax.device_put(y), jax.device_put(x_bad)
  dev = lambda t: jax.tree.map(jnp.asarray, t)  # epochs donate their input

  state, m = epoch(state, dx, dy, jax.random.key(1))
  assert int(m["skipped_steps"]) == 0
  before = _np(state)
  after_bad = state
  for k in (1, 2):
    after_bad, m = epoch(after_bad, dbad, dy, jax.random.key(10 + k))
    assert int(m["skipped_steps"]) == spe
    assert int(m["consecutive_bad"]) == k * spe  # what --max-bad-steps reads
  after_bad = _np(after_bad)
  assert _tree_equal(after_bad.params, before.params)
  assert _tree_equal(after_bad.batch_stats, before.batch_stats)
  inner_before = before.opt_state.inner_state
  inner_after = after_bad.opt_state.inner_state
  assert isinstance(inner_after[0], rda_optax.RDAState)
  assert _tree_equal(inner_after, inner_before)  # RDA count, gbar, w_1, ASR
  assert int(after_bad.opt_state.total_notfinite) == 2 * spe

  s1, m1 = epoch(dev(after_bad), dx, dy, jax.random.key(3))
  s2, _ = epoch(dev(before), dx, dy, jax.random.key(3))
  assert int(m1["skipped_steps"]) == 0 and int(m1["consecutive_bad"]) == 0
  assert _tree_equal(_np(s1.params), _np(s2.params))
  assert not _tree_equal(_np(s1.params), before.params)


def test_nonfinite_run_stops_with_exit_1_and_resumes_from_last_checkpoint(
    tmp_path):
  """--gamma-schedule 0:1,2:1e-30: epochs 1-2 are fine; the first step of
  epoch 3 rebuilds the iterate with 1/gamma = 1e30, every later gradient is
  non-finite. The run stops in epoch 3 at the 10th consecutive skip (the
  default --max-bad-steps), the 9 steps after it halted, with exit 1 and one
  line; checkpoint 2 is intact, and --resume continues from it once the
  config is fixed."""
  out = tmp_path / "runs"
  code, err = _main(["--out", out, "--run-name", "nan", *SMALL, *RDA1, 3,
                     "--checkpoint-every", 1, "--gamma-schedule", "0:1,2:1e-30"])
  run_dir = out / "nan"
  last = _lines(err)[-1]
  assert code == 1, err
  assert last.startswith("rda-train: stopped: 10 consecutive steps with "
                         "non-finite gradients at epoch 3; the last good "
                         "checkpoint (epoch 2)"), err
  assert str(run_dir) in last and "Traceback" not in err
  rows = report.read_metrics(run_dir)
  assert [r["skipped_steps"] for r in rows] == [0, 0, 10]
  assert rows[2]["halted_steps"] == 9 and "halted_steps" not in rows[1]
  assert not (run_dir / "summary.json").exists()

  ck = Checkpoints(run_dir)
  try:
    assert ck.latest() == 2
    import orbax.checkpoint as ocp
    tree = ck._mngr.restore(2, args=ocp.args.StandardRestore())
  finally:
    ck.close()
  leaves = jax.tree.leaves(tree)
  assert leaves and all(np.all(np.isfinite(np.asarray(l))) for l in leaves
                        if np.issubdtype(np.asarray(l).dtype, np.floating))

  # --resume takes no flags; the fix goes into the run's config.json.
  cfg = json.loads((run_dir / "config.json").read_text())
  cfg["gamma_schedule"] = ""
  (run_dir / "config.json").write_text(json.dumps(cfg))
  code, err = _main(["--resume", run_dir])
  assert code == 0, err
  rows2 = report.read_metrics(run_dir)
  assert [r["epoch"] for r in rows2] == [1, 2, 3, 4]
  assert rows2[:2] == rows[:2]  # kept from the first run, up to checkpoint 2
  assert [r["skipped_steps"] for r in rows2[2:]] == [0, 0]
  assert (run_dir / "summary.json").exists()


def test_nonfinite_stop_before_any_checkpoint_does_not_claim_one(tmp_path):
  out = tmp_path / "runs"
  code, err = _main(["--out", out, "--run-name", "z", *SMALL, *RDA1, 1,
                     "--init-scale", "1e30"])
  assert code == 1, err
  assert _latest(out / "z") is None
  last = _lines(err)[-1]
  assert last.startswith("rda-train: stopped: 10 consecutive steps"), err
  assert "intact" not in last and "no checkpoint was written" in last, last
  # Every step skipped or halted: no loss to report, and none made up.
  row, = report.read_metrics(out / "z")
  assert row["loss"] is None and row["train_top1"] is None
  assert row["skipped_steps"] == 10 and row["halted_steps"] == 10


def test_nonfinite_halt_is_per_step_and_state_stays_the_last_good_one():
  """With max_bad = K, the epoch halts at the K-th consecutive skip: the
  remaining steps change nothing (on the host loop and in the scan), the state
  is bit-identical to the one before the bad steps, and an all-bad epoch
  reports a NaN loss, never 0."""
  batch, k = 64, 7
  x, y, x_bad, spe, model, tx, state = _nan_setup(2, batch)
  for scan in (False, True):
    epoch = engine.make_train_epoch(engine.EpochSpec(model, tx, spe, batch, np.zeros(1),
                                    np.ones(1), "none", 0.0, 10, jnp.float32,
                                    x.shape[0], scan=scan, max_bad=k))
    s0 = jax.tree.map(jnp.copy, state)
    before = _np(s0)
    s1, m = epoch(s0, jax.device_put(x_bad), jax.device_put(y),
                  jax.random.key(1))
    assert int(m["skipped_steps"]) == k and int(m["halted_steps"]) == spe - k
    assert int(m["consecutive_bad"]) == k
    assert np.isnan(float(m["loss"])) and np.isnan(float(m["train_top1"]))
    after = _np(s1)
    assert _tree_equal(after.params, before.params)
    assert _tree_equal(after.batch_stats, before.batch_stats)
    assert _tree_equal(after.opt_state.inner_state,
                       before.opt_state.inner_state)
    assert int(after.step) == int(before.step) + k  # halted steps: no count
    # Good data after a halt stays halted: the run is meant to stop there.
    s2, m2 = epoch(s1, jax.device_put(x), jax.device_put(y), jax.random.key(2))
    assert int(m2["halted_steps"]) == spe
    assert _tree_equal(_np(s2).params, before.params)


def test_checkpoint_is_deferred_while_an_epoch_ends_in_skipped_steps(tmp_path):
  """--max-bad-steps 30, --gamma-schedule 0:1,1:1e-30: the first step of
  epoch 2 sends the weights to ~1e29 (finite), the other 19 are skipped. The
  periodic checkpoint of epoch 2 would hold those weights, so it is
  deferred; epoch 3 reaches 30 consecutive skips and the run stops naming
  checkpoint 1, which is what --resume would use."""
  out = tmp_path / "runs"
  code, err = _main(["--out", out, "--run-name", "d", "--batch-size", 64,
                     "--progress", "lines", "--epochs", 3, "--asr-epochs", 0,
                     "--checkpoint-every", 1, "--max-bad-steps", 30,
                     "--gamma-schedule", "0:1,1:1e-30"])
  assert code == 1, err
  assert "epoch 2 ended with 19 skipped steps: checkpoint deferred" in err
  last = _lines(err)[-1]
  assert last.startswith("rda-train: stopped: 30 consecutive steps with "
                         "non-finite gradients at epoch 3; the last good "
                         "checkpoint (epoch 1)"), err
  assert _latest(out / "d") == 1
  rows = report.read_metrics(out / "d")
  assert [r["skipped_steps"] for r in rows] == [0, 19, 11]
  assert rows[2]["halted_steps"] == 9


def test_signal_before_training_writes_nothing_or_stops_before_epoch_1(
    tmp_path):
  """The handlers are in place before anything is written: a signal while
  the data loads ends the run with exit 130 and no run directory; one that
  lands before the first epoch leaves a run directory that --resume trains
  from the start."""
  from train import run as run_lib
  cfg = checks.build("digits-demo", None, {
      "out": str(tmp_path / "runs"), "run_name": "e", "epochs": 1,
      "asr_epochs": 1, "batch_size": 64, "progress": "none"})
  with pytest.raises(run_lib.Stopped, match="interrupted while loading the "
                     "data; nothing was written") as e:
    run_lib._run(cfg, [signal.SIGTERM])  # pylint: disable=protected-access
  assert e.value.code == 130 and not (tmp_path / "runs").exists()

  splits = inputs.load_data(cfg)
  run_dir = run_lib.start_run_dir(cfg, "rda", "stamp")
  with pytest.raises(run_lib.Stopped, match="interrupted before epoch 1: "
                     f"resume with: python -m train --resume {run_dir}") as e:
    run_lib.train_one(cfg, "rda", splits, run_dir,
                      interrupted=[signal.SIGINT])
  assert e.value.code == 130 and _latest(run_dir) is None
  code, err = _main(["--resume", run_dir])
  assert code == 0, err
  assert [r["epoch"] for r in report.read_metrics(run_dir)] == [1, 2]


def test_sigterm_during_start_up_is_handled(tmp_path):
  """SIGTERM as soon as the run directory is announced (model init and
  compilation still ahead): exit 130 and one line naming --resume, never
  Python's default death (exit -15, nothing said)."""
  out = tmp_path / "runs"
  p = _start(["--out", out, "--run-name", "up", *SMALL, *RDA1, 1])
  try:
    line = p.stderr.readline()
    assert line.startswith("[rda] "), line
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()
  assert p.returncode == 130, err
  last = _lines(err)[-1]
  assert last.startswith("rda-train: interrupted "), err
  assert f"--resume {out / 'up'}" in last and "Traceback" not in err


# --- SIGKILL during checkpoint saves -----------------------------------------


def _fault_script(name: str):
  path = ROOT / "scripts" / "faults" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"faults_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_sigkill_during_checkpoint_saves_never_loses_the_latest(tmp_path):
  """20 writers killed with SIGKILL at random moments, most of them mid-save:
  after every kill the next writer restores the latest checkpoint and finds
  exactly the value saved at that step; no step reported saved is missing.
  The driver forks the writers, so it runs in its own process."""
  script = ROOT / "scripts" / "faults" / "ckpt_kill.py"
  run_dir = tmp_path / "ckpt"
  r = subprocess.run([PY, str(script), "loop", str(run_dir), "--kills", "20",
                      "--seed", "2026", "--max-delay", "0.5"],
                     cwd=ROOT, env=ENV, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stdout + r.stderr[-3000:]
  tally = json.loads(r.stdout.splitlines()[-1])
  assert tally["failures"] == [] and tally["kills"] == 20, tally
  assert tally["mid_save"] >= 3, tally  # the kills did land inside saves
  assert tally["resumes_ok"] >= 15, tally
  assert tally["final"]["ok"] and tally["final"]["latest"] is not None
  # And once more from this process, as `--resume` would read it.
  assert _fault_script("ckpt_kill").check(run_dir) == tally["final"]


# --- SIGINT / SIGTERM ----------------------------------------------------------


def _start(args) -> subprocess.Popen:
  return subprocess.Popen([PY, "-m", "train", *map(str, args)], cwd=ROOT,
                          env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for_epoch_line(p: subprocess.Popen, timeout: float = 120) -> None:
  seen, t0 = [], time.time()
  while time.time() - t0 < timeout:
    line = p.stderr.readline()
    if not line:
      break
    seen.append(line)
    if re.search(r" epoch +\d+/\d+ ", line):
      return
  p.kill()
  raise AssertionError(f"no epoch line from the run: {seen}")


def _signal_after_first_epoch(p: subprocess.Popen, sig, between=None):
  try:
    _wait_for_epoch_line(p)
    if between is not None:
      between()
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()
  return p.returncode, err


def _interrupted_at(err: str, run_dir: Path) -> int:
  last = _lines(err)[-1]
  assert last.startswith("rda-train: interrupted after epoch "), err
  assert f"--resume {run_dir}" in last, err
  assert "Traceback" not in err
  return int(last.split("after epoch ")[1].split(":")[0])


def test_sigterm_sigint_sigkill_then_resume_completes(tmp_path):
  """SIGTERM after the first epoch line: exit 130, a checkpoint of the last
  finished epoch, one line naming --resume. `--resume` (a subprocess) picks
  up there and is stopped by SIGINT the same way; the next `--resume` is
  SIGKILLed; a last --resume completes every epoch. While the first run is
  alive, a second run with the same --run-name is refused because the run
  directory exists."""
  out, total = tmp_path / "runs", 15
  run_dir = out / "sig"

  def second_run_is_refused():
    code, err = _main(["--out", out, "--run-name", "sig", *SMALL, *RDA1, 1])
    assert code == 2, err
    _one_error_line(err, "already exists")

  p = _start(["--out", out, "--run-name", "sig", *RDA1, total - 1,
              "--batch-size", 64, "--checkpoint-every", 100,
              "--progress", "lines"])
  code, err = _signal_after_first_epoch(p, signal.SIGTERM,
                                        second_run_is_refused)
  assert code == 130, err
  first = _interrupted_at(err, run_dir)
  assert 1 <= first < total, "the run ended before the signal: raise total"
  assert _latest(run_dir) == first
  assert len(report.read_metrics(run_dir)) == first

  p = _start(["--resume", run_dir])
  code, err = _signal_after_first_epoch(p, signal.SIGINT)
  assert code == 130, err
  second = _interrupted_at(err, run_dir)
  assert first < second < total
  assert _latest(run_dir) == second
  assert [r["epoch"] for r in report.read_metrics(run_dir)] == list(
      range(1, second + 1))

  # SIGKILL: no handler runs. The run keeps checkpoint `second`; the next
  # --resume drops the metrics lines past it and replays those epochs.
  p = _start(["--resume", run_dir])
  try:
    _wait_for_epoch_line(p)
    time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()
  assert p.returncode == -signal.SIGKILL
  assert _latest(run_dir) == second
  assert len(report.read_metrics(run_dir)) > second

  code, err = _main(["--resume", run_dir])
  assert code == 0, err
  assert [r["epoch"] for r in report.read_metrics(run_dir)] == list(
      range(1, total + 1))
  assert json.loads((run_dir / "summary.json").read_text())["epochs"] == total


# --- Unwritable output, full disk -----------------------------------------------


@pytest.mark.parametrize("kind", ["dev-null", "under-a-file", "read-only-fs"])
def test_unwritable_out_is_one_line_exit_2(tmp_path, kind):
  if kind == "dev-null":
    out, ctx = Path("/dev/null/x"), contextlib.nullcontext()
  elif kind == "under-a-file":
    (tmp_path / "file").write_text("x")
    out, ctx = tmp_path / "file" / "runs", contextlib.nullcontext()
  else:  # root ignores chmod, so a read-only mount it is
    out = tmp_path / "ro"
    ctx = _tmpfs(out, "1m", ro=True)
  with ctx:
    code, err = _main(["--out", out, *SMALL, *RDA1, 1])
    assert code == 2, err
    _one_error_line(err, "--out: cannot write run directory")
    if kind == "read-only-fs":
      assert "Read-only file system" in err and _runs(out) == []


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
  """A 2-epoch run on a 4 MiB tmpfs: checkpoint 1 (about 2.6 MiB: params,
  RDA's average, BatchNorm; w_1 is kept only for the unpenalized leaves)
  fits, checkpoint 2 does not. Then
  --resume on the same file system remounted read-only, then remounted with
  room."""
  mnt = tmp_path_factory.mktemp("full") / "mnt"
  with _tmpfs(mnt, "4m"):
    run_dir = mnt / "r"
    res = {}
    # A real process: what a user sees, orbax's own log lines included.
    r = subprocess.run([PY, "-m", "train", "--out", str(mnt), "--run-name",
                        "r", *SMALL, *RDA1, "1", "--checkpoint-every", "1"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
    res["full"] = (r.returncode, r.stderr)
    res["entries_after_full"] = sorted(os.listdir(run_dir / "checkpoints"))
    res["latest_after_full"] = _latest(run_dir)
    res["config_after_full"] = (run_dir / "config.json").read_text()
    _remount(mnt, "ro")
    res["resume_ro"] = _main(["--resume", run_dir])
    res["entries_after_ro"] = sorted(os.listdir(run_dir / "checkpoints"))
    _remount(mnt, "rw,size=64m")
    res["resume_room"] = _main(["--resume", run_dir])
    res["rows"] = report.read_metrics(run_dir)
    res["summary"] = (run_dir / "summary.json").exists()
    yield res


def test_full_disk_keeps_the_last_checkpoint_and_resume_recovers(full_disk):
  r = full_disk
  assert r["latest_after_full"] == 1  # checkpoint 2 never became "complete"
  assert "1" in r["entries_after_full"]
  assert "2" not in r["entries_after_full"]
  assert json.loads(r["config_after_full"])["run_name"] == "r"
  assert r["entries_after_ro"] == r["entries_after_full"]  # untouched
  code, err = r["resume_room"]
  assert code == 0, err
  assert [row["epoch"] for row in r["rows"]] == [1, 2]
  assert r["summary"]


def test_full_disk_is_one_line_exit_2(full_disk):
  code, err = full_disk["full"]
  assert code == 2, (code, err[-2000:])
  line = _error_after_start_line(err, "No space left on device")
  assert "cannot write checkpoint 2" in line and "checkpoint 1 " in line


def test_resume_on_read_only_run_dir_is_one_line_exit_2(full_disk):
  code, err = full_disk["resume_ro"]
  assert code == 2, (code, err[-2000:])
  _one_error_line(err, "Read-only file system")


def _error_after_start_line(err: str, needle: str) -> str:
  """The run's "[rda] ... -> RUN" line, then exactly one error line."""
  lines = _lines(err)
  assert len(lines) == 2 and lines[0].startswith("[rda] "), err
  assert lines[1].startswith("rda-train: error:") and needle in lines[1], err
  assert "Traceback" not in err
  return lines[1]


@pytest.mark.parametrize("pages, what", [(1, "lock"), (2, "metrics")])
def test_full_disk_on_lock_or_metrics_write_is_one_line_exit_2(
    tmp_path, pages, what):
  """One free 4 KiB page holds config.json, none is left for the pid in the
  lock file; two free pages hold config.json and the lock, none is left for
  the first metrics line."""
  mnt = tmp_path / "mnt"
  with _tmpfs(mnt, "64k"):
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    (mnt / "filler").write_bytes(b"\0" * (free - pages * 4096))
    code, err = _main(["--out", mnt, "--run-name", "m", *SMALL, *RDA1, 1])
    assert code == 2, (code, err[-2000:])
    line = _error_after_start_line(err, "No space left on device")
    name = {"lock": ".lock", "metrics": "metrics.jsonl"}[what]
    assert str(mnt / "m" / name) in line, line


def test_full_disk_at_the_first_checkpoint_is_one_line_exit_2(tmp_path):
  """2 MiB cannot hold checkpoint 1 (about 2.6 MiB): the write fails inside
  orbax, with writes still in flight. A real process, because orbax's and
  tensorstore's reports go to file descriptor 2, not to sys.stderr."""
  mnt = tmp_path / "mnt"
  with _tmpfs(mnt, "2m"):
    r = subprocess.run([PY, "-m", "train", "--out", str(mnt), "--run-name",
                        "r", *SMALL, *RDA1, "1", "--checkpoint-every", "1"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    line = _error_after_start_line(r.stderr, "No space left on device")
    assert "cannot write checkpoint 1" in line
    assert "no earlier checkpoint exists" in line
    assert _latest(mnt / "r") is None


_LATE_REPORT = """
import sys, threading
from train import checkpoint
try:
  with checkpoint._fd2_to_memory():
    print("captured, then dropped", file=sys.stderr)
    raise ValueError("write failed")
except ValueError:
  pass
# Tensorstore's late reports: a traceback printed from another thread, after
# the failure has surfaced, and a write straight to descriptor 2.
t = threading.Thread(target=lambda: print("LATE traceback", file=sys.stderr))
t.start(); t.join()
import os; os.write(2, b"LATE fd2\\n")
print("rda-train: error: the one line", file=sys.stderr)
"""


def test_late_reports_after_a_failed_write_stay_off_the_terminal():
  """The race behind a flaky full-disk run, made deterministic: a traceback
  from another thread after the failure reached the terminal through
  sys.stderr (1 fresh-clone run in about 10)."""
  r = subprocess.run([PY, "-c", _LATE_REPORT], cwd=ROOT, env=ENV,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert r.stderr == "rda-train: error: the one line\n"


# --- Corrupt inputs, end to end through the CLI -------------------------------


def _write_images(root: Path, classes=("a", "b"), per_class=24) -> Path:
  for c, name in enumerate(classes):
    d = root / name
    d.mkdir(parents=True)
    for i in range(per_class):
      px = np.full((8, 8), (c * 120 + i * 3) % 256, np.uint8)
      px[c * 4:(c + 1) * 4] = 255  # the class is visible in the pixels
      Image.fromarray(px, "L").save(d / f"{i:03d}.png")
  return root


def _corrupt(kind: str, tmp: Path) -> tuple[list, str]:
  """Builds the corrupt source; returns (extra args, what the error names)."""
  src = _write_images(tmp / "data")
  args = ["--dataset", "folder", "--data-dir", src]
  if kind == "truncated-image":
    f = src / "a" / "005.png"
    f.write_bytes(f.read_bytes()[:40])
    return args, "a/005.png"
  if kind == "not-an-image":
    (src / "b" / "notes.png").write_text("not a png at all")
    return args, "b/notes.png"
  if kind == "empty-class":
    (src / "c").mkdir()
    return args, "class folder c is empty"
  if kind == "not-a-tarball":
    bad = tmp / "data.tar.gz"
    bad.write_bytes(os.urandom(2000))
    return ["--dataset", "folder", "--data-dir", bad], str(bad)
  if kind == "truncated-tarball":
    good = tmp / "full.tar.gz"
    with tarfile.open(good, "w:gz") as t:
      for name in ("a", "b"):
        t.add(src / name, arcname=name)
    cut = tmp / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return ["--dataset", "folder", "--data-dir", cut], str(cut)
  if kind == "test-label-out-of-range":
    test = _write_images(tmp / "test", classes=("a", "b", "zz"), per_class=3)
    return args + ["--test-dir", test], "not in training: zz"
  if kind == "num-classes-mismatch":
    return args + ["--num-classes", 3], "--num-classes 3"
  raise ValueError(kind)


@pytest.mark.parametrize("kind", [
    "truncated-image", "not-an-image", "empty-class", "not-a-tarball",
    "truncated-tarball", "test-label-out-of-range", "num-classes-mismatch"])
def test_corrupt_input_is_named_exit_2_no_run_dir(tmp_path, kind):
  args, needle = _corrupt(kind, tmp_path)
  out = tmp_path / "runs"
  code, err = _main(["--out", out, "--cache-dir", tmp_path / "cache",
                     "--batch-size", 8, "--progress", "none", "--epochs", 1,
                     "--asr-epochs", 0, *args])
  assert code == 2, err
  _one_error_line(err, needle)
  assert _runs(out) == []


def test_skip_bad_images_skips_and_counts(tmp_path):
  """--skip-bad-images: the run trains on the readable images; the count and
  the first name come as a SkippedImagesWarning (on stderr from the CLI)."""
  from train.data import SkippedImagesWarning
  args, _ = _corrupt("truncated-image", tmp_path)
  (tmp_path / "data" / "b" / "x.png").write_text("junk")
  out = tmp_path / "runs"
  with pytest.warns(SkippedImagesWarning,
                    match=r"skipped 2 unreadable image file\(s\), the first "
                    r"is a/005\.png"):
    code, err = _main(["--out", out, "--cache-dir", tmp_path / "cache",
                       "--batch-size", 8, "--progress", "none", "--epochs", 1,
                       "--asr-epochs", 0, "--val-fraction", 0,
                       "--run-name", "s", "--skip-bad-images", *args])
  assert code == 0, err
  assert " 47 train " in err  # 49 files, 2 unreadable
  summary = json.loads((out / "s" / "summary.json").read_text())
  assert summary["skipped_images"] == 2


# --- Determinism ------------------------------------------------------------------


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
  out = tmp_path_factory.mktemp("det")
  args = [*SMALL, *RDA1, 1, "--checkpoint-every", 1]
  for name in ("a", "b"):
    code, err = _main(["--out", out, "--run-name", name, *args])
    assert code == 0, err
  return out / "a", out / "b"


def test_same_seed_same_metrics_on_cpu(twice):
  a, b = twice
  strip = lambda rows: [{k: v for k, v in r.items()
                         if k not in ("images_per_sec", "compile_s")}
                        for r in rows]
  assert strip(report.read_metrics(a)) == strip(report.read_metrics(b))
  sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
  sa.pop("wall_s"), sb.pop("wall_s")
  assert sa == sb


# --- Concurrency: run_lock --------------------------------------------------------

_HOLDER = """
import sys
from pathlib import Path
from train._lock import run_lock
with run_lock(Path(sys.argv[1])):
  print("locked", flush=True)
  sys.stdin.read()
print("released", flush=True)
"""


def _holder(run_dir: Path) -> subprocess.Popen:
  p = subprocess.Popen([PY, "-c", _HOLDER, str(run_dir)], cwd=ROOT, env=ENV,
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "locked", p.stderr.read()
  return p


def test_run_lock_refuses_a_second_process_and_names_the_holder(tmp_path):
  p = _holder(tmp_path)
  try:
    with pytest.raises(UsageError) as e:
      with run_lock(tmp_path):
        pass
    assert str(e.value) == (f"{tmp_path} is in use by another rda-train "
                            f"process (pid {p.pid})")
  finally:
    p.stdin.close()
    assert p.stdout.readline().strip() == "released"
    p.wait(timeout=10)
  with run_lock(tmp_path) as path:  # free again
    assert path.read_text().strip() == str(os.getpid())
    # ... and now this process holds it against a child.
    r = subprocess.run([PY, "-c", _HOLDER, str(tmp_path)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, input="")
    assert r.returncode != 0
    assert f"in use by another rda-train process (pid {os.getpid()})" in r.stderr


def test_run_lock_is_released_when_the_holder_is_killed(tmp_path):
  p = _holder(tmp_path)
  p.send_signal(signal.SIGKILL)
  p.wait(timeout=10)
  with run_lock(tmp_path):  # no stale lock
    pass


def test_run_lock_same_process_and_bad_directory(tmp_path):
  with run_lock(tmp_path):
    with pytest.raises(UsageError, match="in use by another rda-train"):
      with run_lock(tmp_path):
        pass
  with pytest.raises(UsageError, match="cannot open the lock file"):
    with run_lock(tmp_path / "missing"):
      pass


def test_resume_of_a_run_killed_before_its_first_epoch(twice, tmp_path):
  run_dir = tmp_path / "early"
  run_dir.mkdir()
  shutil.copy(twice[0] / "config.json", run_dir / "config.json")
  code, err = _main(["--resume", run_dir])
  assert code == 0, (code, err[-2000:])
  assert [r["epoch"] for r in report.read_metrics(run_dir)] == [1, 2]


def test_resume_of_a_locked_run_dir_is_refused(twice, tmp_path):
  run_dir = tmp_path / "locked"
  shutil.copytree(twice[0], run_dir)
  before = (run_dir / "metrics.jsonl").read_text()
  p = _holder(run_dir)
  try:
    code, err = _main(["--resume", run_dir])
  finally:
    p.stdin.close()
    p.wait(timeout=10)
  assert code == 2, err
  _one_error_line(err, f"{run_dir} is in use by another rda-train process "
                       f"(pid {p.pid})")
  assert (run_dir / "metrics.jsonl").read_text() == before


# --- Resume of a damaged or finished run (issue 13) -------------------------------


def _unfinished_copy(twice, tmp_path, name="r") -> Path:
  """A copy of a 2-epoch run with checkpoints 1 and 2 and no summary: what a
  run killed right after its last checkpoint leaves."""
  run_dir = tmp_path / name
  shutil.copytree(twice[0], run_dir)
  (run_dir / "summary.json").unlink()
  return run_dir


def _snapshot(run_dir: Path) -> dict[str, bytes]:
  return {str(p.relative_to(run_dir)): p.read_bytes()
          for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_resume_of_a_finished_run_changes_nothing(twice, tmp_path):
  run_dir = tmp_path / "done"
  shutil.copytree(twice[0], run_dir)
  before = _snapshot(run_dir)
  code, err = _main(["--resume", run_dir])
  assert code == 0, err
  assert _lines(err) == [f"rda-train: {run_dir} is finished (2 epochs); "
                         "nothing to do"]
  assert _snapshot(run_dir) == before


@pytest.mark.parametrize("damage, needle", [
    ("not-an-object", "must hold a JSON object, not list"),
    ("wrong-type", "epochs: expected an integer, got '3'"),
    ("corrupt-metrics", "metrics.jsonl:1: not valid JSON"),
    ("renumbered-metrics", "row 2 has epoch 5, expected 2"),
    ("lost-metrics-lines", "metrics.jsonl holds epochs 1-1 but the checkpoint "
                           "is of epoch 2: the log lost lines"),
    ("missing-metrics", "metrics.jsonl holds no epochs but the checkpoint is "
                        "of epoch 2"),
])
def test_resume_of_a_damaged_run_dir_is_one_line_exit_2(twice, tmp_path,
                                                        damage, needle):
  run_dir = _unfinished_copy(twice, tmp_path)
  cfg, metrics = run_dir / "config.json", run_dir / "metrics.jsonl"
  rows = metrics.read_text().splitlines()
  if damage == "not-an-object":
    cfg.write_text("[1, 2]")
  elif damage == "wrong-type":
    cfg.write_text(json.dumps(dict(json.loads(cfg.read_text()), epochs="3")))
  elif damage == "corrupt-metrics":
    metrics.write_text("{garbage\n" + rows[1] + "\n")
  elif damage == "renumbered-metrics":
    metrics.write_text(rows[0] + "\n" + rows[1].replace('"epoch": 2',
                                                        '"epoch": 5') + "\n")
  elif damage == "lost-metrics-lines":
    metrics.write_text(rows[0] + "\n")
  else:
    metrics.unlink()
  before = _snapshot(run_dir)
  code, err = _main(["--resume", run_dir])
  assert code == 2, err
  _one_error_line(err, needle)
  assert _snapshot(run_dir) == before


_FALLBACK = """
import sys
from pathlib import Path
import numpy as np
from train.checkpoint import Checkpoints
run, how = Path(sys.argv[1]), sys.argv[2].split(",")
like = {"w": np.zeros((64, 64), np.float32), "b": np.zeros(64, np.int32)}
ck = Checkpoints(run)
for epoch in (1, 2):
  ck.save(epoch, {k: v + epoch for k, v in like.items()})
ck.close()
for epoch, kind in zip((2, 1), how):
  d = run / "checkpoints" / str(epoch) / "default"
  if kind == "missing":
    (d / "manifest.ocdbt").unlink()
  elif kind == "truncated":
    for f in d.rglob("d/*"):
      f.write_bytes(f.read_bytes()[:10])
ck = Checkpoints(run)
notes = []
epoch, state = ck.restore_newest_intact(like, notes.append)
print(epoch, float(state["w"][0, 0]), int(state["b"][0]), ck.latest(), notes)
ck.save(2, state)  # the damaged epoch's number is free again
ck.close()
"""


def _fallback(run_dir: Path, how: str) -> subprocess.CompletedProcess:
  # A subprocess: after a failed read, orbax's late reports are kept off
  # descriptor 2 for the rest of the process, which must not be pytest's.
  return subprocess.run([PY, "-c", _FALLBACK, str(run_dir), how], cwd=ROOT,
                        env=ENV, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("how", ["truncated"])
def test_restore_falls_back_from_a_damaged_latest_checkpoint(tmp_path, how):
  r = _fallback(tmp_path, how + ",intact")
  assert r.returncode == 0, r.stderr
  assert "Traceback" not in r.stderr
  epoch, w, b, latest, notes = r.stdout.split(" ", 4)
  assert (epoch, w, b, latest) == ("1", "1.0", "1", "1")
  assert notes.startswith("['checkpoint 2 (")
  assert notes.rstrip().endswith(
      f"in {tmp_path}/checkpoints is damaged; moved to {tmp_path}/"
      "checkpoints-damaged and resuming from checkpoint 1']")
  assert (tmp_path / "checkpoints-damaged" / "2").is_dir()


def test_resume_with_no_intact_checkpoint_is_one_line_exit_2(tmp_path):
  r = _fallback(tmp_path, "missing,truncated")
  assert r.returncode == 1
  assert r.stderr.splitlines()[-1].startswith(
      f"train._errors.UsageError: no intact checkpoint in {tmp_path}/"
      "checkpoints: checkpoint 2 (")
  assert "start the run again" in r.stderr


# --- Caught before anything is written (issue 13) ---------------------------------


def _refused(tmp_path, argv, needle, env=None) -> None:
  out = tmp_path / "runs"
  old = {k: os.environ.get(k) for k in (env or {})}
  os.environ.update(env or {})
  try:
    code, err = _main(["--out", out, *SMALL, *argv])
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  assert code == 2, (code, err[-2000:])
  _one_error_line(err, needle)
  assert _runs(out) == []


@pytest.mark.parametrize("argv, needle", [
    (["--devices", "64"], "--devices 64: 1 device(s) visible"),
    (["--fsdp", "3"], "--fsdp 3 must divide the device count 1"),
    (["--compare", "sgd,prune-finetune", *RDA1, 0],
     "--compare: prune-finetune needs --target-sparsity"),
    (["--epochs", "10000000000"], "--epochs + --asr-epochs 10000000010 is "
     "more than the 2147483647 steps"),
    (["--epochs", "200000000"], "--epochs + --asr-epochs 200000010 x 21 "
     "steps per epoch is more than"),
    (["--gamma-schedule", "0:1,99999999999999999999:1"],
     "--gamma-schedule: epoch 99999999999999999999 is more than"),
    (["--data-dir", "/tmp"], "data_dir /tmp is not used by the digits data "
     "set; to train on an image folder or tarball, add --dataset folder"),
    (["--coordinator", "no port", "--num-processes", "2", "--process-id", "1"],
     "--coordinator: expected HOST:PORT with a port in [1, 65535], got "
     "'no port'"),
    (["--coordinator", "localhost:70000", "--num-processes", "2",
      "--process-id", "1"], "got 'localhost:70000'"),
])
def test_bad_launch_is_refused_before_anything_is_written(tmp_path, argv,
                                                          needle):
  _refused(tmp_path, argv, needle)


@contextlib.contextmanager
def _silent_port():
  """A local port whose connections hang: its accept queue is full, so the
  kernel drops new SYNs (as a coordinator host that has gone quiet)."""
  with contextlib.ExitStack() as stack:
    srv = stack.enter_context(socket.socket())
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    for _ in range(4):
      c = stack.enter_context(socket.socket())
      c.setblocking(False)
      c.connect_ex(("127.0.0.1", port))
    time.sleep(0.2)
    yield port


@pytest.mark.parametrize("case", ["refused", "silent", "bad-wait"])
def test_unreachable_coordinator_times_out_with_one_line(tmp_path, case):
  # A coordinator that refuses, or one that never answers (each connection
  # attempt is bounded too), ends the wait with one line; a wait that cannot
  # be read is refused rather than guessed.
  t0 = time.monotonic()
  launch = ["--num-processes", "2", "--process-id", "1", "--coordinator"]
  if case == "refused":
    _refused(tmp_path, [*launch, "127.0.0.1:1"],
             "--coordinator 127.0.0.1:1: no answer after 1 s (Connection "
             "refused); is process 0 running there?",
             env={"RDA_COORDINATOR_TIMEOUT": "1"})
  elif case == "silent":
    with _silent_port() as port:
      _refused(tmp_path, [*launch, f"127.0.0.1:{port}"],
               f"--coordinator 127.0.0.1:{port}: no answer after 1 s (timed "
               "out); is process 0 running there?",
               env={"RDA_COORDINATOR_TIMEOUT": "1"})
  else:
    _refused(tmp_path, [*launch, "127.0.0.1:1"],
             "RDA_COORDINATOR_TIMEOUT must be a whole number of seconds >= 1, "
             "got '1.5'", env={"RDA_COORDINATOR_TIMEOUT": "1.5"})
  assert time.monotonic() - t0 < 30


def test_compare_whose_later_run_dir_exists_trains_nothing(tmp_path):
  (tmp_path / "runs" / "x-sgd").mkdir(parents=True)
  code, err = _main(["--out", tmp_path / "runs", *SMALL, "--run-name", "x",
                     "--compare", "rda,sgd", *RDA1, 0])
  assert code == 2, err
  _one_error_line(err, f"run directory {tmp_path}/runs/x-sgd already exists")
  assert [p.name for p in _runs(tmp_path / "runs")] == ["x-sgd"]


def test_target_sparsity_from_another_model_is_refused(twice, tmp_path):
  source = tmp_path / "src"
  shutil.copytree(twice[0], source)
  cfg = json.loads((source / "config.json").read_text())
  (source / "config.json").write_text(json.dumps(dict(cfg, model="vgg16bn")))
  _refused(tmp_path, ["--method", "prune-finetune", "--target-sparsity-from",
                      source],
           f"--target-sparsity-from: {source} trained model 'vgg16bn', this "
           "run model 'small_cnn'")


def test_default_run_names_differ_by_seed():
  from train import preflight, run as run_lib
  now = __import__("datetime").datetime(2026, 11, 27, 14, 0, 0)
  a, b = (Config(seed=s) for s in (0, 1))
  dirs = {rundir.path(c, "rda", preflight.stamp(c, now)) for c in (a, b)}
  assert len(dirs) == 2, dirs


def test_no_lock_file_is_left_behind(twice, tmp_path):
  assert not (twice[0] / ".lock").exists()
  with run_lock(tmp_path) as path:
    assert path.exists()
  assert not path.exists()
  with run_lock(tmp_path):  # and the directory can be locked again
    pass


def test_each_signal_is_acknowledged_at_once_with_one_line(capfd):
  from train import interrupts
  got = []
  handler = interrupts.recorder(got)
  handler(signal.SIGINT, None)
  handler(signal.SIGINT, None)
  assert got == [signal.SIGINT, signal.SIGINT]
  assert capfd.readouterr().err.splitlines() == [
      "rda-train: SIGINT received: stopping at the end of this epoch, with a "
      "checkpoint (at once while the data loads or in a new run's first "
      "epoch)",
      "rda-train: SIGINT received again: still stopping at the end of this "
      "epoch (SIGKILL stops at once, losing the epochs since the last "
      "checkpoint)"]


def test_interrupt_before_any_checkpoint_stops_inside_the_epoch(
    tmp_path, monkeypatch):
  """SIGINT at step 3 of a new run's first CPU epoch (20 steps): no epoch
  is done, so nothing is lost by stopping at once, and the run does. (After
  an epoch, even with no checkpoint yet, the stop waits for the epoch's end
  and saves: test_sigterm_sigint_sigkill_then_resume_completes.)"""
  steps = []
  real_step = report.Progress.step

  def step(self, done, total, pending=None):
    steps.append(done)
    if done == 3:
      os.kill(os.getpid(), signal.SIGINT)
    return real_step(self, done, total, pending)

  monkeypatch.setattr(report.Progress, "step", step)
  code, err = _main(["--out", tmp_path, "--run-name", "r", *SMALL, *RDA1,
                     "1"])
  assert code == 130, err
  assert steps == [1, 2, 3]
  assert "interrupted in epoch 1, before any checkpoint: stopped at once" in err
  assert not (tmp_path / "r" / "checkpoints").exists() or not any(
      (tmp_path / "r" / "checkpoints").iterdir())
  assert report.read_metrics(tmp_path / "r") == []


def test_compile_time_is_reported_apart_from_images_per_sec(twice):
  from train import timing
  timing.take_compile_seconds()
  f = jax.jit(lambda x: jnp.tanh(x) * 3.0 + x)  # new: compiled on first call
  f(jnp.ones(7)).block_until_ready()
  assert timing.take_compile_seconds() > 0
  f(jnp.ones(7)).block_until_ready()  # compiled already
  assert timing.take_compile_seconds() == 0
  rows = report.read_metrics(twice[0])
  # Epoch 1 compiles the training step; epoch 2 reuses it.
  assert rows[0]["compile_s"] > 0
  assert rows[1]["compile_s"] < rows[0]["compile_s"]
