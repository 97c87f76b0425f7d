"""Two processes joined by jax.distributed (CPU, loopback) train like one."""

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


def test_two_processes_agree_with_one(tmp_path):
  assert cli.main(["--out", str(tmp_path), "--run-name", "single", *ARGS]) == 0
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             XLA_FLAGS="")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "train", "--coordinator", f"127.0.0.1:{port}",
       "--num-processes", "2", "--process-id", str(i), "--out",
       str(tmp_path), "--run-name", "multi", *ARGS],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
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
