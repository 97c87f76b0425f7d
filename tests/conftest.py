"""Hypothesis profiles.

The suite runs derandomized by default: every run draws the same examples,
so a failure is reproducible and a landing never depends on the luck of the
draw. ``HYPOTHESIS_PROFILE=explore`` draws fresh examples on each run (and
more of them) to look for new failures; each one found becomes an explicit
test (e.g. ``test_criterion_18_subnormal_average_counts_as_zero``).
"""

import os

from hypothesis import settings

settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
