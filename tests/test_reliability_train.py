"""Reliability round 3 of the trainer (issue 28; docs/RELIABILITY.md,
"Round 3 (trainer)").

Each test states what the trainer guarantees for odd data or hostile input:
16-bit images keep their gray levels, unfinished runs are not exported,
crafted sparse files end in one line, every pruning method prunes, a FLOPs
target comes from a comparable run, the preset in force is visible, and the
logged sparsity counts exact zeros only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from train import cli
from train.data import _decode

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
SMALL = ["--batch-size", "64", "--progress", "none"]


def _main(argv) -> tuple[object, str, str]:
  """Runs the CLI in-process: (exit code, stdout, stderr)."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
    try:
      code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse
      code = e.code
  return code, out.getvalue(), err.getvalue()


def _one_line(err: str, needle: str, prefix: str = "rda-train") -> None:
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1, err
  assert lines[0].startswith(prefix) and needle in lines[0], err
  assert "Traceback" not in err


def _listing(path: Path) -> list[str]:
  return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- 1. images wider than 8 bits ----------------------------------------------

GRADIENT = np.arange(65536, dtype=np.uint16).reshape(256, 256)


@pytest.mark.parametrize("mode,fmt,pixels,full", [
    ("I;16", "PNG", GRADIENT, 65535),
    ("I", "TIFF", GRADIENT.astype(np.int32), 65535),
    ("F", "TIFF", GRADIENT.astype(np.float32) / 65535, 1.0),
])
def test_wide_gray_images_are_scaled_not_clipped(mode, fmt, pixels, full,
                                                 tmp_path):
  f = tmp_path / f"g.{fmt.lower()}"
  image = Image.fromarray(pixels)
  image = image if image.mode == mode else image.convert(mode)
  image.save(f, fmt)
  with Image.open(f) as back:
    assert back.mode == mode  # the case under test, not an 8-bit file
  [(got, error)] = _decode.decode_chunk([str(f)], None)
  assert error is None, error
  assert got.dtype == np.uint8 and got.shape == pixels.shape
  # Every one of the 256 gray levels, in the gradient's order, each within
  # rounding of the value's share of the mode's full scale.
  assert np.unique(got).tolist() == list(range(256))
  assert (np.diff(got.reshape(-1).astype(int)) >= 0).all()
  assert np.abs(got - pixels.astype(np.float64) * 255 / full).max() <= 0.5 + 1e-6
  # Resized too: the scaling happens before the resampling.
  [(small, _)] = _decode.decode_chunk([str(f)], 16)
  assert small.min() < 16 and small.max() > 239


@pytest.mark.parametrize("mode,pixels", [
    ("I", np.array([[-5, 70000]], np.int32)),
    ("F", np.array([[0.0, 2.5]], np.float32)),
])
def test_wide_gray_images_of_unknown_scale_are_refused(mode, pixels, tmp_path):
  f = tmp_path / "g.tiff"
  Image.fromarray(pixels).save(f, "TIFF")
  [(got, error)] = _decode.decode_chunk([str(f)], None)
  assert got is None and len(error.splitlines()) == 1
  assert mode in error and "8- or 16-bit" in error
