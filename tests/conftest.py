"""Hypothesis profiles, and the session's XLA compilation cache (below).

The suite runs derandomized by default: every run draws the same examples,
so a failure is reproducible and a landing never depends on the luck of the
draw. ``HYPOTHESIS_PROFILE=explore`` draws fresh examples on each run (and
more of them) to look for new failures; each one found becomes an explicit
test (e.g. ``test_criterion_18_subnormal_average_counts_as_zero``).
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

from hypothesis import settings

# The experiment suite (models/, train/) is imported from the checkout, not
# installed: pytest finds it through pyproject's `pythonpath`, and the
# subprocesses some tests start (python -c, python -m train, scripts/) find it
# through PYTHONPATH, whatever their working directory.
_ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)

settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


# One persistent XLA compilation cache for the whole session, shared by both
# xdist workers and every subprocess they start (python -m train, python -c,
# scripts/): most tests train the small CNN on digits, and each process
# compiled the same training steps, evaluations, initializations and small
# eager ops again (8 training-heavy modules: 467 s of CPU without it, 209 s
# with it, 2026-12-03). A hit loads the executable XLA compiled for the
# identical program (the key hashes the program, the XLA flags, the device
# and the compile options), so no result changes: 11 methods trained with
# and without a warm cache gave bit-identical parameters, optimizer states
# and metrics. The directory is fresh per session and removed at its end, so
# no test depends on what an earlier session compiled; an outer
# JAX_COMPILATION_CACHE_DIR is replaced for the same reason. The controller
# sets it before the workers start: they and their children inherit it.
_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


# JAX writes a cache entry in place, not by a rename: a process that looks
# up the same program while another writes it reads a truncated entry, warns
# "Error reading persistent compilation cache entry" and compiles it itself
# (the same result, as on a miss). That warning would be a stray line in the
# stderr some tests read, so the subprocesses ignore it; pyproject's
# filterwarnings does the same in the workers. Not set before the workers
# start: a PYTHONWARNINGS of their own would change pytest's default filters.
_RACE_FILTER = "ignore:Error reading persistent compilation cache entry"


def _ignore_the_race_in_subprocesses():
  os.environ["PYTHONWARNINGS"] = ",".join(
      f for f in (os.environ.get("PYTHONWARNINGS"), _RACE_FILTER) if f)


def pytest_configure(config):
  if hasattr(config, "workerinput"):  # an xdist worker: the controller's dir
    _ignore_the_race_in_subprocesses()
    return
  if not getattr(config.option, "numprocesses", None):  # runs the tests
    _ignore_the_race_in_subprocesses()
  path = tempfile.mkdtemp(prefix="rda-optax-jax-cache-")
  config._rda_jax_cache = path  # pylint: disable=protected-access
  os.environ[_CACHE_ENV] = path
  # Cache every program, not only those that took over a second: the small
  # ones (init, evaluation, statistics) are most of a short run's compiles.
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  if "jax" in sys.modules:  # imported already: it read its flags then
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
  path = getattr(config, "_rda_jax_cache", None)
  if path:
    shutil.rmtree(path, ignore_errors=True)
