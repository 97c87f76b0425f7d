"""What SIGINT and SIGTERM do to a running ``python -m train``.

The trainer records each signal and stops at the next safe point: the end
of the current epoch, with a checkpoint (``train.run.catch_signals``). Each
signal is acknowledged at once with one line on stderr, so a user pressing
Ctrl-C during a long epoch knows it was heard; pressing it again changes
nothing but the line (SIGKILL stops at once, losing the epochs since the
last checkpoint).

While an image folder decodes there is nothing worth saving yet, so the
decode stops at the next chunk (``check_loading`` raises ``Interrupted``)
instead of running to its end.

Image-decoding worker processes ignore SIGINT (``ignore_sigint``): Ctrl-C
reaches the whole process group, and the trainer, not each worker, decides
when to stop, so no worker prints a ``KeyboardInterrupt`` traceback.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable


class Interrupted(Exception):
  """A signal arrived while the data was loading; nothing was written."""


# The latest ``recorder``'s (signals, handler), read by long loading loops.
_current: list[tuple[list[int], Any] | None] = [None]


def check_loading() -> None:
  """Raises Interrupted when a signal reached the trainer's handler, while
  that handler is installed (a finished run's signals count for nothing)."""
  if _current[0] is None:
    return
  got, handler = _current[0]
  installed = any(signal.getsignal(s) is handler
                  for s in (signal.SIGINT, signal.SIGTERM))
  if got and installed:
    raise Interrupted(signal.Signals(got[0]).name)


def recorder(got: list[int]) -> Callable[[int, Any], None]:
  """A signal handler that appends the signal to ``got`` and says so."""

  def on_signal(signum: int, frame: Any) -> None:
    del frame
    got.append(signum)
    name = signal.Signals(signum).name
    if len(got) == 1:
      text = (f"rda-train: {name} received: stopping at the end of this "
              "epoch, with a checkpoint (at once while the data loads or "
              "in a new run's first epoch)")
    else:
      text = (f"rda-train: {name} received again: still stopping at the end "
              "of this epoch (SIGKILL stops at once, losing the epochs since "
              "the last checkpoint)")
    try:
      # os.write, not print: a handler may run in the middle of a print.
      os.write(2, (text + "\n").encode())
    except OSError:
      pass

  _current[0] = (got, on_signal)
  return on_signal


def ignore_sigint() -> None:
  """Initializer of worker processes: Ctrl-C is the trainer's to handle."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
