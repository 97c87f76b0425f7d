"""Fault injection: SIGKILL a process at random moments while it saves
checkpoints through ``train.checkpoint.Checkpoints``, many times over, and
check after every kill that the latest checkpoint restores to exactly the
value that was saved at that step.

Three modes:

  writer RUN_DIR     resume from the latest checkpoint (restore it and check
                     it against the value it must hold, as ``--resume`` does),
                     then save steps latest+1, latest+2, ... until killed.
                     Prints "ready", then "begin N" / "saved N" around each
                     save and "resumed N ok" (or exits 3) after the check.
  check RUN_DIR      restore the latest checkpoint and check it; print JSON.
  loop RUN_DIR       the driver: start a writer, wait until it is ready, sleep
                     a random delay, SIGKILL it; repeat --kills times, then
                     check. Prints one JSON summary; exit 1 on any failure.

Run from the repository root:

  PYTHONPATH=. .venv/bin/python scripts/faults/ckpt_kill.py loop \\
      /tmp/ckpt-kill --kills 200 --seed 1

The pytree is a TrainState (train.engine) with the optimizer state the
trainer really uses (apply_if_finite around RDA + ASR), about 8 MB of float32
so that a save lasts long enough to be hit; every leaf is filled with a
value derived from the step, so a restored tree shows which step it is.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tree(step: int):
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  import rda_optax
  from train import engine

  params = {"conv": {"kernel": jnp.ones((3, 3, 64, 128), jnp.float32),
                     "bias": jnp.zeros((128,), jnp.float32)},
            "dense": {"kernel": jnp.ones((2048, 384), jnp.float32),
                      "bias": jnp.zeros((384,), jnp.float32)}}
  tx = engine.wrap_finite(optax.chain(rda_optax.rda(1.0, 1e-4),
                                      rda_optax.freeze_zeros(100)))
  state = engine.TrainState(params, {"bn": {"mean": jnp.zeros((128,))}},
                            tx.init(params), jnp.zeros([], jnp.int32))
  leaves, treedef = jax.tree.flatten(state)
  # Float leaf i at step s holds normal noise seeded by (s, i) (it does not
  # compress, so a save writes all 8 MB); integer leaves hold s * 1000 + i,
  # booleans s odd. Two steps, or two leaves, never hold the same values.
  out = []
  for i, leaf in enumerate(leaves):
    leaf = np.asarray(leaf)
    if leaf.dtype == np.bool_:
      v = np.full(leaf.shape, step % 2 == 1, leaf.dtype)
    elif np.issubdtype(leaf.dtype, np.floating):
      v = np.random.default_rng([step, i]).standard_normal(
          leaf.shape).astype(leaf.dtype)
    else:
      v = np.full(leaf.shape, step * 1000 + i, leaf.dtype)
    out.append(jnp.asarray(v))
  return jax.tree.unflatten(treedef, out)


def _equal(a, b) -> bool:
  import jax
  import numpy as np
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  return ta == tb and all(
      x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y)
      for x, y in zip(map(np.asarray, la), map(np.asarray, lb)))


def check(run_dir: Path) -> dict:
  """Restores the latest checkpoint (if any) and compares it."""
  from train.checkpoint import Checkpoints
  ck = Checkpoints(run_dir)
  try:
    latest = ck.latest()
    steps = sorted(ck._mngr.all_steps())
    if latest is None:
      return dict(latest=None, steps=steps, ok=True)
    restored = ck.restore(latest, _tree(0))
    return dict(latest=latest, steps=steps, ok=_equal(restored, _tree(latest)))
  finally:
    ck.close()


def writer(run_dir: Path) -> int:
  from train.checkpoint import Checkpoints
  ck = Checkpoints(run_dir)
  latest = ck.latest()
  if latest is not None:
    restored = ck.restore(latest, _tree(0))
    if not _equal(restored, _tree(latest)):
      print(f"resumed {latest} MISMATCH", flush=True)
      return 3
    print(f"resumed {latest} ok", flush=True)
  step = (latest or 0) + 1
  tree = _tree(step)
  print("ready", flush=True)
  while True:
    print(f"begin {step}", flush=True)
    ck.save(step, tree)
    print(f"saved {step}", flush=True)
    step += 1
    tree = _tree(step)


def loop(run_dir: Path, kills: int, seed: int, max_delay: float,
         fresh: bool = True) -> dict:
  """Kills ``kills`` writers at random moments; returns the tally."""
  if fresh and run_dir.exists():
    shutil.rmtree(run_dir)
  run_dir.mkdir(parents=True, exist_ok=True)
  rng = random.Random(seed)
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  tally = dict(kills=0, mid_save=0, between_saves=0, before_first_save=0,
               resumes_ok=0, left_tmp_dir=0, failures=[], reported_saved_max=0,
               latest_after_each=[])
  t0 = time.time()
  for i in range(kills):
    p = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "writer", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        cwd=ROOT)
    lines = []
    while True:
      line = p.stdout.readline()
      if not line:
        break
      line = line.strip()
      lines.append(line)
      if line == "ready":
        break
    if p.poll() is not None:  # died before ready: a failed resume check
      lines += p.stdout.read().split()
      tally["failures"].append(f"kill {i}: writer exited {p.returncode}: "
                               f"{lines[-3:]}")
      break
    if lines and lines[0].startswith("resumed"):
      tally["resumes_ok"] += 1
    time.sleep(rng.uniform(0.0, max_delay))
    p.send_signal(signal.SIGKILL)
    rest = p.stdout.read().split("\n")
    p.wait()
    lines += [l.strip() for l in rest if l.strip()]
    tally["kills"] += 1
    last = lines[-1]
    if last.startswith("begin"):
      tally["mid_save"] += 1
    elif last.startswith("saved"):
      tally["between_saves"] += 1
    else:
      tally["before_first_save"] += 1
    saved = [int(l.split()[1]) for l in lines if l.startswith("saved")]
    if saved:
      tally["reported_saved_max"] = max(tally["reported_saved_max"], saved[-1])
    # What the directory holds now, without a checkpoint manager: a step
    # reported saved must be there; anything else must be a tmp directory.
    entries = sorted(os.listdir(run_dir / "checkpoints")) if (
        run_dir / "checkpoints").exists() else []
    finished = [int(e) for e in entries if e.isdigit()]
    if any(not e.isdigit() for e in entries):
      tally["left_tmp_dir"] += 1  # an unfinished save, left for orbax
    if saved and saved[-1] not in finished:
      tally["failures"].append(f"kill {i}: step {saved[-1]} was reported "
                               f"saved but is not on disk: {entries}")
    tally["latest_after_each"].append(max(finished) if finished else None)
  result = check(run_dir)
  tally["final"] = result
  if not result["ok"]:
    tally["failures"].append(f"final check failed: {result}")
  if result["latest"] is not None and result["latest"] < tally["reported_saved_max"]:
    tally["failures"].append(
        f"latest {result['latest']} < last reported save "
        f"{tally['reported_saved_max']}")
  tally["wall_s"] = round(time.time() - t0, 1)
  return tally


def main() -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("mode", choices=("writer", "check", "loop"))
  ap.add_argument("run_dir", type=Path)
  ap.add_argument("--kills", type=int, default=20)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--max-delay", type=float, default=1.0,
                  help="kill after uniform(0, this) seconds past 'ready'")
  a = ap.parse_args()
  if a.mode == "writer":
    return writer(a.run_dir)
  if a.mode == "check":
    r = check(a.run_dir)
    print(json.dumps(r))
    return 0 if r["ok"] else 1
  tally = loop(a.run_dir, a.kills, a.seed, a.max_delay)
  tally.pop("latest_after_each")
  print(json.dumps(tally))
  return 1 if tally["failures"] else 0


if __name__ == "__main__":
  sys.exit(main())
