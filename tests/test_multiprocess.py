"""Two processes joined by jax.distributed (CPU, loopback) train like one.

With replicated data, two 1-device processes equal one 1-device process.
With sharded data (the multi-process default), each process holds only its
devices' row shards, and two 1-device processes equal one process with two
(simulated) devices: the batches depend on the device count only.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from train import cli
from train.checkpoint import Checkpoints

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--epochs", "2", "--asr-epochs", "1", "--batch-size", "256",
        "--progress", "none", "--method", "sgd"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _params(run_dir):
  ck = Checkpoints(run_dir)
  t = ck.restore_local()
  ck.close()
  return t["params"]


def _two_processes(tmp_path, name, *extra):
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             XLA_FLAGS="")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "train", "--coordinator", f"127.0.0.1:{port}",
       "--num-processes", "2", "--process-id", str(i), "--out",
       str(tmp_path), "--run-name", name, *ARGS, *extra],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]


def test_two_processes_agree_with_one(tmp_path):
  assert cli.main(["--out", str(tmp_path), "--run-name", "single", *ARGS]) == 0
  _two_processes(tmp_path, "multi", "--data-sharding", "replicated")
  single = json.loads((tmp_path / "single" / "summary.json").read_text())
  multi = json.loads((tmp_path / "multi" / "summary.json").read_text())
  assert (single["processes"], multi["processes"]) == (1, 2)
  assert multi["devices"] == 2
  assert multi["test_top1"] == pytest.approx(single["test_top1"], abs=0.3)
  a, b = _params(tmp_path / "single"), _params(tmp_path / "multi")
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), a, b)
  # Only process 0 wrote the log: one line per epoch.
  lines = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 3


def test_sharded_data_two_processes_agree_with_two_devices(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  r = subprocess.run(
      [sys.executable, "-m", "train", "--out", str(tmp_path), "--run-name",
       "two-devices", "--data-sharding", "sharded", *ARGS],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
  assert r.returncode == 0, r.stderr[-3000:]
  _two_processes(tmp_path, "two-processes")  # sharded: the default here
  one = json.loads((tmp_path / "two-devices" / "summary.json").read_text())
  two = json.loads((tmp_path / "two-processes" / "summary.json").read_text())
  assert (one["processes"], two["processes"]) == (1, 2)
  assert one["data_sharding"] == two["data_sharding"] == "sharded"
  # 1,293 training images, 646 per device (one left out of the deal).
  assert one["train_images_per_device"] == two["train_images_per_device"] == 646
  assert two["test_top1"] == pytest.approx(one["test_top1"], abs=0.3)
  a = _params(tmp_path / "two-devices")
  b = _params(tmp_path / "two-processes")
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), a, b)
