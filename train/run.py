"""One training run, end to end: data, model, phases, logs, checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

import models
import rda_optax
from train import data as data_lib
from train import engine
from train import optim
from train import parallel
from train import prune
from train import report
from train._errors import UsageError
from train._lock import run_lock
from train.checkpoint import Checkpoints
from train.config import Config, target_from_run, validate


class Stopped(Exception):
  """A run that ended early with its last good checkpoint on disk."""

  def __init__(self, msg: str, code: int):
    super().__init__(msg)
    self.code = code


def load_data(cfg: Config) -> data_lib.Splits:
  try:
    return data_lib.load(
        cfg.dataset, data_dir=cfg.data_dir, test_dir=cfg.test_dir,
        val_fraction=cfg.val_fraction, seed=cfg.seed, cache_dir=cfg.cache_dir,
        skip_bad_images=cfg.skip_bad_images, image_size=cfg.image_size,
        progress=cfg.progress != "none")
  except MemoryError:
    size = f" at --image-size {cfg.image_size}" if cfg.image_size else ""
    raise UsageError(f"--dataset {cfg.dataset}: not enough memory to hold the "
                     f"decoded images{size}") from None


@contextlib.contextmanager
def catch_signals() -> Iterator[list[int]]:
  """SIGINT and SIGTERM append to the yielded list instead of killing.

  Taken before the run directory exists, so a signal at any point of a run
  (data loading and compilation included) ends it cleanly: the training
  loop checks the list after every epoch and before the first.
  """
  got: list[int] = []
  old = {s: signal.signal(s, lambda signum, frame: got.append(signum))
         for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield got
  finally:
    for s, h in old.items():
      signal.signal(s, h)


def _check_interrupted(interrupted: list[int], where: str) -> None:
  if interrupted:
    raise Stopped(f"interrupted {where}; nothing was written", 130)


def _phase(method: str, epoch: int, cfg: Config) -> str:
  """Name of the phase that 0-based ``epoch`` belongs to."""
  first = epoch < cfg.epochs
  return {"rda": ("rda", "asr"), "prox-sgd": ("prox-sgd", "asr"),
          "sgd": ("dense", "dense"),
          "prune-finetune": ("dense", "finetune")}[method][0 if first else 1]


def _dtype(cfg: Config):
  if cfg.dtype == "auto":
    return engine.accelerator_defaults(jax.default_backend())[0]
  return jnp.dtype(cfg.dtype)


def _augment(cfg: Config, image_shape) -> str:
  if cfg.augment != "auto":
    return cfg.augment
  # Crop + flip is the CIFAR recipe; digits are neither flip-invariant nor
  # big enough for a 4-pixel crop.
  h, _, c = image_shape
  return "crop-flip" if (c == 3 and h >= 32) else "none"


def _run_dir(cfg: Config, method: str, stamp: str) -> Path:
  name = cfg.run_name or f"{stamp}-{cfg.model}-{cfg.dataset}-{method}"
  if cfg.compare and cfg.run_name:
    name = f"{cfg.run_name}-{method}"
  return Path(cfg.out) / name


@contextlib.contextmanager
def _writing(what: str) -> Iterator[None]:
  """A failed write (full disk, read-only) becomes one line naming ``what``;
  an OSError raised by ``write`` itself carries no file name."""
  try:
    yield
  except OSError as e:
    raise UsageError(f"cannot write {what}: {e.strerror or e}") from None


def _write_atomic(path: Path, text: str) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  with _writing(str(path)):
    tmp.write_text(text)
    os.replace(tmp, path)


def _append(path: Path, text: str) -> None:
  with _writing(str(path)), path.open("a") as f:
    f.write(text)


def data_sharding(cfg: Config) -> str:
  if cfg.data_sharding != "auto":
    return cfg.data_sharding
  return "sharded" if jax.process_count() > 1 else "replicated"


def check_data(cfg: Config, splits: data_lib.Splits) -> None:
  n = splits.train.images.shape[0]
  if cfg.batch_size > n:
    raise UsageError(f"--batch-size {cfg.batch_size} is larger than the "
                     f"training set ({n} images)")
  ndev = cfg.devices or jax.device_count()
  if cfg.batch_size % ndev:
    raise UsageError(f"--batch-size {cfg.batch_size} must be a multiple of "
                     f"the device count {ndev}")
  if data_sharding(cfg) == "sharded" and cfg.batch_size // ndev > n // ndev:
    raise UsageError(f"--batch-size {cfg.batch_size}: each of {ndev} devices "
                     f"would sample {cfg.batch_size // ndev} images from its "
                     f"shard of {n // ndev}")
  if cfg.num_classes is not None and cfg.num_classes != splits.num_classes:
    raise UsageError(f"--num-classes {cfg.num_classes} does not match the "
                     f"data: {splits.name} has {splits.num_classes} classes")
  if splits.num_classes < 2:
    raise UsageError(f"data set {splits.name} has {splits.num_classes} class")


def train_one(cfg: Config, method: str, splits: data_lib.Splits,
              run_dir: Path, *, resume: bool = False,
              target: Optional[float] = None,
              interrupted: Optional[list[int]] = None) -> dict[str, Any]:
  """Trains ``method`` into ``run_dir`` and returns its summary.

  ``interrupted`` is the list of :func:`catch_signals`; without it, this
  call catches SIGINT and SIGTERM itself.
  """
  if interrupted is None:
    with catch_signals() as got:
      return train_one(cfg, method, splits, run_dir, resume=resume,
                       target=target, interrupted=got)
  t_start = time.time()
  dtype = _dtype(cfg)
  train = splits.train
  n, image_shape = train.images.shape[0], train.images.shape[1:]
  topo = parallel.topology(cfg.devices, cfg.fsdp)
  sharded = data_sharding(cfg) == "sharded"
  # Sharded: each device samples batch / size images from its n // size.
  shards = topo.size if sharded else 1
  rows = n // shards
  spe = rows // (cfg.batch_size // shards)
  scale = cfg.init_scale
  if scale is None and method == "rda":
    scale = 2.0  # plain He scale is too small for RDA's first step (s. 4.1)
  kinit = {} if scale is None else {"kernel_init": rda_optax.scaled_uniform(scale)}
  model = models.get(cfg.model, num_classes=splits.num_classes, dtype=dtype,
                     **kinit)
  opt = optim.build(cfg, method, spe)
  tx = engine.wrap_finite(opt.tx)

  key = jax.random.key(cfg.seed)
  variables = jax.jit(lambda k: model.init(
      k, jnp.zeros((1,) + image_shape, jnp.float32)))(jax.random.fold_in(key, 0))
  params = variables["params"]
  state = engine.TrainState(params, variables.get("batch_stats", {}),
                            tx.init(params), jnp.zeros([], jnp.int32))
  # Every process builds the same initial state from the same seed, then
  # places it on the mesh: replicated, or split over `fsdp`.
  shardings = engine.TrainState(
      topo.params(state.params),
      jax.tree.map(lambda _: topo.replicated(), state.batch_stats),
      topo.params(state.opt_state), topo.replicated())
  state = jax.tree.map(lambda x, s: parallel.put_global(np.asarray(x), s),
                       state, shardings)

  if sharded:
    # Statistics of the rows the devices train on, each process reading
    # only its own and the sums meeting across processes.
    mine = parallel.local_rows(n, topo, cfg.seed)
    mean, std = engine.channel_stats(train.images, rows=mine,
                                     reduce=parallel.sum_over_processes)
  else:
    mean, std = engine.channel_stats(train.images)
  augment = _augment(cfg, image_shape)
  train_epoch = engine.make_train_epoch(
      model, tx, spe, cfg.batch_size, mean, std, augment, cfg.label_smoothing,
      splits.num_classes, dtype, rows, topo=topo, state_shardings=shardings,
      max_bad=cfg.max_bad_steps, sharded_data=sharded)
  evaluate = engine.make_evaluate(model, mean, std, dtype, topo=topo)
  rep = topo.replicated()
  if sharded:
    # One row shard per device; the same seeded deal for images and labels.
    d_images = parallel.shard_rows(train.images, topo, cfg.seed)
    d_labels = parallel.shard_rows(train.labels, topo, cfg.seed)
  else:
    # The uint8 data set is replicated on every device; each device gathers
    # its own slice of every batch from it. Read once, then copied to each.
    d_images = parallel.put_global(np.asarray(train.images), rep)
    d_labels = parallel.put_global(train.labels, rep)
  read = getattr(train.images, "rows_read", None) if sharded else None
  if read is not None:
    print(f"[process {jax.process_index()}] read {read} of {n} training "
          f"images: the shards of its {len(topo.local_shards)} device(s) "
          f"of {topo.size}", file=sys.stderr)
  evals = {}
  for name, arr in (("val", splits.val), ("test", splits.test)):
    if arr is not None and arr.images.shape[0]:
      xi, yi, b = engine.pad_for_eval(arr.images, arr.labels,
                                      cfg.eval_batch_size, topo.size)
      evals[name] = (parallel.put_global(xi, rep), parallel.put_global(yi, rep),
                     arr.images.shape[0], b)

  ckpts = Checkpoints(run_dir)
  metrics_path = run_dir / "metrics.jsonl"
  start_epoch = 0
  if resume:
    last = ckpts.latest()
    if last is not None:
      state = ckpts.restore(last, state)
      start_epoch = last
    if is_main():
      # A run killed before its first epoch has no metrics file yet.
      logged = report.read_metrics(run_dir) if metrics_path.exists() else []
      kept = [l for l in logged if l["epoch"] <= start_epoch]
      _write_atomic(metrics_path, "".join(json.dumps(l) + "\n" for l in kept))
  elif is_main():
    _write_atomic(metrics_path, "")

  progress = report.Progress(
      cfg.total_epochs, desc=method, initial=start_epoch,
      enabled=({"auto": None, "bar": True, "lines": None, "none": False}
               [cfg.progress] if is_main() else False))

  def saved() -> str:
    last = ckpts.latest()
    if last is None:
      return f"no checkpoint was written to {run_dir} yet"
    return f"the last good checkpoint (epoch {last}) in {run_dir} is intact"

  row: dict[str, Any] = {}
  deferred = False
  try:
    if interrupted:
      raise Stopped(f"interrupted before epoch {start_epoch + 1}: resume "
                    f"with: rda-train --resume {run_dir}", 130)
    for epoch in range(start_epoch, cfg.total_epochs):
      if method == "prune-finetune" and epoch == cfg.epochs and target is not None:
        pruned = prune.magnitude_prune(state.params, target, cfg.prune_scope)
        state = state._replace(params=pruned)
        progress.write(f"pruned to {float(rda_optax.sparsity(pruned)):.4f} "
                       f"sparsity ({cfg.prune_scope} magnitude pruning)")
      t0 = time.time()
      state, m = train_epoch(state, d_images, d_labels,
                             jax.random.fold_in(key, epoch + 1))
      m = jax.device_get(m)
      dt = time.time() - t0
      row = dict(epoch=epoch + 1, phase=_phase(method, epoch, cfg),
                 loss=_finite(m["loss"]), train_top1=_finite(m["train_top1"]),
                 train_top5=_finite(m["train_top5"]))
      if "val" in evals:
        row["val_top1"], row["val_top5"] = evaluate(state, *evals["val"])
      else:
        row["val_top1"] = row["val_top5"] = None
      layer = rda_optax.sparsity_report(state.params)
      row["sparsity"] = float(rda_optax.sparsity(state.params))
      row["sparsity_per_layer"] = {r.path: r.sparsity for r in layer}
      step = int(state.step) - 1
      for k in ("gamma", "l1", "lr"):
        f = getattr(opt, k)
        row[k] = f(step) if f is not None else None
      row["images_per_sec"] = spe * cfg.batch_size / dt
      row["skipped_steps"] = int(m["skipped_steps"])
      if int(m["halted_steps"]):
        row["halted_steps"] = int(m["halted_steps"])
      if is_main():
        _append(metrics_path, json.dumps(row) + "\n")
      progress.update(row)
      last_epoch = epoch + 1 == cfg.total_epochs
      bad = int(m["consecutive_bad"])
      if bad >= cfg.max_bad_steps:
        # The engine halted at the K-th skip; what follows is not saved: the
        # last applied step may itself have sent the weights astray.
        raise Stopped(
            f"stopped: {bad} consecutive steps with non-finite gradients at "
            f"epoch {epoch + 1}; {saved()}. Raise gamma, or lower lr or "
            f"init_scale, in {run_dir / 'config.json'}, then --resume", 1)
      if interrupted and bad:
        raise Stopped(
            f"interrupted after epoch {epoch + 1}, which ended in skipped "
            f"steps: not saved; {saved()}; resume with: rda-train --resume "
            f"{run_dir}", 130)
      if interrupted:
        ckpts.save(epoch + 1, state)
        raise Stopped(
            f"interrupted after epoch {epoch + 1}: checkpoint saved; resume "
            f"with: rda-train --resume {run_dir}", 130)
      due = deferred or (epoch + 1) % cfg.checkpoint_every == 0
      if due and bad and not last_epoch:
        # The epoch ended in skipped steps: the state may be on its way to
        # diverging, so keep the previous checkpoint as the good one and
        # save at the next epoch that ends on an applied step.
        deferred = True
        progress.write(f"epoch {epoch + 1} ended with {bad} skipped steps: "
                       "checkpoint deferred")
      elif due or last_epoch:
        ckpts.save(epoch + 1, state)
        deferred = False
  finally:
    progress.close()
    ckpts.close()

  summary = dict(method=method, model=cfg.model, dataset=splits.name,
                 epochs=cfg.total_epochs, sparsity=float(rda_optax.sparsity(state.params)),
                 sparsity_all_params=float(rda_optax.sparsity(
                     state.params, lambda p: jax.tree.map(lambda _: True, p))),
                 target_sparsity=target, skipped_images=len(splits.skipped))
  lines = [row] if row else (
      report.read_metrics(run_dir) if is_main() else [])
  summary["val_top1"] = lines[-1]["val_top1"] if lines else None
  summary["val_top5"] = lines[-1]["val_top5"] if lines else None
  if "test" in evals:
    summary["test_top1"], summary["test_top5"] = evaluate(state, *evals["test"])
  else:
    summary["test_top1"] = summary["test_top5"] = None
  summary["wall_s"] = time.time() - t_start
  summary["device"] = jax.devices()[0].device_kind
  summary["devices"] = topo.size
  summary["processes"] = jax.process_count()
  summary["data_sharding"] = "sharded" if sharded else "replicated"
  summary["train_images_per_device"] = rows
  summary["train_images_read_by_process_0"] = read
  if is_main():
    _write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    with _writing(f"the plots in {run_dir}"):
      report.plot_run(run_dir)
  return summary


def _finite(x: Any) -> Optional[float]:
  # An epoch with no applied step has no loss: null in the log, not NaN.
  return float(x) if np.isfinite(x) else None


def _lock(run_dir: Path) -> contextlib.AbstractContextManager:
  # Process 0 speaks for the run; the others of a multi-process run follow
  # it (and may not share its file system).
  return run_lock(run_dir) if is_main() else contextlib.nullcontext()


def is_main() -> bool:
  """Process 0 writes the logs; every process takes part in checkpoints."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def start_run_dir(cfg: Config, method: str, stamp: str,
                  target: Optional[float] = None) -> Path:
  run_dir = _run_dir(cfg, method, stamp)
  if not is_main():
    sync(f"run-dir-{method}")
    return run_dir
  if run_dir.exists():
    raise UsageError(f"--out: run directory {run_dir} already exists "
                     "(choose another --run-name, or --resume it)")
  try:
    run_dir.mkdir(parents=True)
    _write_atomic(run_dir / "config.json",
                  json.dumps(dict(dataclasses.asdict(cfg), method=method,
                                  compare=None, target_sparsity=target),
                             indent=2, sort_keys=True))
  except OSError as e:
    raise UsageError(f"--out: cannot write run directory {run_dir}: "
                     f"{e.strerror or e}") from None
  sync(f"run-dir-{method}")
  return run_dir


def run(cfg: Config) -> list[dict[str, Any]]:
  """Runs ``cfg`` (several methods with ``--compare``), returns summaries."""
  with catch_signals() as interrupted:
    return _run(cfg, interrupted)


def _run(cfg: Config, interrupted: list[int]) -> list[dict[str, Any]]:
  splits = load_data(cfg)
  check_data(cfg, splits)
  _check_interrupted(interrupted, "while loading the data")
  methods = cfg.compare.split(",") if cfg.compare else [cfg.method]
  target = cfg.target_sparsity
  if target is None and cfg.target_sparsity_from:
    target = target_from_run(cfg.target_sparsity_from)
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  # Methods that others compare against run first: prune-finetune prunes to
  # the sparsity the RDA run reached, at the same total epochs.
  order = sorted(methods, key=lambda m: m == "prune-finetune")
  summaries, dirs = [], []
  for method in order:
    t = target
    if method == "prune-finetune" and t is None:
      rda_runs = [s for s in summaries if s["method"] == "rda"]
      if not rda_runs:
        raise UsageError("prune-finetune needs --target-sparsity, "
                         "--target-sparsity-from, or rda in --compare")
      t = rda_runs[0]["sparsity"]
    _check_interrupted(interrupted, f"before the {method} run")
    run_dir = start_run_dir(cfg, method, stamp, t)
    if is_main():
      print(f"[{method}] {cfg.model} on {splits.name}: "
            f"{splits.train.images.shape[0]} train / "
            f"{0 if splits.val is None else splits.val.images.shape[0]} val / "
            f"{0 if splits.test is None else splits.test.images.shape[0]} "
            f"test images, {cfg.epochs} + {cfg.asr_epochs} epochs, "
            f"{jax.device_count()} device(s) -> {run_dir}", file=sys.stderr)
    with _lock(run_dir):
      summaries.append(train_one(cfg, method, splits, run_dir, target=t,
                                 interrupted=interrupted))
    dirs.append(run_dir)
  if len(dirs) > 1 and is_main():
    out = Path(cfg.out) / f"{cfg.run_name or stamp}-compare.png"
    report.plot_compare(dirs, out, title=f"{cfg.model} on {splits.name}")
    print(f"comparison plot: {out}", file=sys.stderr)
  return summaries


def resume(run_dir: str, **overrides: Any) -> list[dict[str, Any]]:
  """Continues the run in ``run_dir`` from its latest complete checkpoint."""
  path = Path(run_dir)
  cfg_path = path / "config.json"
  if not cfg_path.is_file():
    raise UsageError(f"--resume: {cfg_path} does not exist (not a run directory)")
  try:
    raw = json.loads(cfg_path.read_text())
  except (OSError, ValueError) as e:
    raise UsageError(f"--resume: cannot read {cfg_path}: {e}") from None
  raw.update({k: v for k, v in overrides.items() if v is not None})
  try:
    cfg = Config(**raw)
    validate(cfg)
  except TypeError as e:
    raise UsageError(f"--resume: {cfg_path} is not a config of this version: {e}") from None
  with catch_signals() as interrupted, _lock(path):
    # Locked before anything is read or rewritten: a second process on the
    # same directory is refused here, before it touches metrics.jsonl.
    splits = load_data(cfg)
    check_data(cfg, splits)
    _check_interrupted(interrupted, "while loading the data")
    return [train_one(cfg, cfg.method, splits, path, resume=True,
                      target=cfg.target_sparsity, interrupted=interrupted)]
