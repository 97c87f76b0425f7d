"""What SIGINT and SIGTERM do to a running ``rda-train``.

The trainer records each signal and stops at the next safe point: the end
of the current epoch, with a checkpoint (``train.run.catch_signals``). Each
signal is acknowledged at once with one line on stderr, so a user pressing
Ctrl-C during a long epoch knows it was heard; pressing it again changes
nothing but the line (SIGKILL stops at once, losing the epochs since the
last checkpoint).

Image-decoding worker processes ignore SIGINT (``ignore_sigint``): Ctrl-C
reaches the whole process group, and the trainer, not each worker, decides
when to stop, so no worker prints a ``KeyboardInterrupt`` traceback.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable


def recorder(got: list[int]) -> Callable[[int, Any], None]:
  """A signal handler that appends the signal to ``got`` and says so."""

  def on_signal(signum: int, frame: Any) -> None:
    del frame
    got.append(signum)
    name = signal.Signals(signum).name
    if len(got) == 1:
      text = (f"rda-train: {name} received: stopping at the end of this "
              "epoch, with a checkpoint")
    else:
      text = (f"rda-train: {name} received again: still stopping at the end "
              "of this epoch (SIGKILL stops at once, losing the epochs since "
              "the last checkpoint)")
    try:
      # os.write, not print: a handler may run in the middle of a print.
      os.write(2, (text + "\n").encode())
    except OSError:
      pass

  return on_signal


def ignore_sigint() -> None:
  """Initializer of worker processes: Ctrl-C is the trainer's to handle."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
