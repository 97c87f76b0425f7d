"""The API reference (``make docs``): Sphinx builds it from the docstrings
with warnings as errors, and it lists every public name of ``rda_optax``.

About 4 s of CPU (autodoc imports the package once), so it stays in
``make test``; sphinx is in the ``test`` extra, so it always runs there.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import rda_optax

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api"
_DIRECTIVE = re.compile(
    r"^\.\. (?:auto)?(?:function|class|data|exception)::\s+(\w+)\s*$", re.M)


def _documented() -> list[str]:
  return _DIRECTIVE.findall((API / "index.rst").read_text())


def test_every_public_name_is_in_the_api_index():
  names = _documented()
  assert sorted(set(names)) == sorted(names), "a name is listed twice"
  # Both ways: a new public name must be added, a removed one dropped.
  assert set(names) == set(rda_optax.__all__)


def test_api_reference_builds_without_warnings(tmp_path):
  out = tmp_path / "html"
  r = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q",
       "-b", "html", "-d", str(tmp_path / "doctrees"), str(API), str(out)],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-5000:]
  page = (out / "index.html").read_text()
  # autodoc really read each docstring: every name got its anchor, and
  # the math reached MathJax as math, not as literal text.
  missing = [n for n in rda_optax.__all__ if f'id="rda_optax.{n}"' not in page]
  assert not missing, missing
  assert page.count('class="math') >= 10
  assert ".. math::" not in page
