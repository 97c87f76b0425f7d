"""Hypothesis profiles.

The suite runs derandomized by default: every run draws the same examples,
so a failure is reproducible and a landing never depends on the luck of the
draw. ``HYPOTHESIS_PROFILE=explore`` draws fresh examples on each run (and
more of them) to look for new failures; each one found becomes an explicit
test (e.g. ``test_criterion_18_subnormal_average_counts_as_zero``).
"""

import os
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
