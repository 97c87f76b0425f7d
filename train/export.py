"""A finished run's variables as a compressed sparse file
(``rda_optax.save_sparse``), and the test accuracy of the model rebuilt from
such a file: ``python -m train export`` / ``evaluate`` (``train.commands``).
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

import models
import rda_optax
from train import inputs
from train import engine
from train import parallel
from train import structure
from train._errors import UsageError
from train.checkpoint import Checkpoints
from train.checks import validate
from train.config import Config

DEFAULT_NAME = "model.rdasparse"


def _config(run_dir: Path, flag: str) -> Config:
  path = run_dir / "config.json"
  if not path.is_file():
    raise UsageError(f"{flag} {run_dir}: no config.json there (not a "
                     "run directory of the trainer)")
  try:
    cfg = Config(**json.loads(path.read_text()))
    validate(cfg)
  except (OSError, ValueError, TypeError) as e:
    raise UsageError(f"{flag} {run_dir}: cannot read {path}: {e}") from None
  return cfg


def run_config(run_dir: Path, flag: str = "RUN_DIR") -> Config:
  """The run's config.json, validated; one line if it is not a run."""
  return _config(run_dir, flag)


def normalization(cfg: Config, train_images: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
  """The per-channel (mean, std) the run normalized its inputs with."""
  if inputs.data_sharding(cfg) == "sharded":
    devices = cfg.devices if (cfg.devices or 0) <= jax.device_count() else None
    topo = parallel.topology(devices, 1)
    mine = parallel.local_rows(train_images.shape[0], topo, cfg.seed)
    return engine.channel_stats(train_images, rows=mine,
                                reduce=parallel.sum_over_processes)
  return engine.channel_stats(train_images)


def final_variables(run_dir: Path, flag: str = "RUN_DIR") -> dict[str, Any]:
  """``{"params", "batch_stats"}`` of the run's latest checkpoint, as numpy
  arrays: the variables the run's final summary was evaluated with."""
  _config(run_dir, flag)
  if not (run_dir / "checkpoints").is_dir():
    # Checkpoints() would create the directory: refuse before that.
    raise UsageError(f"{flag} {run_dir}: no checkpoints directory")
  ckpts = Checkpoints(run_dir)
  try:
    if ckpts.latest() is None:
      raise UsageError(f"{flag} {run_dir}: no complete checkpoint")
    if not (run_dir / "summary.json").is_file():
      # Stopped or still training: its latest checkpoint is some epoch's,
      # not the final model.
      raise UsageError(f"{flag} {run_dir}: not a finished run (no "
                       f"summary.json; finish it with python -m train "
                       f"--resume {run_dir})")
    state = ckpts.restore_local()
  finally:
    ckpts.close()
  # A run that trained its last epochs on the slim model: back to full
  # width, with the removed channels at 0.
  return structure.dense_variables(run_dir, {
      k: jax.device_get(state[k]) for k in ("params", "batch_stats")})


def export(run_dir: Path, out: Optional[Path] = None, values: str = "float32",
           force: bool = False) -> tuple[Path, int, int]:
  """Writes the run's final variables to ``out`` (default
  ``run_dir/model.rdasparse``); returns the path, its size and the dense
  float32 size of the same variables."""
  out = run_dir / DEFAULT_NAME if out is None else out
  if out.exists() and not force:
    raise UsageError(f"--out {out} already exists (pass --force to replace "
                     "it)")
  if out.is_dir():
    raise UsageError(f"--out {out} is a directory")
  if not out.parent.is_dir():
    raise UsageError(f"--out {out}: directory {out.parent} does not exist")
  variables = final_variables(run_dir)
  try:
    size = rda_optax.save_sparse(out, variables, values=values)
  except OSError as e:
    raise UsageError(f"--out {out}: cannot write: {e.strerror or e}") from None
  except ValueError as e:
    # What the format cannot hold as asked (a value bfloat16 turns into
    # inf): refused before anything is written.
    raise UsageError(f"--values {values}: {e}".splitlines()[0]) from None
  dense = sum(np.asarray(x).nbytes for x in jax.tree.leaves(variables))
  return out, size, dense


def evaluate_file(path: Path, run_dir: Path) -> tuple[float, float]:
  """Test (top-1 %, top-5 %) of the run's model with the variables in
  ``path``, on the run's test split, computed as the run computed it."""
  cfg = _config(run_dir, "--run")
  try:
    variables = rda_optax.load_sparse(path)
  except rda_optax.SparseFormatError as e:
    raise UsageError(f"{e}".splitlines()[0]) from None
  except OSError as e:
    raise UsageError(f"{path}: cannot read: {e.strerror or e}") from None
  except (MemoryError, RecursionError, ValueError) as e:
    # A crafted file the reader did not bound (a huge leaf, a deep tree):
    # still bad input, not a crash of the trainer.
    detail = f"{type(e).__name__}: {e}".splitlines()[0]
    raise UsageError(f"{path}: not a readable sparse file ({detail})") from None
  splits = inputs.load_data(cfg)
  if splits.test is None or not splits.test.images.shape[0]:
    raise UsageError(f"--run {run_dir}: the run's data has no test split")
  # The run's own precision, layout and normalization, so that the counts
  # match its summary exactly on the same machine.
  dtype = inputs.compute_dtype(cfg)
  devices = cfg.devices if (cfg.devices or 0) <= jax.device_count() else None
  topo = parallel.topology(devices, 1)
  model = models.get(cfg.model, num_classes=splits.num_classes, dtype=dtype)
  train = splits.train
  mean, std = normalization(cfg, train.images)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1,) + train.images.shape[1:]))
  want = {k: jax.tree.map(lambda s: (s.shape, s.dtype.name), shapes.get(k, {}))
          for k in ("params", "batch_stats")}
  got = {k: jax.tree.map(lambda a: (a.shape, a.dtype.name), variables.get(k, {}))
         for k in ("params", "batch_stats")}
  if want != got:
    raise UsageError(f"{path} does not hold the variables of the "
                     f"{cfg.model} of --run {run_dir}")
  rep = topo.replicated()
  state = types.SimpleNamespace(**{
      k: jax.tree.map(lambda a: parallel.put_global(a, rep), variables[k])
      for k in ("params", "batch_stats")})
  test = splits.test
  xi, yi, b = engine.pad_for_eval(test.images, test.labels,
                                  cfg.eval_batch_size, topo.size)
  evaluate = engine.make_evaluate(model, mean, std, dtype, topo=topo)
  return evaluate(state, parallel.put_global(xi, rep),
                  parallel.put_global(yi, rep), test.images.shape[0], b)
