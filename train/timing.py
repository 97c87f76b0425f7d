"""Compilation time, kept apart from training speed.

The first epoch of a run compiles the training step: counted into its
img/s, compilation made the first epoch look many times slower than the
rest (on CPU, the small CNN's first epoch spent most of its time in XLA).
JAX reports each trace, lowering and backend compile through
``jax.monitoring``; one listener adds them up, and the trainer takes the sum
once per epoch (``row["compile_s"]``), dividing the images by the rest.
"""

from __future__ import annotations

import threading

from jax import monitoring

_EVENTS = frozenset({"/jax/core/compile/jaxpr_trace_duration",
                     "/jax/core/compile/jaxpr_to_mlir_module_duration",
                     "/jax/core/compile/backend_compile_duration"})
_lock = threading.Lock()
_total = [0.0]
_registered = [False]


def _listen(name: str, seconds: float, **kwargs) -> None:
  del kwargs
  if name in _EVENTS:
    with _lock:
      _total[0] += seconds


def take_compile_seconds() -> float:
  """Seconds JAX spent compiling since the previous call (0 at the first)."""
  with _lock:
    if not _registered[0]:
      monitoring.register_event_duration_secs_listener(_listen)
      _registered[0] = True
    seconds, _total[0] = _total[0], 0.0
  return seconds
