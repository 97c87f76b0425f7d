"""Fault injection: SIGKILL a process at random moments while it saves
checkpoints through ``train.checkpoint.Checkpoints``, many times over, and
check after every kill that the latest checkpoint restores to exactly the
value that was saved at that step.

Modes:

  writer RUN_DIR     resume from the latest checkpoint (restore it and check
                     it against the value it must hold, as ``--resume`` does),
                     then save steps latest+1, latest+2, ... until killed.
                     Prints "ready", then "begin N" / "saved N" around each
                     save, after "resumed N ok" (or exits 3 on a mismatch).
  check RUN_DIR      restore the latest checkpoint and check it; print JSON.
  loop RUN_DIR       the driver: start a writer, wait until it is ready, sleep
                     uniform(0, --max-delay) seconds, SIGKILL it; --kills
                     times, then check. Prints one JSON summary; exit 1 on any
                     failure.

``loop --start fork`` (the default) imports JAX and orbax once, without
starting a backend or any thread, and forks each writer from that process:
a writer is ready in about 0.1 s instead of 1.5 s, so many more kills fit in
the same time. ``--start exec`` runs each writer as a fresh interpreter
(``python ckpt_kill.py writer``), as a user's process would start.

Run from the repository root:

  PYTHONPATH=. .venv/bin/python scripts/faults/ckpt_kill.py loop \\
      /tmp/ckpt-kill --kills 500 --seed 1

The pytree is a TrainState (train.engine) holding the optimizer state the
trainer really uses (apply_if_finite around RDA + ASR), about 9 MB of float32
noise seeded by the step, so a save takes ~0.1-0.2 s and does not compress;
a restored tree therefore shows exactly which step it is.
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
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))


_TEMPLATE = []


def _template():
  """Shapes and dtypes of the TrainState, traced without running anything
  (no backend, no thread: the fork driver calls this before forking)."""
  if not _TEMPLATE:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import rda_optax
    from train import engine

    params = {"conv": {"kernel": np.ones((3, 3, 64, 128), np.float32),
                       "bias": np.zeros((128,), np.float32)},
              "dense": {"kernel": np.ones((2048, 384), np.float32),
                        "bias": np.zeros((384,), np.float32)}}
    tx = optax.chain(rda_optax.rda(1.0, 1e-4), rda_optax.freeze_zeros(100))
    _TEMPLATE.append(jax.eval_shape(
        lambda p: engine.init_state(tx, p, {"bn": {"mean": jnp.zeros((128,))}}),
        params))
  return _TEMPLATE[0]


def _tree(step: int):
  """The TrainState saved at ``step``, as jax arrays on the device."""
  import jax
  import numpy as np

  leaves, treedef = jax.tree.flatten(_template())
  # Float leaf i at step s holds normal noise seeded by (s, i); integer
  # leaves hold s * 1000 + i, booleans s odd. Two steps, or two leaves,
  # never hold the same values.
  out = []
  for i, leaf in enumerate(leaves):
    dtype = np.dtype(leaf.dtype)
    if dtype == np.bool_:
      v = np.full(leaf.shape, step % 2 == 1, dtype)
    elif np.issubdtype(dtype, np.floating):
      v = np.random.default_rng([step, i]).standard_normal(
          leaf.shape).astype(dtype)
    else:
      v = np.full(leaf.shape, step * 1000 + i, dtype)
    out.append(jax.device_put(v))
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
    steps = sorted(ck._mngr.all_steps())  # pylint: disable=protected-access
    if latest is None:
      return dict(latest=None, steps=steps, ok=True)
    restored = ck.restore(latest, _tree(0))
    return dict(latest=latest, steps=steps, ok=_equal(restored, _tree(latest)))
  finally:
    ck.close()


def writer(run_dir: Path, out=None) -> int:
  out = out or sys.stdout

  def say(msg):
    out.write(msg + "\n")
    out.flush()

  from train.checkpoint import Checkpoints
  ck = Checkpoints(run_dir)
  latest = ck.latest()
  if latest is not None:
    restored = ck.restore(latest, _tree(0))
    if not _equal(restored, _tree(latest)):
      say(f"resumed {latest} MISMATCH")
      return 3
    say(f"resumed {latest} ok")
  step = (latest or 0) + 1
  tree = _tree(step)
  say("ready")
  while True:
    say(f"begin {step}")
    ck.save(step, tree)
    say(f"saved {step}")
    step += 1
    tree = _tree(step)


def _spawn_exec(run_dir: Path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  p = subprocess.Popen(
      [sys.executable, str(Path(__file__).resolve()), "writer", str(run_dir)],
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
      cwd=ROOT)
  return p.pid, p.stdout, p


def _spawn_fork(run_dir: Path):
  r, w = os.pipe()
  pid = os.fork()
  if pid == 0:  # the writer
    code = 1
    try:
      os.close(r)
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, 2)
      out = os.fdopen(w, "w")
      try:
        code = writer(run_dir, out)
      except BaseException as e:  # pylint: disable=broad-except
        out.write(f"error {type(e).__name__}: {e}\n")
        out.flush()
    finally:
      os._exit(code)  # pylint: disable=protected-access
  os.close(w)
  return pid, os.fdopen(r), None


def loop(run_dir: Path, kills: int, seed: int, max_delay: float,
         start: str = "fork") -> dict:
  """Kills ``kills`` writers at random moments; returns the tally."""
  if run_dir.exists():
    shutil.rmtree(run_dir)
  run_dir.mkdir(parents=True)
  if start == "fork":
    import threading
    # Everything heavy is imported once here; no backend, no thread yet, so
    # forking is safe. The writers start JAX's backend themselves.
    import jax  # pylint: disable=unused-import
    import optax  # pylint: disable=unused-import
    import rda_optax  # pylint: disable=unused-import
    from train import checkpoint, engine  # pylint: disable=unused-import
    _template()
    assert threading.active_count() == 1, "cannot fork safely: threads run"
  rng = random.Random(seed)
  tally = dict(start=start, kills=0, mid_save=0, between_saves=0,
               before_first_save=0, resumes_ok=0, left_tmp_dir=0,
               reported_saved_max=0, failures=[])
  t0 = time.time()
  for i in range(kills):
    pid, stream, proc = (_spawn_fork if start == "fork" else _spawn_exec)(
        run_dir)
    lines = []
    while True:
      line = stream.readline()
      if not line:
        break
      lines.append(line.strip())
      if lines[-1] == "ready":
        break
    if lines[-1:] != ["ready"]:  # died before ready: a failed resume check
      _, status = os.waitpid(pid, 0)
      tally["failures"].append(f"kill {i}: writer exited ({status}) before "
                               f"ready: {lines[-3:]}")
      stream.close()
      break
    if lines[0].startswith("resumed"):
      tally["resumes_ok"] += 1
    time.sleep(rng.uniform(0.0, max_delay))
    os.kill(pid, signal.SIGKILL)
    lines += [l.strip() for l in stream.read().splitlines() if l.strip()]
    stream.close()
    if proc is not None:
      proc.wait()
    else:
      os.waitpid(pid, 0)
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
    # The directory as the kill left it, read without orbax: a step that was
    # reported saved must be there as a finished (renamed) directory.
    ckpts = run_dir / "checkpoints"
    entries = sorted(os.listdir(ckpts)) if ckpts.exists() else []
    finished = [int(e) for e in entries if e.isdigit()]
    if any(not e.isdigit() for e in entries):
      tally["left_tmp_dir"] += 1  # an unfinished save; orbax ignores it
    if saved and saved[-1] not in finished:
      tally["failures"].append(f"kill {i}: step {saved[-1]} was reported "
                               f"saved but is not on disk: {entries}")
  result = check(run_dir)
  tally["final"] = result
  if not result["ok"]:
    tally["failures"].append(f"final check failed: {result}")
  if (result["latest"] or 0) < tally["reported_saved_max"]:
    tally["failures"].append(
        f"latest {result['latest']} < last reported save "
        f"{tally['reported_saved_max']}")
  tally["wall_s"] = round(time.time() - t0, 1)
  return tally


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("mode", choices=("writer", "check", "loop"))
  ap.add_argument("run_dir", type=Path)
  ap.add_argument("--kills", type=int, default=20)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--max-delay", type=float, default=0.5,
                  help="kill after uniform(0, this) seconds past 'ready'")
  ap.add_argument("--start", choices=("fork", "exec"), default="fork")
  a = ap.parse_args()
  if a.mode == "writer":
    return writer(a.run_dir)
  if a.mode == "check":
    r = check(a.run_dir)
    print(json.dumps(r))
    return 0 if r["ok"] else 1
  tally = loop(a.run_dir, a.kills, a.seed, a.max_delay, a.start)
  print(json.dumps(tally))
  return 1 if tally["failures"] else 0


if __name__ == "__main__":
  sys.exit(main())
