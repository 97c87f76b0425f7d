"""The training methods of ``python -m train``: one entry each, found by name.

An entry holds all that is particular to a method: its optimizer (one optax
chain for the whole run, both phases in it), the names of its two phases
(``--epochs``, then ``--asr-epochs``), its default init scale, whether it
needs a target sparsity, a hook at the start of an epoch (prune-finetune's
pruning), its line of ``--method`` help and its place in the no-argument
demo. ``config``, ``optim``, ``run`` and ``cli`` read this table; no other
place lists methods, so a new method is one :func:`register` call.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax.numpy as jnp
import optax

import rda_optax
from train import optim
from train import prune
from train import structure
from train._errors import UsageError
from train.config import Config

# (cfg, params, 0-based epoch, target, run) -> (new params, log line), or
# None to leave the params as they are; ``run`` is the ``train.run.Run``.
Hook = Callable[[Config, Any, int, Optional[float], Any],
                Optional[tuple[Any, str]]]


class Method(NamedTuple):
  """One method of the trainer.

  Attributes:
    name: what ``--method`` and ``--compare`` take.
    help: one line for ``--method``'s help.
    optimizer: ``(cfg, steps_per_epoch, target, flops) ->
      optim.Optimizer``; ``target`` is the target sparsity (None for
      methods without one), ``flops`` the model's FLOPs polynomial for
      ``--target-flops`` with ``--structure`` (None otherwise).
    phases: the phase names logged during ``--epochs`` and ``--asr-epochs``.
    init_scale: the default ``s`` of the scaled uniform init (29); None keeps
      the model's own init.
    needs_target: trains to a target sparsity: ``--target-sparsity``,
      ``--target-sparsity-from``, or the sparsity an ``rda`` run of the same
      ``--compare`` reached (such methods run after the others).
    takes_target: trains to ``--target-sparsity``/``--target-sparsity-from``
      when one is given, and without one otherwise (``rda``: its ``l1``).
      A method that neither needs nor takes one refuses them.
    before_epoch: a :data:`Hook` run on the params before every epoch.
    demo: the position in the no-argument comparison; None: not in it.
    distribution: the default ``--sparsity-distribution`` (``auto``).
    check: ``(cfg) -> None``, raising ``UsageError`` on a bad combination of
      the method's options; run by ``checks.validate``.
    target_of: ``(cfg, summaries so far) -> target`` for a method whose
      target is not a sparsity (net-slim's FLOPs); such a method runs after
      the others of ``--compare``.
  """
  name: str
  help: str
  optimizer: Callable[[Config, int, Optional[float], Any], optim.Optimizer]
  phases: tuple[str, str]
  init_scale: Optional[float] = None
  needs_target: bool = False
  takes_target: bool = False
  before_epoch: Optional[Hook] = None
  demo: Optional[int] = None
  distribution: str = "uniform"
  check: Optional[Callable[[Config], None]] = None
  target_of: Optional[Callable[[Config, list], Optional[float]]] = None


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
  REGISTRY[method.name] = method
  return method


def names() -> tuple[str, ...]:
  return tuple(REGISTRY)


def get(name: str) -> Method:
  try:
    return REGISTRY[name]
  except KeyError:
    raise ValueError(f"unknown method {name!r}") from None


def optimizer(cfg: Config, name: str, spe: int,
              target: Optional[float] = None,
              flops: Optional[rda_optax.FlopsModel] = None
              ) -> optim.Optimizer:
  """Method ``name``'s optimizer for ``spe`` steps per epoch; ``target``:
  the target sparsity of the methods that have one; ``flops``: the model's
  FLOPs polynomial (``structure.flops_model``), which ``--target-flops``
  with ``--structure`` needs (a ``ValueError`` without it)."""
  return get(name).optimizer(cfg, spe, target, flops)


def demo() -> str:
  """The ``--compare`` list of ``python -m train`` without arguments."""
  shown = sorted((m for m in REGISTRY.values() if m.demo is not None),
                 key=lambda m: m.demo)
  return ",".join(m.name for m in shown)


def phase(name: str, epoch: int, cfg: Config) -> str:
  """Name of the phase that 0-based ``epoch`` of method ``name`` is in."""
  return get(name).phases[0 if epoch < cfg.epochs else 1]


def distribution(name: str, cfg: Config) -> str:
  """``--sparsity-distribution``, or the method's default for ``auto``."""
  if cfg.sparsity_distribution != "auto":
    return cfg.sparsity_distribution
  return get(name).distribution


def init_scale(name: str, cfg: Config) -> Optional[float]:
  """``--init-scale`` if given, else the method's default."""
  return cfg.init_scale if cfg.init_scale is not None else get(name).init_scale


def _fail(msg: str) -> None:
  raise UsageError(msg)


# --- the optimizers ----------------------------------------------------------

def _rda(cfg: Config, spe: int,
         target: Optional[float],
         flops: Any = None) -> optim.Optimizer:
  gamma = optim.piecewise(cfg.gamma, cfg.gamma_schedule, "gamma_schedule", spe)
  freeze = rda_optax.freeze_zeros(cfg.epochs * spe, mask=_freeze(cfg))
  if target is None:
    l1, groups = _penalties(cfg, spe, flops)
    tx = optax.chain(
        rda_optax.rda(gamma, l1, center=cfg.center, l2=cfg.l2, **groups),
        freeze)
    return optim.Optimizer(tx, optim.host(gamma), optim.host(l1), None)
  # lambda_t chosen each step to hit the target (l1-RDA with a data-chosen
  # l1); during ASR the target is 0 (optim.target_schedule), so
  # --debias-epochs has nothing left to do there.
  s = optim.target_schedule(cfg, target, spe)
  tx = optax.chain(
      rda_optax.rda(gamma, None, center=cfg.center, l2=cfg.l2,
                    target_sparsity=s,
                    sparsity_distribution=distribution("rda", cfg),
                    threshold_samples=cfg.threshold_samples),
      freeze)
  return optim.Optimizer(tx, optim.host(gamma), None, None,
                         logged=optim.target_log(s))


def _penalties(cfg: Config, spe: int, flops: Any = None
               ) -> tuple[optax.Schedule, dict]:
  """The l1 schedule and the group arguments of a proximal method; with
  ``--structure channel`` the group term alone (l1 = 0); ``flops``: see
  :func:`optimizer`."""
  groups = structure.group_args(cfg, spe, flops)
  if cfg.structure == "channel":
    return optax.constant_schedule(0.0), groups
  return optim.l1_schedule(cfg, spe), groups


def _restarted_lr(cfg: Config, spe: int) -> optax.Schedule:
  """The lr of the prune-then-fine-tune methods: the schedule over
  ``--epochs``, restarted for the fine-tuning epochs at a peak
  ``--finetune-lr-scale`` times lower."""
  phase2, total = cfg.epochs * spe, cfg.total_epochs * spe
  s1 = optim.lr_schedule(cfg, cfg.lr, phase2, spe)
  s2 = optim.lr_schedule(cfg, cfg.lr * cfg.finetune_lr_scale, total - phase2,
                         spe)
  return optax.join_schedules([s1, s2], [phase2])


def _proximal(name: str, factory: Callable[..., optax.GradientTransformation],
              extra: Callable[[Config], dict]):
  """The optimizer of a proximal method other than rda (rmda, grda,
  prox-adam), as rda's: ``--l1`` (``--debias-epochs``) or a target sparsity,
  channel groups, ASR from ``--epochs`` on; its step size is ``--lr`` on
  ``--lr-schedule``, ``extra(cfg, spe)`` its own options."""
  def build(cfg: Config, spe: int, target: Optional[float],
            flops: Any = None) -> optim.Optimizer:
    lr = optim.lr_schedule(cfg, cfg.lr, cfg.total_epochs * spe, spe)
    freeze = rda_optax.freeze_zeros(cfg.epochs * spe, mask=_freeze(cfg))
    if target is None:
      l1, groups = _penalties(cfg, spe, flops)
      tx = optax.chain(factory(lr, l1, **extra(cfg, spe), **groups), freeze)
      return optim.Optimizer(tx, None, optim.host(l1), optim.host(lr))
    s = optim.target_schedule(cfg, target, spe)
    tx = optax.chain(
        factory(lr, None, **extra(cfg, spe), target_sparsity=s,
                sparsity_distribution=distribution(name, cfg),
                threshold_samples=cfg.threshold_samples),
        freeze)
    return optim.Optimizer(tx, None, None, optim.host(lr),
                           logged=optim.target_log(s))
  return build


def _freeze(cfg: Config):
  # With channel groups, ASR also freezes the dead channels' BatchNorm.
  return (functools.partial(structure.freeze_mask,
                            channel_units=structure.model_units(cfg.model))
          if cfg.structure != "none" else None)


def _check_target_method(name: str) -> Callable[[Config], None]:
  """The checks of a method that trains to a target through its l1."""
  def check(cfg: Config) -> None:
    if cfg.target_sparsity is not None or cfg.target_sparsity_from:
      if cfg.epochs == 0:
        _fail(f"--method {name} reaches a target sparsity during --epochs "
              "(ASR keeps it): needs --epochs >= 1")
      if cfg.structure != "none":
        # The target counts zero entries; a group threshold zeros others.
        _fail("--structure cannot be combined with a target sparsity for "
              f"--method {name} (the target counts entries, not channels)")
    else:
      # --target-flops with --structure ramps its FLOPs share the same way.
      ramps = structure.flops_target_groups(cfg)
      for flag, given in (("--threshold-samples", cfg.threshold_samples),
                          ("--target-ramp", None if ramps else
                           cfg.target_ramp)):
        if given is not None:
          _fail(f"{flag} applies to --method {name} with --target-sparsity "
                "or --target-sparsity-from only"
                + (" (--target-ramp: or --target-flops with --structure)"
                   if flag == "--target-ramp" else ""))
  return check


def _prox_sgd(cfg: Config, spe: int,
              target: Optional[float],
              flops: Any = None) -> optim.Optimizer:
  lr = optim.lr_schedule(cfg, cfg.lr, cfg.total_epochs * spe, spe)
  l1, groups = _penalties(cfg, spe, flops)
  tx = optax.chain(
      rda_optax.prox_sgd(lr, l1, momentum=cfg.momentum, **groups),
      rda_optax.freeze_zeros(cfg.epochs * spe, mask=_freeze(cfg)))
  return optim.Optimizer(tx, None, optim.host(l1), optim.host(lr))


def _sgd(cfg: Config, spe: int,
         target: Optional[float],
         flops: Any = None) -> optim.Optimizer:
  lr = optim.lr_schedule(cfg, cfg.lr, cfg.total_epochs * spe, spe)
  return optim.Optimizer(optax.chain(*optim.dense_sgd(cfg, lr)), None, None,
                         optim.host(lr))


def _prune_finetune(cfg: Config, spe: int,
                    target: Optional[float],
                    flops: Any = None) -> optim.Optimizer:
  # Dense training for `epochs`, magnitude pruning at the boundary (the
  # before_epoch hook, on the params), then fine-tuning with the zeros
  # frozen and the learning-rate schedule restarted at a lower peak.
  # An EPOCH:VALUE schedule gives the lr of every epoch of the run, the
  # fine-tuning epochs included (counted from the run's start, as the log
  # shows them); the restart and its scale are for the named shapes.
  if ":" in cfg.lr_schedule:
    lr = optim.piecewise(cfg.lr, cfg.lr_schedule, "lr_schedule", spe)
  else:
    lr = _restarted_lr(cfg, spe)
  tx = optax.chain(*optim.dense_sgd(cfg, lr),
                   rda_optax.freeze_zeros(cfg.epochs * spe))
  return optim.Optimizer(tx, None, None, optim.host(lr))


def gmp_steps(cfg: Config, spe: int) -> tuple[int, int]:
  """GMP's first and last pruning steps: ``--gmp-start-epoch`` and
  ``--gmp-end-epoch`` (0: ``--epochs``), the span cut down to a multiple of
  ``--gmp-every`` steps (one pruning step at the start when it is shorter)."""
  begin = cfg.gmp_start_epoch * spe
  end = (cfg.gmp_end_epoch or cfg.epochs) * spe
  return begin, begin + (end - begin) // cfg.gmp_every * cfg.gmp_every


def _gmp(cfg: Config, spe: int, target: Optional[float],
         flops: Any = None) -> optim.Optimizer:
  # Zhu & Gupta's cubic schedule around the dense baseline's update and lr
  # schedule: the same SGD as `sgd`, the pruned weights held at 0.
  lr = optim.lr_schedule(cfg, cfg.lr, cfg.total_epochs * spe, spe)
  begin, end = gmp_steps(cfg, spe)
  tx = rda_optax.gmp(optax.chain(*optim.dense_sgd(cfg, lr)),
                     0.0 if target is None else target, begin_step=begin,
                     end_step=end, delta_t=cfg.gmp_every,
                     distribution=distribution("gmp", cfg))
  return optim.Optimizer(tx, None, None, optim.host(lr))


def _check_gmp(cfg: Config) -> None:
  if distribution("gmp", cfg) == "magnitude":
    _fail("--method gmp: --sparsity-distribution magnitude is for rda, rmda, "
          "grda and prox-adam with a target (gmp's global already is one "
          "magnitude threshold on the weights)")
  end = cfg.gmp_end_epoch or cfg.epochs
  if not cfg.gmp_start_epoch <= end <= cfg.total_epochs or end == 0:
    _fail(f"--method gmp prunes from --gmp-start-epoch {cfg.gmp_start_epoch} "
          f"to --gmp-end-epoch {end}: needs start <= end, 1 <= end <= "
          f"--epochs + --asr-epochs = {cfg.total_epochs}")


def _rigl(cfg: Config, spe: int, target: Optional[float],
          flops: Any = None) -> optim.Optimizer:
  # Evci et al.'s drop-and-grow around the dense baseline's update and lr
  # schedule, over all epochs (no second phase: the mask stops changing at
  # --rigl-t-end-fraction of the steps).
  total = cfg.total_epochs * spe
  lr = optim.lr_schedule(cfg, cfg.lr, total, spe)
  tx = rda_optax.rigl(optax.chain(*optim.dense_sgd(cfg, lr)),
                      0.0 if target is None else target,
                      t_end=max(1, int(cfg.rigl_t_end_fraction * total)),
                      delta_t=cfg.rigl_delta_t, alpha=cfg.rigl_alpha,
                      distribution=distribution("rigl", cfg), seed=cfg.seed)
  return optim.Optimizer(tx, None, None, optim.host(lr))


def _check_rigl(cfg: Config) -> None:
  if distribution("rigl", cfg) in ("global", "magnitude"):
    _fail("--method rigl: --sparsity-distribution must be erk or uniform "
          "(a global threshold needs trained magnitudes; RigL starts sparse)")


def _net_slim(cfg: Config, spe: int, target: Optional[float],
              flops: Any = None) -> optim.Optimizer:
  # Liu et al. (2017): dense SGD with l1 on the BatchNorm scales for
  # `epochs`; channels pruned by |scale| at the boundary (the hook); then
  # fine-tuning without the penalty, the pruned channels' kernels and
  # BatchNorm frozen at 0, the lr schedule restarted as prune-finetune's.
  phase2 = cfg.epochs * spe
  lr = _restarted_lr(cfg, spe)
  bn_l1 = lambda step: jnp.where(step < phase2, cfg.bn_l1, 0.0)  # noqa: E731
  units = structure.model_units(cfg.model)
  tx = optax.chain(structure.add_bn_l1(bn_l1, units),
                   *optim.dense_sgd(cfg, lr),
                   rda_optax.freeze_zeros(phase2, mask=functools.partial(
                       structure.freeze_mask, channel_units=units)))
  return optim.Optimizer(tx, None, None, optim.host(lr))


def _needs_asr(name: str, what: str) -> Callable[[Config], None]:
  """The check of a method whose hook prunes at the start of the first
  ``--asr-epochs`` epoch: without that epoch it would never prune, and the
  run would end dense while its summary records the target."""
  def check(cfg: Config) -> None:
    if cfg.asr_epochs == 0:
      _fail(f"--method {name} {what} when --epochs end and fine-tunes for "
            "--asr-epochs: needs --asr-epochs >= 1 (--asr-epochs 0 would "
            "never prune)")
  return check


def _slim_at_boundary(cfg: Config, params: Any, epoch: int,
                      target: Optional[float], run: Any):
  if epoch != cfg.epochs:
    return None
  shape = run.images.shape[1:]
  if cfg.prune_channels is not None:
    pruned, k = structure.prune_fraction(
        params, cfg.prune_channels, structure.model_units(cfg.model))
  else:
    pruned, k = structure.prune_to_flops(run.model, params, shape, target)
  ratio = structure.flops_row(run.model, pruned, shape)["ratio"]
  return pruned, (f"pruned {k} channels by BatchNorm scale: FLOPs "
                  f"{ratio:.4f} of dense")


def _prune_at_boundary(cfg: Config, params: Any, epoch: int,
                       target: Optional[float], run: Any):
  if epoch != cfg.epochs or target is None:
    return None
  pruned = prune.magnitude_prune(params, target, cfg.prune_scope)
  return pruned, (f"pruned to {float(rda_optax.sparsity(pruned)):.4f} "
                  f"sparsity ({cfg.prune_scope} magnitude pruning)")


register(Method(
    "rda", "RDA, then ASR (He et al. 2020); with --target-sparsity, l1 "
    "chosen at each step to reach it (--target-ramp), ASR then at l1 = 0",
    _rda, ("rda", "asr"),
    # The plain He scale is too small for RDA's first step (section 4.1).
    init_scale=2.0, demo=0, takes_target=True,
    # One l1 for every layer, as RDA's own criterion: RDA sets the
    # per-layer rates.
    distribution="global", check=_check_target_method("rda")))
register(Method(
    "prox-sgd", "prox-SGD, then ASR", _prox_sgd, ("prox-sgd", "asr"), demo=1))
register(Method(
    "sgd", "dense, momentum, weight decay, epochs + asr-epochs in one phase",
    _sgd, ("dense", "dense"), demo=2))
register(Method(
    "prune-finetune", "dense, one-shot magnitude pruning to the target "
    "(--prune-scope), fine-tuning", _prune_finetune, ("dense", "finetune"),
    needs_target=True, before_epoch=_prune_at_boundary,
    check=_needs_asr("prune-finetune", "prunes")))
register(Method(
    "gmp", "gradual magnitude pruning (Zhu & Gupta 2017) to the target on a "
    "cubic schedule over --epochs, then training at the final mask, with "
    "sgd's update and lr schedule", _gmp, ("gmp", "finetune"),
    needs_target=True, demo=3, distribution="erk", check=_check_gmp))
register(Method(
    "rigl", "RigL (Evci et al. 2020): sparse at the target from the start, "
    "drop-and-grow every --rigl-delta-t steps, with sgd's update and lr "
    "schedule", _rigl, ("rigl", "rigl"), needs_target=True,
    distribution="erk", check=_check_rigl))
register(Method(
    "net-slim", "network slimming (Liu et al. 2017): sgd with l1 on the "
    "BatchNorm scales (--bn-l1), channels pruned by |scale| to "
    "--target-flops (or --prune-channels, --target-flops-from; in --compare "
    "the FLOPs of the rda/prox-sgd --structure run) and removed, "
    "fine-tuning", _net_slim, ("dense", "finetune"),
    before_epoch=_slim_at_boundary, target_of=structure.net_slim_target,
    check=_needs_asr("net-slim", "prunes channels")))

# The proximal family after He et al.: the same two phases as rda (ASR
# freezes the zeros from --epochs on), the same l1 / target / channel
# options, their step size --lr. One l1 for every layer, as rda's.
def _rmda_momentum(cfg: Config, spe: int) -> optax.Schedule:
  # RMDA's iterate W is an average of prox points, so a weight whose prox
  # point is 0 only decays towards 0. The last step before ASR takes the
  # prox point itself (c = 1), so ASR freezes exactly the prox point's
  # zeros; ASR then runs without momentum. The jump to 1 drops at once
  # every weight whose prox point is 0; --rmda-momentum-ramp spreads it.
  last = cfg.epochs * spe - 1
  ramp = int(round(cfg.rmda_momentum_ramp * cfg.epochs * spe))
  c0 = cfg.rmda_momentum

  def momentum(step):
    frac = jnp.clip((step - (last - ramp)) / max(ramp, 1), 0.0, 1.0)
    return jnp.where(step >= last, 1.0, c0 + (1.0 - c0) * frac)
  return momentum


register(Method(
    "rmda", "RMDA (Huang & Lee 2022): dual averaging with momentum "
    "(--rmda-momentum; 1 from the last step before ASR, or ramped there over "
    "--rmda-momentum-ramp), step --lr, then "
    "ASR; l1, a target or channel groups as rda",
    _proximal("rmda", rda_optax.rmda,
              lambda cfg, spe: dict(momentum=_rmda_momentum(cfg, spe))),
    ("rmda", "asr"), takes_target=True, distribution="global",
    check=_check_target_method("rmda")))
register(Method(
    "grda", "gRDA (Chao et al. 2020): dual averaging with a threshold "
    "growing as n^mu (--grda-mu), step --lr, --l1 its c, then ASR",
    _proximal("grda", rda_optax.grda, lambda cfg, spe: dict(mu=cfg.grda_mu)),
    ("grda", "asr"), takes_target=True, distribution="global",
    check=_check_target_method("grda")))
register(Method(
    "prox-adam", "proximal Adam (ProxGen, Yun et al. 2021): the l1 prox in "
    "Adam's metric, step --lr, then ASR",
    _proximal("prox-adam", rda_optax.prox_adam, lambda cfg, spe: {}),
    ("prox-adam", "asr"), takes_target=True, distribution="global",
    check=_check_target_method("prox-adam")))
