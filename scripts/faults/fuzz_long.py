"""A long run of tests/test_cli_fuzz.py's properties, beyond the suite's
max_examples. From the repository root:

  PYTHONPATH=. .venv/bin/python scripts/faults/fuzz_long.py \\
      --cli 20000 --config 10000 --seed 1

Prints how many examples each property passed, or the first failing case
(hypothesis shrinks it) and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("--cli", type=int, default=20000)
  ap.add_argument("--config", type=int, default=10000)
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args()

  from hypothesis import HealthCheck, given, seed, settings
  import test_cli_fuzz as t

  def run(name, strategy, check, n):
    count = [0]

    @seed(a.seed)
    @settings(max_examples=n, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def prop(case):
      count[0] += 1
      check(case)

    t0 = time.time()
    try:
      prop()
    except AssertionError as e:
      print(json.dumps(dict(property=name, failed=str(e)[:2000])))
      return False
    print(json.dumps(dict(property=name, examples=count[0],
                          wall_s=round(time.time() - t0, 1))))
    return True

  def check_config(case):
    import os
    import tempfile
    text, flags = case
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
      f.write(text)
    try:
      t.assert_rejected(["--config", f.name, *flags])
    except AssertionError as e:
      raise AssertionError(f"config file text {text!r}: {e}") from None
    finally:
      os.unlink(f.name)

  ok = run("cli", t.invalid_argv(), t.assert_rejected, a.cli)
  ok &= run("config", t.invalid_config(), check_config, a.config)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
