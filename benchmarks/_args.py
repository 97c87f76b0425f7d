"""Argument checks shared by the benchmark scripts.

Every bad value is refused while the command line is parsed, so before any
model is built, compiled or timed and before any file is written: one line
``SCRIPT: error: argument --FLAG: ...`` on stderr and exit code 2, the
trainer's own convention (``rda-train``). Each ``type=`` function here
raises ``argparse.ArgumentTypeError``, which argparse turns into that line.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


class Parser(argparse.ArgumentParser):
  """An ``ArgumentParser`` whose errors are one line (no usage block), named
  after the script ``file`` (not ``sys.argv[0]``, which is pytest's or
  ``-m``'s when ``main`` is called from elsewhere)."""

  def __init__(self, file: str, **kwargs: Any):
    super().__init__(prog=Path(file).name, **kwargs)

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _fail(what: str, text: str):
  raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")


def int_at_least(lo: int) -> Callable[[str], int]:
  def parse(text: str) -> int:
    try:
      v = int(text)
    except ValueError:
      _fail(f"an integer >= {lo}", text)
    if v < lo:
      _fail(f"an integer >= {lo}", text)
    return v
  return parse


def float_in(lo: float, hi: float, *,
             hi_open: bool = False) -> Callable[[str], float]:
  """A finite float in ``[lo, hi]`` (``[lo, hi)`` with ``hi_open``)."""
  what = f"a number in [{lo:g}, {hi:g}{')' if hi_open else ']'}"

  def parse(text: str) -> float:
    try:
      v = float(text)
    except ValueError:
      _fail(what, text)
    if not (math.isfinite(v) and lo <= v and (v < hi if hi_open else v <= hi)):
      _fail(what, text)
    return v
  return parse


def int_list(lo: int) -> Callable[[str], list[str]]:
  """Comma-separated integers >= ``lo``, returned as their texts (the
  scripts put them into run names and command lines as written)."""
  one = int_at_least(lo)

  def parse(text: str) -> list[str]:
    items = text.split(",")
    try:
      for s in items:
        one(s)
    except argparse.ArgumentTypeError:
      _fail(f"comma-separated integers >= {lo}", text)
    return items
  return parse


def float_list(lo: float) -> Callable[[str], list[str]]:
  """Comma-separated finite numbers >= ``lo``, returned as their texts."""
  def parse(text: str) -> list[str]:
    items = text.split(",")
    for s in items:
      try:
        v = float(s)
      except ValueError:
        v = math.nan
      if not (math.isfinite(v) and v >= lo):
        _fail(f"comma-separated numbers >= {lo:g}", text)
    return items
  return parse


def image_shape(text: str) -> tuple[int, int, int]:
  """``H,W,C``: three integers >= 1 (an image batch is NHWC)."""
  try:
    shape = tuple(int(s) for s in text.split(","))
  except ValueError:
    shape = ()
  if len(shape) != 3 or min(shape) < 1:
    _fail("H,W,C, three integers >= 1", text)
  return shape


def names_from(valid: Iterable[str], what: str) -> Callable[[str], list[str]]:
  """A comma-separated, non-empty list of names from ``valid``."""
  valid = tuple(valid)

  def parse(text: str) -> list[str]:
    items = text.split(",")
    bad = [s for s in items if s not in valid]
    if not text or bad:
      raise argparse.ArgumentTypeError(
          f"unknown {what} {bad[0] if bad else text!r} (one or more of "
          f"{', '.join(valid)}, comma-separated)")
    return items
  return parse


def one_of(valid: Iterable[str], what: str) -> Callable[[str], str]:
  valid = tuple(valid)

  def parse(text: str) -> str:
    if text not in valid:
      raise argparse.ArgumentTypeError(
          f"unknown {what} {text!r} (one of {', '.join(valid)})")
    return text
  return parse


def existing_dir(text: str) -> Path:
  p = Path(text)
  if not p.is_dir():
    raise argparse.ArgumentTypeError(f"{text}: no such directory")
  return p


def existing_file(text: str) -> Path:
  p = Path(text)
  if not p.is_file():
    raise argparse.ArgumentTypeError(f"{text}: no such file")
  return p


def output_file(text: str) -> Path:
  """A file to write at the end: its directory must exist now, so that a
  long measurement is not lost to a typo in the path."""
  p = Path(text)
  if not text or not p.parent.is_dir() or p.is_dir():
    raise argparse.ArgumentTypeError(
        f"{text}: cannot write there (no such directory, or a directory)")
  return p


def float_dtype(text: str) -> Any:
  """``auto`` or a floating dtype name jax knows (float32, bfloat16...)."""
  import jax.numpy as jnp  # only when the flag is given
  if text == "auto":
    return text
  try:
    d = jnp.dtype(text)
  except TypeError:
    d = None
  if d is None or not jnp.issubdtype(d, jnp.floating):
    _fail("auto or a floating dtype (float32, bfloat16, float16)", text)
  return text
