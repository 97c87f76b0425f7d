"""Live progress on stderr: the trainer's per-epoch display and the decode
bar of image folders.

On a terminal, a tqdm bar; elsewhere (log files, CI), plain lines at most
every few seconds, where a redrawn bar would leave carriage-return debris.
"""

from __future__ import annotations

from collections.abc import Mapping
import datetime
import math
import numbers
import sys
import time
from typing import Any, TextIO

import jax
from tqdm import tqdm

# Tests replace this to make the ETA deterministic.
_now = time.monotonic


def _duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=max(0, round(seconds))))


def _number(metrics: Mapping[str, Any], key: str) -> float | None:
  value = metrics.get(key)
  if isinstance(value, numbers.Number) and not isinstance(value, bool):
    return float(value)
  return None


def _postfix(metrics: Mapping[str, Any]) -> str:
  """'[rda] loss 0.512 train 88.1 val 86.0 sparsity 0.731 4,210 img/s'."""
  parts = []
  if metrics.get("phase"):
    parts.append(f"[{metrics['phase']}]")
  for key, name, spec in (("loss", "loss", ".3f"),
                          ("train_top1", "train", ".1f"),
                          ("val_top1", "val", ".1f"),
                          ("sparsity", "sparsity", ".3f")):
    value = _number(metrics, key)
    if value is not None:
      parts.append(f"{name} {value:{spec}}")
  speed = _number(metrics, "images_per_sec")
  if speed is not None and math.isfinite(speed):
    parts.append(f"{speed:,.0f} img/s")
  compile_s = _number(metrics, "compile_s")
  if compile_s is not None and compile_s >= 0.05:
    parts.append(f"(+{compile_s:.1f} s compiling)")
  skipped = _number(metrics, "skipped_steps")
  if skipped:
    # Non-finite steps being skipped is the first sign of a diverging run.
    parts.append(f"skipped {skipped:.0f}")
  return " ".join(parts)


class Progress:
  """Per-epoch progress of a training run.

  Three modes, chosen by ``enabled``:

  * ``None`` (the default): a tqdm bar with an ETA when ``stream`` is a
    terminal, else one plain line per epoch, which reads well in log files
    and CI output where a redrawn bar would leave carriage-return debris::

      epoch 3/10 [rda] loss 0.512 train 88.1 val 86.0 sparsity 0.731 \
4,210 img/s eta 0:00:21

  * ``True``: the tqdm bar even when ``stream`` is not a terminal.
  * ``False``: nothing is printed at all, :meth:`write` included.

  Use it as a context manager so that the bar is closed on errors too::

    with Progress(epochs, desc="resnet18") as progress:
      for epoch in ...:
        progress.update(metrics)
  """

  def __init__(self,
               total: int,
               desc: str = "",
               enabled: bool | None = None,
               stream: TextIO | None = None,
               *,
               initial: int = 0):
    """Creates and shows the display.

    Args:
      total: the number of epochs of the whole run.
      desc: a short prefix for each line, such as the model name.
      enabled: see the class docstring.
      stream: where to print; ``sys.stderr`` (looked up at call time, so that
        redirections made after import apply) when None.
      initial: epochs already done, for a resumed run: the counter starts
        there and the ETA is computed from the epochs run in this process.
    """
    self.total = total
    self.desc = desc
    self.n = initial
    self._initial = initial
    self._stream = sys.stderr if stream is None else stream
    self._start = _now()
    # In-epoch lines (step()) start after one quiet interval.
    self._last_step_line = self._start
    self.step_every = 10.0
    self._closed = False
    self._bar = None
    if enabled is False:
      self.mode = "off"
    elif enabled or _isatty(self._stream):
      self.mode = "bar"
    else:
      self.mode = "lines"
    if self.mode == "bar":
      # Not tqdm.auto: its notebook widget would ignore `stream`.
      self._bar = tqdm(total=total, initial=initial, desc=desc or None,
                       unit="epoch", file=self._stream, dynamic_ncols=True,
                       leave=True)

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def update(self, metrics: Mapping[str, Any]) -> None:
    """Advances one epoch and shows its metrics.

    Args:
      metrics: the epoch's record, as written to ``metrics.jsonl``; missing
        or null values are left out of the display. Ignored after
        :meth:`close`.
    """
    if self._closed:
      return
    self.n += 1
    self._last_step_line = None  # the next epoch's quiet interval
    postfix = _postfix(metrics)
    if self._bar is not None:
      self._bar.set_postfix_str(postfix, refresh=False)
      self._bar.update(1)
    elif self.mode == "lines":
      print(self._line(postfix), file=self._stream, flush=True)

  def _line(self, postfix: str) -> str:
    elapsed = _now() - self._start
    done = self.n - self._initial
    if self.n >= self.total:
      timing = f"elapsed {_duration(elapsed)}"
    else:
      eta = elapsed / max(done, 1) * (self.total - self.n)
      timing = f"eta {_duration(eta)}"
    prefix = f"{self.desc} " if self.desc else ""
    width = len(str(self.total))
    counter = f"epoch {self.n:>{width}}/{self.total}"
    return " ".join(p for p in (prefix + counter, postfix, timing) if p)

  def step(self, done: int, steps: int, pending: Any = None) -> None:
    """Shows progress inside an epoch, at most every ``step_every`` seconds.

    The host loop of a CPU epoch calls this after each step, so a long epoch
    is not minutes of silence. ``pending`` (the step's output) is waited for
    only when a line is shown, so that it reports steps done, not queued.
    """
    if self.mode == "off" or self._closed or done >= steps:
      return
    now = _now()
    if self._last_step_line is None:
      self._last_step_line = now
    if now - self._last_step_line < self.step_every:
      return
    if pending is not None:
      jax.block_until_ready(pending)
      now = _now()
    self._last_step_line = now
    if self._bar is not None:
      self._bar.set_postfix_str(f"step {done}/{steps}")
    else:
      prefix = f"{self.desc} " if self.desc else ""
      width = len(str(self.total))
      print(f"{prefix}epoch {self.n + 1:>{width}}/{self.total} "
            f"step {done}/{steps}", file=self._stream, flush=True)

  def write(self, msg: str) -> None:
    """Prints a message on its own line without breaking the bar."""
    if self._bar is not None:
      self._bar.write(msg, file=self._stream)
    elif self.mode == "lines":
      print(msg, file=self._stream, flush=True)

  def close(self) -> None:
    """Finishes the display; later calls do nothing."""
    if self._closed:
      return
    self._closed = True
    if self._bar is not None:
      self._bar.close()


def _isatty(stream: Any) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):
    # No isatty, or a closed stream: not a terminal either way.
    return False


class _DecodeLines:
  """The decode progress for a log file: one line per update, at most one
  every `interval` seconds, instead of tqdm's carriage returns (which a file
  keeps as one ever-growing line)."""

  def __init__(self, total: int | None, desc: str, interval: float = 10.0):
    self._total, self._desc, self._interval = total, desc, interval
    self._n, self._t0 = 0, time.monotonic()
    self._last = self._t0

  def update(self, n: int) -> None:
    self._n += n
    now = time.monotonic()
    if now - self._last >= self._interval:
      self._last = now
      self._write(now)

  def _write(self, now: float) -> None:
    of = f"/{self._total}" if self._total else ""
    rate = self._n / max(now - self._t0, 1e-9)
    print(f"{self._desc}: {self._n}{of} images, {rate:,.0f} img/s",
          file=sys.stderr, flush=True)

  def close(self) -> None:
    if self._n and self._last != self._t0:  # finished after a line: say so
      self._write(time.monotonic())


def decode_bar(total: int | None, desc: str, enabled: bool):
  """Progress of decoding ``total`` images (None: unknown): a tqdm bar on a
  terminal, lines in a log file, nothing when not ``enabled``."""
  stream = sys.stderr
  if enabled and not (hasattr(stream, "isatty") and stream.isatty()):
    return _DecodeLines(total, desc)
  return tqdm(total=total, desc=desc, unit="img", disable=not enabled,
                   leave=False)
