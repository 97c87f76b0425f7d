"""The optimizer of each method, one optax chain for the whole run.

Each method's two phases live in one ``GradientTransformation`` whose state
carries over the phase change: ASR is ``freeze_zeros(start_step=N)`` chained
after the optimizer, so RDA's running average is kept at the switch, as in
the reference measurement of ALGORITHMS.md.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax.numpy as jnp
import numpy as np
import optax

import rda_optax
from train.config import Config, parse_piecewise


class Optimizer(NamedTuple):
  tx: optax.GradientTransformation
  # Host-side views of the hyper-parameters, for the per-epoch log.
  gamma: Optional[Callable[[int], float]]
  l1: Optional[Callable[[int], float]]
  lr: Optional[Callable[[int], float]]


def piecewise(base: float, spec: str, name: str, spe: int) -> optax.Schedule:
  """Piecewise-constant schedule of the step from ``EPOCH:VALUE`` pairs."""
  pairs = parse_piecewise(spec, name)
  if not pairs:
    return optax.constant_schedule(base)
  if pairs[0][0] != 0:
    pairs = [(0, base)] + pairs
  bounds = jnp.asarray([e * spe for e, _ in pairs[1:]], jnp.int32)
  vals = jnp.asarray([v for _, v in pairs], jnp.float32)
  return lambda step: vals[jnp.searchsorted(bounds, step, side="right")]


def lr_schedule(cfg: Config, lr: float, steps: int, spe: int) -> optax.Schedule:
  if ":" in cfg.lr_schedule:
    return piecewise(lr, cfg.lr_schedule, "lr_schedule", spe)
  if cfg.lr_schedule == "constant" or steps == 0:
    return optax.constant_schedule(lr)
  if cfg.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(lr, steps)
  return optax.cosine_onecycle_schedule(steps, lr)


def l1_schedule(cfg: Config, spe: int) -> optax.Schedule:
  """``--l1``/``--l1-schedule``, and 0 for the last ``--debias-epochs``.

  Debiasing drops the penalty once ASR has frozen the zeros: the support
  stays, and the surviving weights lose the l1 shrinkage, as a relaxed
  lasso refits its support without the penalty (docs/DESIGN.md).
  """
  l1 = piecewise(cfg.l1, cfg.l1_schedule, "l1_schedule", spe)
  if not cfg.debias_epochs:
    return l1
  start = (cfg.total_epochs - cfg.debias_epochs) * spe
  return lambda step: jnp.where(step >= start, 0.0, l1(step))


def _host(s: optax.Schedule) -> Callable[[int], float]:
  return lambda step: float(np.asarray(s(step)))


def build(cfg: Config, method: str, spe: int) -> Optimizer:
  """Builds ``method``'s optimizer for ``spe`` steps per epoch."""
  phase2 = cfg.epochs * spe
  total = cfg.total_epochs * spe
  if method == "rda":
    gamma = piecewise(cfg.gamma, cfg.gamma_schedule, "gamma_schedule", spe)
    l1 = l1_schedule(cfg, spe)
    tx = optax.chain(
        rda_optax.rda(gamma, l1, center=cfg.center, l2=cfg.l2),
        rda_optax.freeze_zeros(phase2))
    return Optimizer(tx, _host(gamma), _host(l1), None)
  if method == "prox-sgd":
    lr = lr_schedule(cfg, cfg.lr, total, spe)
    l1 = l1_schedule(cfg, spe)
    tx = optax.chain(
        rda_optax.prox_sgd(lr, l1, momentum=cfg.momentum),
        rda_optax.freeze_zeros(phase2))
    return Optimizer(tx, None, _host(l1), _host(lr))
  kernels = rda_optax.default_l1_mask
  if method == "sgd":
    lr = lr_schedule(cfg, cfg.lr, total, spe)
    tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay, kernels),
                     optax.sgd(lr, momentum=cfg.momentum, nesterov=True))
    return Optimizer(tx, None, None, _host(lr))
  if method == "prune-finetune":
    # Dense training for `epochs`, magnitude pruning at the boundary (done by
    # the runner on the params), then fine-tuning with the zeros frozen and
    # the learning-rate schedule restarted at a lower peak.
    # An EPOCH:VALUE schedule gives the lr of every epoch of the run, the
    # fine-tuning epochs included (counted from the run's start, as the
    # log shows them); the restart and its scale are for the named shapes.
    if ":" in cfg.lr_schedule:
      lr = piecewise(cfg.lr, cfg.lr_schedule, "lr_schedule", spe)
    else:
      s1 = lr_schedule(cfg, cfg.lr, phase2, spe)
      s2 = lr_schedule(cfg, cfg.lr * cfg.finetune_lr_scale, total - phase2,
                       spe)
      lr = optax.join_schedules([s1, s2], [phase2])
    tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay, kernels),
                     optax.sgd(lr, momentum=cfg.momentum, nesterov=True),
                     rda_optax.freeze_zeros(phase2))
    return Optimizer(tx, None, None, _host(lr))
  raise ValueError(f"unknown method {method!r}")
