"""Argument checks and schedule helpers shared by the transformations."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax


def check_hyper(name: str, value: Any, *, positive: bool) -> None:
  """Validates a scalar hyper-parameter when it is a concrete Python number.

  Schedules and arrays (e.g. from ``optax.inject_hyperparams``, where the
  value may be a tracer) are not checked: reading them would force a host
  round-trip or fail under ``jit``.
  """
  if callable(value) or not isinstance(value, (int, float)) or isinstance(value, bool):
    return
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value!r}")
  if positive and value <= 0:
    raise ValueError(f"{name} must be > 0, got {value!r}")
  if not positive and value < 0:
    raise ValueError(f"{name} must be >= 0, got {value!r}")


def at_step(value: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
  """Evaluates a float-or-schedule at ``count`` (optax's 0-based step)."""
  v = value(count) if callable(value) else value
  return jnp.asarray(v, dtype=jnp.float32)


NO_PARAMS_MSG = (
    "this transformation needs the current params: call "
    "update(updates, state, params)")


try:
  _Tracer = jax.core.Tracer
except AttributeError:  # moved in some JAX releases
  from jax._src.core import Tracer as _Tracer


def is_tracer(x: Any) -> bool:
  return isinstance(x, _Tracer)
