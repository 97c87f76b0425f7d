"""The parts the methods' optimizers are built from: schedules, dense SGD.

Each method (``train.methods``) builds one optax chain for the whole run.
Its two phases live in one ``GradientTransformation`` whose state carries
over the phase change: ASR is ``freeze_zeros(start_step=N)`` chained after
the optimizer, so RDA's running average is kept at the switch, as in the
reference measurement of ALGORITHMS.md.
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


def host(s: optax.Schedule) -> Callable[[int], float]:
  """A schedule as a host function of the step, for the per-epoch log."""
  return lambda step: float(np.asarray(s(step)))


def dense_sgd(cfg: Config, lr: optax.Schedule) -> list[optax.GradientTransformation]:
  """SGD with Nesterov momentum and weight decay of the kernels: the dense
  baseline's update, which the pruning methods share (as a list, so that a
  method chains it flat and its state keeps one level)."""
  return [optax.add_decayed_weights(cfg.weight_decay, rda_optax.default_l1_mask),
          optax.sgd(lr, momentum=cfg.momentum, nesterov=True)]


def build(cfg: Config, method: str, spe: int,
          target: Optional[float] = None) -> Optimizer:
  """Builds ``method``'s optimizer (``train.methods``) for ``spe`` steps per
  epoch; ``target``: the target sparsity of the methods that have one."""
  from train import methods  # pylint: disable=g-import-not-at-top
  return methods.get(method).optimizer(cfg, spe, target)
