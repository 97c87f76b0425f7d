"""The parts the methods' optimizers are built from: schedules, dense SGD.

Each method (``train.methods``) builds one optax chain for the whole run.
Its two phases live in one ``GradientTransformation`` whose state carries
over the phase change: ASR is ``freeze_zeros(start_step=N)`` chained after
the optimizer, so RDA's running average is kept at the switch, as in the
reference measurement of ALGORITHMS.md.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
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
  # Values read from the optimizer state for the log, e.g. the lambda_t
  # that a target sparsity chose: opt_state -> {metrics key: value}.
  logged: Optional[Callable[[Any], dict[str, float]]] = None


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
  return debiased(piecewise(cfg.l1, cfg.l1_schedule, "l1_schedule", spe),
                  cfg, spe)


def debiased(value: optax.ScalarOrSchedule, cfg: Config,
             spe: int) -> optax.ScalarOrSchedule:
  """``value`` (a number or a schedule), 0 in the last ``--debias-epochs``;
  ``value`` itself without them."""
  if not cfg.debias_epochs:
    return value
  start = (cfg.total_epochs - cfg.debias_epochs) * spe
  at = value if callable(value) else (lambda step: value)
  return lambda step: jnp.where(step >= start, 0.0, at(step))


# Half the RDA phase ramps, half runs at the target (RDA may still move its
# zeros there, unlike a pruning mask), then ASR.
DEFAULT_TARGET_RAMP = 0.5


def target_schedule(cfg: Config, target: float, spe: int) -> optax.Schedule:
  """The target sparsity of RDA's step: a cubic ramp from 0 to ``target``
  over the first ``--target-ramp`` of the ``--epochs`` phase (Zhu & Gupta's
  schedule), the target until ASR, then 0.

  0 during ASR keeps the sparsity at the target exactly: the frozen zeros
  already make it, so the smallest l1 that keeps it is 0 (``lambda_t`` is
  the smallest l1 that reaches ``s_t``), and no new zero is made. That is
  ``--debias-epochs`` over all of ASR: the kept weights lose the shrinkage.
  """
  phase2 = cfg.epochs * spe
  share = DEFAULT_TARGET_RAMP if cfg.target_ramp is None else cfg.target_ramp
  ramp = int(round(share * phase2))

  def s(step):
    frac = jnp.minimum(step / max(ramp, 1), 1.0)
    ramped = target * (1.0 - (1.0 - frac) ** 3)
    return jnp.where(step >= phase2, 0.0, jnp.where(step >= ramp, target,
                                                    ramped))
  return s


def flops_schedule(cfg: Config, target: float, spe: int) -> optax.Schedule:
  r"""The FLOPs share the group strength keeps at each step
  (``--target-flops F`` with ``--structure``): :func:`target_schedule`'s
  cubic ramp over the same ``--target-ramp`` of ``--epochs``, from 1 (every
  channel) down to ``F``, ``F`` until the switch, then 1 in the second
  phase,

  .. math::
    F_t = 1 - (1 - F) (1 - (1 - t / T_r)^3) \quad (t < T_r).

  Why a ramp: at ``F`` from step 0 the strength cuts the channels whose
  scores are lowest at initialization, before the network has learned
  which ones matter (a digits run at 0.5 from step 0 collapsed). Why 1 in
  the second phase: the channels removed by then are frozen (ASR), so the
  strength that keeps every other one is 0, the debiased refit of a
  target sparsity's second phase; and the slim model that training may
  switch to would otherwise be cut again to ``F`` of itself.

  Examples:
    >>> from train.config import Config
    >>> f = flops_schedule(Config(epochs=2, target_ramp=0.5), 0.5, 10)
    >>> [round(float(f(t)), 4) for t in (0, 5, 10, 19, 20)]
    [1.0, 0.5625, 0.5, 0.5, 1.0]
  """
  phase2 = cfg.epochs * spe
  share = DEFAULT_TARGET_RAMP if cfg.target_ramp is None else cfg.target_ramp
  ramp = int(round(share * phase2))

  def f(step):
    frac = jnp.minimum(step / max(ramp, 1), 1.0)
    ramped = 1.0 - (1.0 - target) * (1.0 - (1.0 - frac) ** 3)
    return jnp.where(step >= phase2, 1.0, jnp.where(step >= ramp, target,
                                                    ramped))
  return f


def target_log(schedule: optax.Schedule) -> Callable[[Any], dict[str, float]]:
  """For the log, from the optimizer state: the ``lambda_t`` RDA's target
  chose at the last step as ``l1`` (the mean over the penalized leaves, the
  one value of ``global``), and that step's ``target_sparsity``."""
  def read(opt_state):
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=_has_lambda)
             if _has_lambda(s)]
    if not found:
      return {}
    lams = [float(np.asarray(l))
            for l in jax.tree.leaves(found[0].lambda_t)]
    step = int(np.asarray(found[0].count)) - 1
    return {"l1": float(np.mean(lams)),
            "target_sparsity": float(np.asarray(schedule(max(step, 0))))}
  return read


def _has_lambda(x: Any) -> bool:
  # The states of the methods with a target: rda's, rmda's, grda's, ...
  return "lambda_t" in getattr(x, "_fields", ())


def host(s: optax.Schedule) -> Callable[[int], float]:
  """A schedule as a host function of the step, for the per-epoch log."""
  return lambda step: float(np.asarray(s(step)))


def dense_sgd(cfg: Config,
              lr: optax.Schedule) -> list[optax.GradientTransformation]:
  """SGD with Nesterov momentum and weight decay of the kernels: the dense
  baseline's update, which the pruning methods share (as a list, so that a
  method chains it flat and its state keeps one level)."""
  kernels = rda_optax.default_l1_mask
  return [optax.add_decayed_weights(cfg.weight_decay, kernels),
          optax.sgd(lr, momentum=cfg.momentum, nesterov=True)]

