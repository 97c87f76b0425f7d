"""Argument checks, dtype rules and schedule helpers shared by the
transformations.

Hyper-parameters reach the transformations in three forms: Python numbers,
arrays (``optax.inject_hyperparams`` passes every numeric argument as one)
and schedules. What is concrete is checked when the factory is called; what
is traced (an injected value under ``jit``, a schedule's value at a traced
step) cannot raise, so :func:`guard` turns an out-of-range value into NaN
instead: the iterate becomes non-finite, the loss shows it, and
``optax.apply_if_finite`` skips the step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

NO_PARAMS_MSG = (
    "this transformation needs the current params: call "
    "update(updates, state, params)")


try:
  _Tracer = jax.core.Tracer
except AttributeError:  # moved in some JAX releases
  from jax._src.core import Tracer as _Tracer


def is_tracer(x: Any) -> bool:
  return isinstance(x, _Tracer)


def check_int(name: str, value: Any, lo: int) -> None:
  """An integer argument (a step, a count, a seed) >= ``lo``: a Python int
  or a concrete integer scalar array (``optax.inject_hyperparams`` passes
  those); a traced one is not checked."""
  if is_tracer(value):
    return
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    ok = (jnp.issubdtype(value.dtype, jnp.integer) and np.ndim(value) == 0
          and int(value) >= lo)
  else:
    ok = (isinstance(value, int) and not isinstance(value, bool)
          and value >= lo)
  if not ok:
    raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")


def check_hyper(name: str, value: Any, *, positive: bool) -> None:
  """Validates a hyper-parameter when its value is concrete.

  Python numbers and concrete arrays (e.g. ``optax.inject_hyperparams``'s
  values outside ``jit``) are checked; schedules and traced values are not
  (see :func:`guard` for what happens to those).
  """
  if callable(value) or is_tracer(value) or isinstance(value, bool):
    return
  if isinstance(value, (int, float)):
    v = np.asarray(float(value))
  elif isinstance(value, (jax.Array, np.ndarray, np.generic)):
    if not jnp.issubdtype(value.dtype, jnp.number):
      raise ValueError(f"{name} must be a number, got dtype {value.dtype}")
    v = np.asarray(value, np.float64)
  else:
    return
  if not np.all(np.isfinite(v)):
    raise ValueError(f"{name} must be finite, got {value!r}")
  if positive and not np.all(v > 0):
    raise ValueError(f"{name} must be > 0, got {value!r}")
  if not positive and not np.all(v >= 0):
    raise ValueError(f"{name} must be >= 0, got {value!r}")


def check_range(name: str, value: Any, lo: float, hi: float) -> None:
  """Checks ``lo <= value < hi`` for a concrete number or array."""
  if callable(value) or is_tracer(value):
    return
  if isinstance(value, bool) or not isinstance(
      value, (int, float, jax.Array, np.ndarray, np.generic)):
    raise ValueError(f"{name} must be a number in [{lo}, {hi}), got {value!r}")
  v = np.asarray(value, np.float64)
  if not np.all((v >= lo) & (v < hi)):
    raise ValueError(f"{name} must be in [{lo}, {hi}), got {value!r}")


def guard(value: jax.Array, ok: jax.Array) -> jax.Array:
  """``value`` where ``ok``, else NaN: an out-of-range traced value poisons
  the iterate (and is caught by ``optax.apply_if_finite``) instead of
  silently steering it. A scalar select, so it costs nothing per element."""
  return jnp.where(ok, value, jnp.nan)


def at_step(value: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
  """Evaluates a float-or-schedule at ``count`` (optax's 0-based step)."""
  v = value(count) if callable(value) else value
  return jnp.asarray(v, dtype=jnp.float32)


def leaf_dtype(p: Any) -> jnp.dtype:
  """dtype of an array, tracer, ``ShapeDtypeStruct`` or Python scalar."""
  d = getattr(p, "dtype", None)
  return jnp.dtype(d) if d is not None else jnp.result_type(p)


def compute_dtype(dtype: Any) -> jnp.dtype:
  """float32, or wider when the input is (float64 with x64 enabled)."""
  return jnp.promote_types(dtype, jnp.float32)


def check_float_params(params: Any, who: str) -> None:
  """Refuses integer, bool and complex leaves, each with its own reason.

  Integer or bool: an iterate rebuilt from a real-valued closed form would
  be silently truncated. Complex: the optimizers' closed forms (the running
  average, the centre, the l1/l2 terms and the target's radix select over
  ``|gbar|``) are written for real weights; the complex l1 form exists
  (:func:`rda_optax.soft_threshold` shrinks the modulus and keeps the
  phase) but the rest is not derived nor tested for complex weights yet, so
  complex params are refused rather than handled half-way.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  for path, p in flat:
    d = leaf_dtype(p)
    where = jax.tree_util.keystr(path) or "<root>"
    if jnp.issubdtype(d, jnp.complexfloating):
      raise ValueError(
          f"{who}: params leaf {where} has dtype {d}; complex params are not "
          "supported yet (the update is derived for real weights; split the "
          "leaf into real and imaginary parts, or use soft_threshold for the "
          "complex l1 step)")
    if not jnp.issubdtype(d, jnp.floating):
      raise ValueError(
          f"{who}: params leaf {where} has dtype {d}; it needs floating-point "
          "params (an integer iterate would be truncated)")


def check_state_dtype(state_dtype: Any, who: str) -> Any:
  if state_dtype is None:
    return None
  d = jnp.dtype(state_dtype)
  if not jnp.issubdtype(d, jnp.floating):
    raise ValueError(
        f"{who}: state_dtype must be a floating-point dtype, got {d} (a "
        "running average in it would be truncated)")
  return d


def has_abstract_leaves(params: Any) -> bool:
  return any(isinstance(p, jax.ShapeDtypeStruct)
             for p in jax.tree.leaves(params))

