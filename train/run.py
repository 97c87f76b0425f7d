"""One training run, end to end: data, model, phases, logs, checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

import models
import rda_optax
from train import data as data_lib
from train import engine
from train import inputs
from train import interrupts
from train import methods
from train import optim
from train import parallel
from train import preflight
from train import report
from train import resume_checks
from train import rundir
from train import structure
from train import timing
from train._errors import Stopped, UsageError
from train.checkpoint import Checkpoints
from train.config import Config
from train.rundir import target_from_run


@contextlib.contextmanager
def catch_signals() -> Iterator[list[int]]:
  """SIGINT and SIGTERM append to the yielded list instead of killing.

  Taken before the run directory exists, so a signal at any point of a run
  (data loading and compilation included) ends it cleanly: the training
  loop checks the list after every epoch and before the first.
  """
  got: list[int] = []
  old = {s: signal.signal(s, interrupts.recorder(got))
         for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield got
  finally:
    for s, h in old.items():
      signal.signal(s, h)


def _check_interrupted(interrupted: list[int], where: str) -> None:
  if interrupted:
    raise Stopped(f"interrupted {where}; nothing was written", 130)


class Run(NamedTuple):
  """A run ready to train: what :func:`build_run` sets up.

  ``state`` is the initial state on the mesh; ``key`` the seed's key, from
  which each epoch's is folded; ``evals`` maps "val"/"test" to the
  arguments of ``evaluate`` after the state.
  """
  model: Any
  opt: optim.Optimizer
  state: engine.TrainState
  key: jax.Array
  train_epoch: Callable
  evaluate: Callable
  images: jax.Array
  labels: jax.Array
  evals: dict[str, tuple]
  topo: parallel.Topology
  steps_per_epoch: int
  rows: int
  sharded: bool
  rows_read: Optional[int]
  # model -> an ``evaluate`` of that model on the same data (the slim model).
  evaluator: Optional[Callable] = None
  spec: Optional[engine.EpochSpec] = None
  # The full-width model and its params' shapes; ``model`` differs from it
  # once the run trains on the slim model (``slim_training``).
  dense_model: Any = None
  dense_params: Any = None

  @property
  def slimmed(self) -> bool:
    return self.model is not self.dense_model


def build_run(cfg: Config, method: str, splits: data_lib.Splits, *,
              target: Optional[float] = None,
              scan: Optional[bool] = None) -> Run:
  """The model, the initial state on the mesh, the training images on the
  devices, the compiled epoch and the evaluator of ``method`` on ``splits``.

  Every process builds the same initial state from the same seed, then
  places it on the mesh: replicated, or split over ``--fsdp``.
  """
  dtype = inputs.compute_dtype(cfg)
  train = splits.train
  n, image_shape = train.images.shape[0], train.images.shape[1:]
  topo = parallel.topology(cfg.devices, cfg.fsdp)
  sharded = inputs.data_sharding(cfg) == "sharded"
  # Sharded: each device samples batch / size images from its n // size.
  shards = topo.size if sharded else 1
  rows = n // shards
  spe = rows // (cfg.batch_size // shards)
  scale = methods.init_scale(method, cfg)
  kinit = {} if scale is None else {"kernel_init": rda_optax.scaled_uniform(scale)}
  model = models.get(cfg.model, num_classes=splits.num_classes, dtype=dtype,
                     **kinit)
  opt = methods.optimizer(
      cfg, method, spe, target,
      flops=structure.flops_model(cfg, method, model, image_shape))

  key = jax.random.key(cfg.seed)
  variables = jax.jit(lambda k: model.init(
      k, jnp.zeros((1,) + image_shape, jnp.float32)))(jax.random.fold_in(key, 0))
  params = variables["params"]
  state = engine.init_state(opt.tx, params, variables.get("batch_stats", {}))
  state, shardings = _place(topo, state)

  if sharded:
    # Statistics of the rows the devices train on, each process reading
    # only its own and the sums meeting across processes.
    mine = parallel.local_rows(n, topo, cfg.seed)
    mean, std = engine.channel_stats(train.images, rows=mine,
                                     reduce=parallel.sum_over_processes)
  else:
    mean, std = engine.channel_stats(train.images)
  spec = engine.EpochSpec(
      model, opt.tx, spe, cfg.batch_size, mean, std,
      inputs.augment_mode(cfg, image_shape), cfg.label_smoothing,
      splits.num_classes, dtype, rows, scan=scan, topo=topo,
      state_shardings=shardings, max_bad=cfg.max_bad_steps,
      sharded_data=sharded)
  train_epoch = engine.make_train_epoch(spec)
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
  evaluator = lambda m: engine.make_evaluate(m, mean, std, dtype, topo=topo)  # noqa: E731
  return Run(model, opt, state, key, train_epoch, evaluate, d_images,
             d_labels, evals, topo, spe, rows, sharded, read, evaluator, spec,
             model, jax.eval_shape(lambda: params))


def _place(topo: parallel.Topology, state: engine.TrainState
           ) -> tuple[engine.TrainState, engine.TrainState]:
  """``state`` on the mesh (params and optimizer state replicated or split
  over ``--fsdp``), and its shardings."""
  shardings = engine.TrainState(
      topo.params(state.params),
      jax.tree.map(lambda _: topo.replicated(), state.batch_stats),
      topo.params(state.opt_state), topo.replicated())
  state = jax.tree.map(lambda x, s: parallel.put_global(np.asarray(x), s),
                       state, shardings)
  return state, shardings


def on_model(r: Run, model: Any, host_state: engine.TrainState
             ) -> tuple[Run, engine.TrainState]:
  """``r`` training ``model`` (the slim one) from ``host_state``: the state
  placed on the mesh, the epoch and the evaluator compiled for it."""
  state, shardings = _place(r.topo, host_state)
  spec = r.spec._replace(model=model, state_shardings=shardings)
  evaluate = engine.make_evaluate(model, spec.mean, spec.std, spec.dtype,
                                  topo=r.topo)
  return r._replace(model=model, state=state, spec=spec, evaluate=evaluate,
                    train_epoch=engine.make_train_epoch(spec)), state


def slim_run(cfg: Config, r: Run, state: engine.TrainState, run_dir: Path,
             fit: Optional[structure.Fit] = None
             ) -> tuple[Run, engine.TrainState, str]:
  """The switch to the slim model: the dead channels cut out of the model,
  the state and the optimizer state (exact), the epoch recompiled for the
  smaller network, the widths recorded for ``--resume`` (with ``fit``,
  ``structure.fit_widths``' account of them)."""
  slicing, host = structure.slim_state(r.model, jax.device_get(state),
                                       cfg.width_multiple)
  small = slicing.model
  rec = dict(widths_after=jax.tree.map(int, small.widths))
  if parallel.is_main():
    rec = structure.write_train_slim(run_dir, cfg.epochs, r.model, small,
                                     slicing, cfg.width_multiple,
                                     r.images.shape[1:], fit)
  r, state = on_model(r, small, host)
  line = (f"training on the slim model from here: widths "
          f"{rec['widths_after']} (multiples of --width-multiple "
          f"{cfg.width_multiple})")
  if "flops_after" in rec:
    line += f", FLOPs {rec['flops_after'] / rec['flops_before']:.4f} of dense"
  return r, state, line


def _resumed_slim(cfg: Config, r: Run, run_dir: Path) -> Optional[Run]:
  """The run on the slim model whose checkpoints follow the switch (from
  ``train_slim.json``), with a template state of its shapes; None when the
  run never switched."""
  rec = structure.train_slim_record(run_dir)
  if rec is None:
    return None
  small = r.model.clone(**structure.trained_widths(run_dir))
  x = jnp.zeros((1,) + r.images.shape[1:], jnp.float32)
  v = jax.eval_shape(lambda: small.init(jax.random.key(0), x))
  zeros = lambda t: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), t)  # noqa: E731
  host = engine.init_state(r.opt.tx, zeros(v["params"]),
                           zeros(v.get("batch_stats", {})))
  return on_model(r, small, jax.device_get(host))[0]


def epoch_row(cfg: Config, method: str, epoch: int, r: Run,
              state: engine.TrainState, m: dict[str, Any],
              seconds: float) -> dict[str, Any]:
  """The metrics.jsonl line of 0-based ``epoch``, from the epoch's metrics
  ``m`` (on the host) and the state it ended in."""
  row = dict(epoch=epoch + 1, phase=methods.phase(method, epoch, cfg),
             loss=_finite(m["loss"]), train_top1=_finite(m["train_top1"]),
             train_top5=_finite(m["train_top5"]))
  if "val" in r.evals:
    row["val_top1"], row["val_top5"] = r.evaluate(state, *r.evals["val"])
  else:
    row["val_top1"] = row["val_top5"] = None
  if r.slimmed:
    row["sparsity"], row["sparsity_per_layer"] = structure.full_sparsity(
        state.params, r.dense_params)
  else:
    layer = rda_optax.sparsity_report(state.params)
    row["sparsity"] = float(rda_optax.sparsity(state.params))
    row["sparsity_per_layer"] = {l.path: l.sparsity for l in layer}
  row["channels_per_layer"] = structure.channel_counts(state.params)
  step = int(state.step) - 1
  for k in ("gamma", "l1", "lr"):
    f = getattr(r.opt, k)
    row[k] = f(step) if f is not None else None
  if r.opt.logged is not None:
    row.update(r.opt.logged(state.opt_state))
  row["images_per_sec"] = r.steps_per_epoch * cfg.batch_size / seconds
  row["skipped_steps"] = int(m["skipped_steps"])
  if int(m["halted_steps"]):
    row["halted_steps"] = int(m["halted_steps"])
  return row


class Decision(NamedTuple):
  """What the run does once an epoch has ended (:func:`after_epoch`).

  save: write a checkpoint of this epoch.
  stop: None to go on; "diverged" (too many consecutive non-finite steps)
    or "interrupted" (a signal arrived) to stop after the save, if any.
  deferred: a periodic checkpoint is owed: it was due, but the epoch ended
    in skipped steps.
  """
  save: bool
  stop: Optional[str]
  deferred: bool


def after_epoch(epoch: int, total: int, checkpoint_every: int, bad: int,
                max_bad: int, interrupted: bool, deferred: bool) -> Decision:
  """Save, defer or stop after 1-based ``epoch`` of ``total``.

  ``bad`` counts the consecutive skipped steps the epoch ended with,
  ``deferred`` is the previous decision's. A state that ends in skipped
  steps is never saved before the last epoch: the last applied step may
  itself have sent the weights astray, so the previous checkpoint stays the
  good one and the save moves to the next epoch that ends on an applied
  step.
  """
  if bad >= max_bad:
    # The engine halted at the K-th skip; what follows is not saved.
    return Decision(False, "diverged", deferred)
  if interrupted:
    return Decision(not bad, "interrupted", deferred)
  due = deferred or epoch % checkpoint_every == 0
  last = epoch == total
  if due and bad and not last:
    return Decision(False, None, True)
  return Decision(due or last, None, False)


def summarize(cfg: Config, method: str, splits: data_lib.Splits, r: Run,
              state: engine.TrainState, last_row: dict[str, Any],
              target: Optional[float], run_dir: Path,
              t_start: float) -> dict[str, Any]:
  """summary.json of a finished run (``last_row``: its last epoch's row,
  empty when this process trained none: the metrics file has it)."""
  summary = dict(method=method, model=cfg.model, dataset=splits.name,
                 epochs=cfg.total_epochs, sparsity=float(rda_optax.sparsity(state.params)),
                 sparsity_all_params=float(rda_optax.sparsity(
                     state.params, lambda p: jax.tree.map(lambda _: True, p))),
                 target_sparsity=target, skipped_images=len(splits.skipped))
  if r.slimmed:
    summary["sparsity"] = structure.full_sparsity(state.params,
                                                  r.dense_params)[0]
    nonzero = sum(int(np.count_nonzero(np.asarray(x)))
                  for x in jax.tree.leaves(jax.device_get(state.params)))
    summary["sparsity_all_params"] = 1 - nonzero / models.param_count(
        r.dense_params)
  lines = [last_row] if last_row else (
      report.read_metrics(run_dir) if parallel.is_main() else [])
  summary["val_top1"] = lines[-1]["val_top1"] if lines else None
  summary["val_top5"] = lines[-1]["val_top5"] if lines else None
  if "test" in r.evals:
    summary["test_top1"], summary["test_top5"] = r.evaluate(state, *r.evals["test"])
  else:
    summary["test_top1"] = summary["test_top5"] = None
  summary.update(structure.summarize(cfg, method, r, state, target, run_dir,
                                     parallel.is_main(), inputs.compute_dtype(cfg)))
  rec = structure.train_slim_record(run_dir) if r.slimmed else None
  if rec is not None and parallel.is_main():
    summary["train_slim"] = rec | _speeds(cfg, report.read_metrics(run_dir))
  summary["wall_s"] = time.time() - t_start
  summary["device"] = jax.devices()[0].device_kind
  summary["devices"] = r.topo.size
  summary["processes"] = jax.process_count()
  summary["data_sharding"] = "sharded" if r.sharded else "replicated"
  summary["train_images_per_device"] = r.rows
  summary["train_images_read_by_process_0"] = r.rows_read
  return summary


def _speeds(cfg: Config, rows: list[dict]) -> dict[str, Optional[float]]:
  """Median training img/s of each phase (the first epoch of each left out
  when there is another: it may include a compilation's host work)."""
  out = {}
  for name, part in (("before", rows[:cfg.epochs]), ("after",
                                                     rows[cfg.epochs:])):
    v = [x["images_per_sec"] for x in part[1:] or part]
    out[f"images_per_sec_{name}"] = float(np.median(v)) if v else None
  return out


def _start_epoch(ckpts: Checkpoints, run_dir: Path, r: Run, resume: bool,
                 cfg: Config, method: str
                 ) -> tuple[Run, engine.TrainState, int]:
  """The run, state and 0-based epoch to start from; on resume, the metrics
  file is cut back to the checkpoint's epoch, and a checkpoint after the
  switch to the slim model is restored into the slim model."""
  metrics_path = run_dir / "metrics.jsonl"
  start_epoch, state = 0, r.state
  if resume:
    slim = _resumed_slim(cfg, r, run_dir) if structure.slims_in_training(
        cfg, method) else None
    last, state = ckpts.restore_newest_intact(
        state, note=_note, like_for=lambda e: (
            slim.state if slim is not None and e > cfg.epochs else r.state))
    start_epoch = last or 0
    if slim is not None and start_epoch > cfg.epochs:
      r = slim
    if parallel.is_main():
      kept = resume_checks.rows_up_to(run_dir, start_epoch)
      rundir.write_atomic(metrics_path, "".join(json.dumps(l) + "\n" for l in kept))
  elif parallel.is_main():
    rundir.write_atomic(metrics_path, "")
  return r, state, start_epoch


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
  r = build_run(cfg, method, splits, target=target)
  if parallel.is_main() and not resume:
    report.write_layers(run_dir, r.model, splits.train.images.shape[1:],
                        r.state.params)  # the network order of layers.png
  hook = methods.get(method).before_epoch
  ckpts = Checkpoints(run_dir)
  r, state, start_epoch = _start_epoch(ckpts, run_dir, r, resume, cfg,
                                         method)
  slim_at = cfg.epochs if structure.slims_in_training(cfg, method) else None
  # Net-slim and the grouped methods meet their FLOPs target with the live
  # channels; rounding those up to --width-multiple would train and ship a
  # bigger model, so at the switch the widths are fitted to the target
  # instead, with or without --slim-training (the cut channels then stay 0
  # as every dead one does: the second phase freezes exact zeros).
  fit_to = structure.width_target(cfg, method, target)
  fit = None
  progress = report.Progress(
      cfg.total_epochs, desc=method, initial=start_epoch,
      enabled=({"auto": None, "bar": True, "lines": None, "none": False}
               [cfg.progress] if parallel.is_main() else False))

  def saved() -> str:
    last = ckpts.latest()
    if last is None:
      return f"no checkpoint was written to {run_dir} yet"
    return f"the last good checkpoint (epoch {last}) in {run_dir} is intact"

  row: dict[str, Any] = {}
  deferred = False
  resume_line = f"resume with: python -m train --resume {run_dir}"
  epoch = start_epoch

  def on_step(done: int, steps: int, pending: Any) -> None:
    progress.step(done, steps, pending)
    # In the first epoch of a fresh run nothing is lost by stopping inside
    # it (the host loop of CPU epochs; one process, so no peer is left
    # waiting in a collective). Otherwise the safe point is the epoch's end:
    # it saves the epochs done, and --resume replays them exactly.
    if interrupted and nothing_to_lose and jax.process_count() == 1:
      raise Stopped(f"interrupted in epoch {epoch + 1}, before any "
                    f"checkpoint: stopped at once; {resume_line} (it starts "
                    "over)", 130)

  try:
    if interrupted:
      raise Stopped(f"interrupted before epoch {start_epoch + 1}: "
                    f"{resume_line}", 130)
    for epoch in range(start_epoch, cfg.total_epochs):
      nothing_to_lose = epoch == start_epoch and ckpts.latest() is None
      changed = hook(cfg, state.params, epoch, target, r) if hook else None
      if changed is not None:
        state = state._replace(params=changed[0])
        progress.write(changed[1])
      if epoch == cfg.epochs and fit_to is not None:
        params, fit, line = structure.fit_to_flops(
            r.model, jax.device_get(state.params), r.images.shape[1:], method,
            cfg.width_multiple, fit_to)
        state = state._replace(params=params)
        progress.write(line)
      if epoch == slim_at:
        r, state, line = slim_run(cfg, r, state, run_dir, fit)
        progress.write(line)
      t0 = time.time()
      timing.take_compile_seconds()
      state, m = r.train_epoch(state, r.images, r.labels,
                               jax.random.fold_in(r.key, epoch + 1),
                               on_step=on_step)
      m = jax.device_get(m)
      dt = time.time() - t0
      compile_s = min(timing.take_compile_seconds(), dt)
      # Compilation is not counted in images_per_sec.
      row = epoch_row(cfg, method, epoch, r, state, m,
                      max(dt - compile_s, 1e-6))
      row["compile_s"] = compile_s
      if parallel.is_main():
        rundir.append(run_dir / "metrics.jsonl", json.dumps(row) + "\n")
      progress.update(row)
      bad = int(m["consecutive_bad"])
      d = after_epoch(epoch + 1, cfg.total_epochs, cfg.checkpoint_every, bad,
                      cfg.max_bad_steps, bool(interrupted), deferred)
      if d.stop == "diverged":
        raise Stopped(
            f"stopped: {bad} consecutive steps with non-finite gradients at "
            f"epoch {epoch + 1}; {saved()}. Raise gamma, or lower lr or "
            f"init_scale, in {run_dir / 'config.json'}, then --resume", 1)
      if d.save:
        ckpts.save(epoch + 1, state)
      if d.stop == "interrupted":
        raise Stopped(
            f"interrupted after epoch {epoch + 1}: checkpoint saved; "
            f"{resume_line}" if d.save else
            f"interrupted after epoch {epoch + 1}, which ended in skipped "
            f"steps: not saved; {saved()}; {resume_line}", 130)
      if d.deferred:
        progress.write(f"epoch {epoch + 1} ended with {bad} skipped steps: "
                       "checkpoint deferred")
      deferred = d.deferred
  finally:
    progress.close()
    ckpts.close()

  summary = summarize(cfg, method, splits, r, state, row, target, run_dir,
                      t_start)
  if parallel.is_main():
    rundir.write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    with rundir.writing(f"the plots in {run_dir}"):
      report.plot_run(run_dir)
  return summary


def _finite(x: Any) -> Optional[float]:
  # An epoch with no applied step has no loss: null in the log, not NaN.
  return float(x) if np.isfinite(x) else None


def start_run_dir(cfg: Config, method: str, stamp: str,
                  target: Optional[float] = None) -> Path:
  """Creates the run directory of ``method`` with its config.json: the
  configuration of that one method, at its target."""
  run_dir = rundir.path(cfg, method, stamp)
  rundir.create(run_dir, dict(dataclasses.asdict(cfg), method=method,
                              compare=None, target_sparsity=target)
                | structure.config_fields(cfg, method, target),
                f"run-dir-{method}")
  return run_dir


def _note(line: str) -> None:
  if parallel.is_main():
    print(f"rda-train: {line}", file=sys.stderr)


def run(cfg: Config) -> list[dict[str, Any]]:
  """Runs ``cfg`` (several methods with ``--compare``), returns summaries."""
  with catch_signals() as interrupted:
    return _run(cfg, interrupted)


def _run(cfg: Config, interrupted: list[int]) -> list[dict[str, Any]]:
  names = cfg.methods
  # Methods that others compare against run first: a method with a target
  # sparsity trains to the sparsity the RDA run reached, at the same total
  # epochs.
  order = sorted(names, key=lambda m: methods.get(m).needs_target
                 or methods.get(m).target_of is not None)
  stamp = preflight.stamp(cfg)
  preflight.check(cfg, [rundir.path(cfg, m, stamp) for m in order],
                  main=parallel.is_main())
  splits = inputs.load_data(cfg)
  inputs.check_data(cfg, splits)
  preflight.check_steps(cfg, splits.train.images.shape[0])
  _check_interrupted(interrupted, "while loading the data")
  target = cfg.target_sparsity
  if target is None and cfg.target_sparsity_from:
    target = target_from_run(cfg.target_sparsity_from)
  summaries, dirs = [], []
  for method in order:
    m = methods.get(method)
    # In --compare, a method without a target (sgd, prox-sgd) runs as it is.
    t = target if m.needs_target or m.takes_target else None
    if m.target_of is not None:  # net-slim: a FLOPs target
      t = m.target_of(cfg, summaries)
    elif m.needs_target and t is None:
      rda_runs = [s for s in summaries if s["method"] == "rda"]
      if not rda_runs:
        raise UsageError(f"{method} needs --target-sparsity, "
                         "--target-sparsity-from, or rda in --compare")
      t = rda_runs[0]["sparsity"]
    _check_interrupted(interrupted, f"before the {method} run")
    run_dir = start_run_dir(cfg, method, stamp, t)
    if parallel.is_main():
      # The preset is named because naming the default model or data set
      # turns the implied digits-demo preset off.
      print(f"[{method}] {cfg.model} on {splits.name}, preset: "
            f"{cfg.preset or 'none'}: "
            f"{splits.train.images.shape[0]} train / "
            f"{0 if splits.val is None else splits.val.images.shape[0]} val / "
            f"{0 if splits.test is None else splits.test.images.shape[0]} "
            f"test images, {cfg.epochs} + {cfg.asr_epochs} epochs, "
            f"{jax.device_count()} device(s) -> {run_dir}", file=sys.stderr)
    with rundir.lock(run_dir):
      summaries.append(train_one(cfg, method, splits, run_dir, target=t,
                                 interrupted=interrupted))
    dirs.append(run_dir)
  if len(dirs) > 1 and parallel.is_main():
    out = Path(cfg.out) / f"{cfg.run_name or stamp}-compare.png"
    report.plot_compare(dirs, out, title=f"{cfg.model} on {splits.name}")
    print(f"comparison plot: {out}", file=sys.stderr)
  return summaries


def resume(run_dir: str, **overrides: Any) -> list[dict[str, Any]]:
  """Continues the run in ``run_dir`` from its latest complete checkpoint."""
  path = Path(run_dir)
  cfg = resume_checks.load_config(path, overrides)
  with catch_signals() as interrupted, rundir.lock(path):
    # Locked before anything is read or rewritten: a second process on the
    # same directory is refused here, before it touches metrics.jsonl.
    done = resume_checks.finished(path, cfg)
    if done is not None:
      _note(f"{path} is finished ({cfg.total_epochs} epochs); nothing to do")
      return [done]
    resume_checks.read_rows(path)  # a corrupt log stops before the data loads
    splits = inputs.load_data(cfg)
    inputs.check_data(cfg, splits)
    _check_interrupted(interrupted, "while loading the data")
    return [train_one(cfg, cfg.method, splits, path, resume=True,
                      target=structure.resume_target(cfg),
                      interrupted=interrupted)]
