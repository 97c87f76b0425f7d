"""What `pip install .` installs: the library alone (issue 26).

The wheel built from this checkout holds one top-level package, `rda_optax`,
and requires jax, optax and numpy only; `models/`, `train/` and the rest of
the experiment suite stay in the checkout, so they can neither shadow nor be
shadowed by a user's own `models` or `train` module.
"""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
  out = tmp_path_factory.mktemp("wheel")
  # A copy of the checkout without build outputs: setuptools builds in the
  # source tree and reuses a stale build/ directory.
  src = tmp_path_factory.mktemp("src") / "rda-optax"
  shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
      ".git", ".venv", ".data", "runs", "build", "dist", "*.egg-info",
      "__pycache__", ".pytest_cache", ".hypothesis", "results"))
  # No build isolation: the test extra installs setuptools, and CI's
  # package index is not needed a second time.
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                  "--no-build-isolation", "-w", str(out), str(src)],
                 check=True, capture_output=True, text=True)
  (whl,) = out.glob("rda_optax-*.whl")
  return whl


def test_wheel_holds_only_the_library(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split("/")[0] for n in names}
  dist_info = {t for t in tops if t.endswith(".dist-info")}
  assert tops - dist_info == {"rda_optax"}, sorted(tops)
  sources = {n for n in names if n.startswith("rda_optax/")}
  expected = {f"rda_optax/{p.name}" for p in (ROOT / "rda_optax").glob("*.py")}
  assert sources == expected


def test_wheel_requires_jax_optax_numpy_only(wheel):
  (meta,) = [n for n in zipfile.ZipFile(wheel).namelist()
             if n.endswith(".dist-info/METADATA")]
  msg = email.message_from_bytes(zipfile.ZipFile(wheel).read(meta))
  required = {r.split(";")[0].split("<")[0].split(">")[0].split("=")[0].strip()
              for r in msg.get_all("Requires-Dist") if "extra ==" not in r}
  assert required == {"jax", "optax", "numpy"}
  entry_points = [n for n in zipfile.ZipFile(wheel).namelist()
                  if n.endswith("entry_points.txt")]
  assert not entry_points  # no console script pointing at an absent package


def test_library_imports_without_the_suites_dependencies(tmp_path):
  # A user's own `models` and `train` modules next to their script, as in
  # many projects: rda_optax neither imports nor hides them, and needs none
  # of flax, orbax, sklearn, matplotlib, PIL, tqdm.
  (tmp_path / "models.py").write_text("MINE = 1\n")
  (tmp_path / "train.py").write_text("MINE = 2\n")
  code = (
      "import sys\n"
      "blocked = ('flax', 'orbax', 'sklearn', 'matplotlib', 'PIL', 'tqdm')\n"
      "class Block:\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      "    if name.split('.')[0] in blocked:\n"
      "      raise ImportError('blocked: ' + name)\n"
      "sys.meta_path.insert(0, Block())\n"
      "import rda_optax, models, train\n"
      "assert models.MINE == 1 and train.MINE == 2\n"
      "print(len(rda_optax.__all__))\n")
  # Only the library on the path, as an installed wheel gives: not the
  # checkout's models/ and train/.
  lib = tmp_path / "site"
  lib.mkdir()
  (lib / "rda_optax").symlink_to(ROOT / "rda_optax")
  env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": str(lib)}
  r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  assert int(r.stdout) > 10
