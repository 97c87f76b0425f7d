"""Hypothesis profiles.

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
# scripts/): most tests train the same small CNN on digits, and before this
# each process recompiled the same training step, evaluation and statistics
# programs (about 40% of the suite's CPU time on the 2-core machines here).
# A cache hit loads the executable XLA compiled for the identical program,
# so it changes no result (tests/test_reliability.py has relied on this for
# its own runs). The directory is fresh per session and removed at its end:
# no run depends on what an earlier session compiled. Set by the controller
# before the workers start, so they and their children inherit it; an outer
# JAX_COMPILATION_CACHE_DIR is replaced, so that a run of the suite never
# reads a cache it did not write.
_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
  if hasattr(config, "workerinput"):  # an xdist worker: the controller's dir
    return
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
