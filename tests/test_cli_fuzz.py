"""Property-based tests of the command line and the --config loader.

The property (docs/RELIABILITY.md, "Config fuzzing"): every invalid input
ends in exit code 2 with exactly one stderr line starting with
"rda-train: error:", never a traceback, and no run directory is created.

Generated cases always hold at least one invalid element (a bad value for
one flag, an unknown name, a bad combination, a bad config file), mixed with
valid values for other flags, so no generated case trains. A separate
property checks that the "valid" pools really are valid (config built and
data checked, no training), which keeps the oracle honest.

The violations this property found (docs/RELIABILITY.md, section 6) are in
the pools, and are also kept as explicit examples at the end of this file
(FOUND_*), so each stays covered whatever hypothesis draws.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from train import inputs
from train import checks
from train import cli
from train import config as config_lib
from train import run as run_lib
from train._errors import UsageError
from train.presets import PRESETS

# Valid and cheap; every generated flag comes after it and overrides it.
BASE = ["--epochs", "1", "--asr-epochs", "0", "--batch-size", "64",
        "--progress", "none"]

NONFINITE = ["nan", "-nan", "inf", "-inf", "1e400", "NaN", "Infinity"]
NON_NUMERIC = ["abc", "", "1,5", "0x10", "1e", "two", "1.0.0", " ", "--"]
NOT_INT = ["1.5", "1e3", "nan", "inf", "0.0"]

# flag -> (valid values, invalid values); valid values are valid in any
# combination with the valid values of the other flags here.
FLOAT_FLAGS = {
    "--gamma": (["0.5", "1", "2.5"], ["0", "-1", "-1e-9"]),
    "--l1": (["0", "1e-4", "1e-3"], ["-1e-4", "-1"]),
    "--l2": (["0", "1e-4"], ["-0.5"]),
    "--lr": (["0.05", "0.1"], ["0", "-0.1"]),
    "--momentum": (["0", "0.9"], ["1", "1.5", "-0.1"]),
    "--weight-decay": (["0", "5e-4"], ["-1"]),
    "--finetune-lr-scale": (["0.1", "1"], ["0", "-2"]),
    "--label-smoothing": (["0", "0.1"], ["1", "-0.1", "2"]),
    # 0.9999 of digits leaves no training image.
    "--val-fraction": (["0.1", "0.2"], ["1", "-0.1", "1.5", "0.9999"]),
    "--init-scale": (["2", "10"], ["0", "-1"]),
    # No valid value: with one, --method prune-finetune would become valid.
    "--target-sparsity": ([], ["1", "-0.1", "1.5"]),
}
INT_FLAGS = {
    "--epochs": (["1", "2"], ["-1", "-100"]),
    "--asr-epochs": (["0", "1"], ["-1"]),
    # 0 <= N <= --asr-epochs; only -1 is invalid whatever else is drawn.
    "--debias-epochs": (["0"], ["-1"]),
    # 1293 training images at --val-fraction 0.1.
    "--batch-size": (["32", "64"], ["0", "-1", "1294", "100000",
                                    "99999999999999999999"]),
    "--eval-batch-size": (["100", "1000"], ["0", "-5"]),
    "--checkpoint-every": (["1", "5"], ["0", "-1"]),
    "--max-bad-steps": (["1", "10"], ["0", "-3"]),
    "--num-classes": (["10"], ["0", "1", "-3", "7", "11",
                               "99999999999999999999"]),
    "--image-size": (["8"], ["0", "-1", "100000", "1025"]),
    "--seed": (["0", "1", "4294967296", "9223372036854775807"],
               ["-1", "9223372036854775808", "-99999999999999999999"]),
    "--devices": (["1"], ["0", "-1"]),
    "--fsdp": (["1"], ["0", "-1"]),
}
STR_FLAGS = {
    "--model": (["small_cnn"], ["resnet99", "", "SMALL_CNN", "small-cnn"]),
    "--method": (["rda", "sgd", "prox-sgd"],
                 ["adam", "", "RDA", "prune-finetune"]),  # no target given
    "--dataset": (["digits"], ["svhn", "", "Digits", "folder"]),  # no data dir
    "--center": (["zero", "init"], ["one", ""]),
    "--augment": (["auto", "none", "crop"], ["rotate", ""]),
    "--dtype": (["float32", "auto"], ["float16", "int8", ""]),
    "--prune-scope": (["layer", "global"], ["net", ""]),
    "--progress": (["none"], ["fancy", ""]),
    "--lr-schedule": (["cosine", "constant", "onecycle", "0:0.1,1:0.01"],
                      ["linear", "0:-1", "1:0.1,0:0.2", "0:nan", "a:b", ":",
                       "0:0.1,", "-1:0.1", "0:0", "0:inf"]),
    "--gamma-schedule": (["0:1,1:0.5", ""],
                         ["0:0", "0:-1", "x", "1:1,1:2", "0:inf", "-1:1",
                          "0:1,", "0:nan"]),
    "--l1-schedule": (["0:1e-4", ""], ["0:-1", "0:nan", "0:1e-4:5", "y"]),
    "--compare": ([], ["rda,adam", ",", "rda,", "adam", "prune-finetune",
                       "sgd,sgd", "rda,sgd,rda"]),
    "--preset": (["digits-demo"], ["nope", "", "paper"]),
    "--run-name": (["r1"], ["a/b", "..", ".", "/abs/x", "../../x", ""]),
    "--test-dir": ([], ["/nonexistent/test"]),
    "--target-sparsity-from": ([], ["/nonexistent/run"]),
    "--config": ([], ["/nonexistent/c.json", "/"]),
    "--resume": ([], ["/nonexistent/run", "/"]),
}
# Names argparse does not know, and that are no prefix of a flag it knows
# (argparse accepts unambiguous prefixes: --epoch means --epochs).
UNKNOWN = [["--foo"], ["--foo", "1"], ["--gammas", "1"], ["--lr-decay", "0.1"],
           ["-x"], ["extra"], ["--batch_size", "64"], ["--l3", "0"],
           ["--", "x"], ["-e", "1"]]
# Combinations of valid values that are invalid together.
COMBOS = [["--epochs", "0", "--asr-epochs", "0"]]


def _parser_flags() -> dict[str, type]:
  """Every option of the real parser with its argparse type."""
  out = {}
  for action in cli.parser()._actions:  # pylint: disable=protected-access
    for opt in action.option_strings:
      if opt.startswith("--") and action.nargs != 0:
        out[opt] = action.type
  return out


PARSER_FLAGS = _parser_flags()


def _value_pools():
  """(flag -> valid values, flag -> invalid values) over the parser's flags.

  Numeric flags this file has no table for still get the values argparse
  must reject (non-numbers), so a new flag is fuzzed from the day it lands.
  """
  valid, invalid = {}, {}
  for flag, typ in PARSER_FLAGS.items():
    if flag in ("--out",):
      continue
    if typ is float:
      v, bad = FLOAT_FLAGS.get(flag, ([], []))
      valid[flag], invalid[flag] = v, bad + NONFINITE + NON_NUMERIC
    elif typ is int:
      v, bad = INT_FLAGS.get(flag, ([], []))
      valid[flag], invalid[flag] = v, bad + NOT_INT + NON_NUMERIC
    elif flag in STR_FLAGS:
      valid[flag], invalid[flag] = STR_FLAGS[flag]
  return ({k: v for k, v in valid.items() if v},
          {k: v for k, v in invalid.items() if v})


VALID, INVALID = _value_pools()


def test_the_tables_name_real_flags():
  """A renamed flag must not silently drop out of the fuzzing."""
  for table in (FLOAT_FLAGS, INT_FLAGS, STR_FLAGS):
    for flag in table:
      if flag in ("--devices", "--fsdp") and flag not in PARSER_FLAGS:
        continue  # being added by the sharding work
      assert flag in PARSER_FLAGS, flag


@contextlib.contextmanager
def _sandbox():
  """A fresh directory as cwd (so a default --out would land there too)."""
  old = os.getcwd()
  with tempfile.TemporaryDirectory() as d:
    os.chdir(d)
    try:
      yield Path(d)
    finally:
      os.chdir(old)


def _run_cli(argv: list[str]) -> tuple[object, str]:
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      code = cli.main(argv)
    except SystemExit as e:  # argparse errors
      code = e.code
    except BaseException as e:  # pylint: disable=broad-except
      code = f"{type(e).__name__}: {e}"
  return code, err.getvalue()


def assert_rejected(argv: list[str], out_flag: bool = True) -> None:
  """The property: exit 2, one 'rda-train: error:' line, no run directory
  (in --out, which is in a fresh cwd, or in that cwd without --out)."""
  with _sandbox() as d:
    full = ["--out", str(d / "runs"), *argv] if out_flag else list(argv)
    code, err = _run_cli(full)
    lines = [l for l in err.splitlines() if l.strip()]
    created = sorted(p.name for p in d.rglob("*"))
  assert code == 2, f"argv={full!r}: exit {code!r}; stderr: {err[-1500:]}"
  assert len(lines) == 1, f"argv={full!r}: stderr has {len(lines)} lines: {err[-1500:]}"
  assert lines[0].startswith("rda-train: error:"), f"argv={full!r}: {lines[0]}"
  assert "Traceback" not in err
  assert created == [], f"argv={full!r}: left behind {created}"


_flag_value = lambda pools: st.sampled_from(sorted(pools)).flatmap(
    lambda f: st.sampled_from(pools[f]).map(lambda v: [f, v]))


@st.composite
def invalid_argv(draw):
  """BASE + some valid flags + at least one invalid element, shuffled."""
  bad = draw(st.one_of(_flag_value(INVALID), st.sampled_from(UNKNOWN),
                       st.sampled_from(COMBOS)))
  taken = {t for t in bad if t.startswith("--")}
  # Mostly the one bad element alone, so that it is the one that must be
  # caught (another bad value would often be caught first).
  extra_invalid = draw(st.one_of(
      st.just([]), st.just([]), st.just([]),
      st.lists(_flag_value(INVALID), min_size=1, max_size=2)))
  valid = draw(st.lists(_flag_value(VALID), max_size=4))
  items = [bad]
  for item in extra_invalid + valid:
    if item[0] not in taken:  # one value per flag: a later one would win
      taken.add(item[0])
      items.append(item)
  items = draw(st.permutations(items))
  return BASE + [t for item in items for t in item]


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(invalid_argv())
def test_invalid_command_lines_are_rejected_cleanly(argv):
  assert_rejected(argv)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_flag_value(VALID), max_size=5, unique_by=lambda i: i[0]))
def test_valid_pools_are_valid(items):
  """The oracle's own check: all-valid flags pass every check that runs
  before a run directory exists (config, data), without training."""
  argv = BASE + [t for item in items for t in item]
  args = cli.parser().parse_args(argv)
  flags = {k: v for k, v in vars(args).items() if k not in cli._NOT_CONFIG}  # pylint: disable=protected-access
  preset = args.preset
  if preset is None and args.model is None and args.dataset is None:
    preset = "digits-demo"  # as cli.main does
  cfg = checks.build(preset, None, flags)
  inputs.check_data(cfg, inputs.load_data(cfg))


# --- --config FILE.json --------------------------------------------------------

WRONG_TYPE = {
    int: ["3", 1.5, True, [1], {"a": 1}, "nan"],
    float: ["x", True, [], {}, "1.0"],
    str: [3, 1.5, True, [], {}],
    bool: ["yes", 1, 0, "true", []],
}
# Values of the right type that validation rejects (JSON numbers).
BAD_VALUE = {
    "gamma": [0, -1, float("nan"), float("inf")],
    "l1": [-1e-4, float("nan"), float("-inf")],
    "l2": [-0.5, float("inf")],
    "lr": [0, -0.1, float("nan")],
    "momentum": [1, 1.5, -0.1],
    "weight_decay": [-1],
    "finetune_lr_scale": [0, -2],
    "label_smoothing": [1, -0.1],
    "val_fraction": [1, -0.1, float("nan")],
    "init_scale": [0, -1, float("inf")],
    "target_sparsity": [1, -0.1],
    "epochs": [-1],
    "asr_epochs": [-1],
    "debias_epochs": [-1],
    "batch_size": [0, -1, 100000],
    "eval_batch_size": [0],
    "checkpoint_every": [0],
    "max_bad_steps": [0],
    "num_classes": [0, 1, 7],
    "image_size": [0, -1, 100000],
    "seed": [-5, 2**63],
    "devices": [0, -1],
    "fsdp": [0, -1],
    "model": ["resnet99", ""],
    "method": ["adam", "prune-finetune"],
    "dataset": ["svhn", "folder"],
    "center": ["one"],
    "augment": ["rotate"],
    "dtype": ["float16"],
    "prune_scope": ["net"],
    "progress": ["fancy"],
    "lr_schedule": ["linear", "0:-1"],
    "gamma_schedule": ["0:0", "x"],
    "l1_schedule": ["0:-1"],
    "compare": ["rda,adam", ","],
    "test_dir": ["/nonexistent/test"],
    "target_sparsity_from": ["/nonexistent/run"],
    "preset": ["nope", ""],
    "run_name": ["a/b", "..", "/abs", ""],
    # null wherever the field's default is not None (None means "unset").
    **{k: [None] for k, f in config_lib.FIELDS.items()
       if f.default is not None},
}
GOOD_VALUE = {
    "gamma": [0.5, 1, 2.5], "l1": [0, 1e-3], "lr": [0.05], "momentum": [0.9],
    "epochs": [1, 2], "asr_epochs": [0, 1], "batch_size": [32, 64],
    "seed": [0, 3], "init_scale": [2.0, 10], "center": ["zero", "init"],
    "model": ["small_cnn"], "method": ["rda", "sgd"], "dataset": ["digits"],
    "progress": ["none"], "skip_bad_images": [True, False],
    "gamma_schedule": ["", "0:1,1:0.5"], "run_name": [None],
}
UNKNOWN_KEYS = ["foo", "Epochs", "batch-size", "", "gamma ", "help",
                "list_presets", "resume", "config"]
NOT_AN_OBJECT = ["[1, 2]", "3", '"x"', "null", "true"]
NOT_JSON = ["{", "{'gamma': 1}", "", "{\"a\": 1,}", "\u00ff\u00fe", "gamma=1",
            "{\"gamma\": 1} {}"]


def _field_type(name: str):
  default = config_lib.FIELDS[name].default
  if name in ("init_scale", "target_sparsity", "target_ramp"):
    return float
  if name in ("image_size", "num_classes", "devices", "threshold_samples",
              "val_seed"):
    return int
  return type(default) if default is not None else str


def _bad_values() -> dict[str, list]:
  """field -> JSON values that must be rejected, for every Config field."""
  out = {}
  for name in config_lib.FIELDS:
    out[name] = (WRONG_TYPE.get(_field_type(name), [])
                 + BAD_VALUE.get(name, []))
  return out


BAD_VALUES = _bad_values()


@st.composite
def invalid_config(draw):
  """(file text, extra argv): a config with at least one bad key/value."""
  kind = draw(st.sampled_from(["value", "value", "value", "key", "object",
                               "json"]))
  if kind == "object":
    return draw(st.sampled_from(NOT_AN_OBJECT)), []
  if kind == "json":
    return draw(st.sampled_from(NOT_JSON)), []
  data = {}
  good = draw(st.lists(st.sampled_from(sorted(GOOD_VALUE)), max_size=4,
                       unique=True))
  for k in good:
    data[k] = draw(st.sampled_from(GOOD_VALUE[k]))
  if kind == "key":
    data[draw(st.sampled_from(UNKNOWN_KEYS))] = draw(
        st.sampled_from([1, "x", None, True]))
  else:
    k = draw(st.sampled_from(sorted(BAD_VALUES)))
    data[k] = draw(st.sampled_from(BAD_VALUES[k]))
  # Bad values must not be overridden by BASE's flags: pass only the flags
  # whose key the file does not set.
  flags = []
  for i in range(0, len(BASE), 2):
    key = BASE[i][2:].replace("-", "_")
    if key not in data:
      flags += BASE[i:i + 2]
  return json.dumps(data), flags


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(invalid_config())
def test_invalid_config_files_are_rejected_cleanly(case):
  text, flags = case
  with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False,
                                   encoding="utf-8") as f:
    f.write(text)
  try:
    assert_rejected(["--config", f.name, *flags])
  except AssertionError as e:
    raise AssertionError(f"config file text {text!r}: {e}") from None
  finally:
    os.unlink(f.name)


def test_config_file_that_is_not_text_or_not_a_file(tmp_path):
  binary = tmp_path / "bin.json"
  binary.write_bytes(bytes(range(256)))
  assert_rejected(["--config", str(binary), *BASE])
  assert_rejected(["--config", str(tmp_path), *BASE])  # a directory


# --- Found by the properties above, kept as explicit examples ---------------
# Each was a traceback or a half-written run directory before its fix
# (docs/RELIABILITY.md, section 6).

FOUND_CLI = [
    pytest.param(BASE + ["--seed", "-1"], id="seed-negative"),
    pytest.param(BASE + ["--seed", "9223372036854775808"], id="seed-2**63"),
    pytest.param(BASE + ["--image-size", "100000"], id="image-size-huge"),
    pytest.param(BASE + ["--compare", "sgd,sgd"], id="compare-duplicate"),
]


@pytest.mark.parametrize("argv", FOUND_CLI)
def test_found_cli_violations(argv):
  assert_rejected(argv)


def test_seed_bounds_are_inclusive_exclusive():
  """2**63 - 1 is the largest seed both numpy and jax.random.key take."""
  cfg = checks.build(None, None, {"seed": 2**63 - 1})
  assert cfg.seed == 2**63 - 1
  import jax
  import numpy as np
  jax.random.key(cfg.seed)
  np.random.default_rng(cfg.seed)


# Fields whose JSON null got past _coerce and crashed validate() or the run.
_NULL_CRASH = ["epochs", "asr_epochs", "batch_size", "eval_batch_size",
               "lr_schedule", "seed", "out", "checkpoint_every",
               "max_bad_steps", "fsdp"]
FOUND_CONFIG = [
    pytest.param({k: None}, id=f"null-{k}") for k in _NULL_CRASH
] + [pytest.param({"seed": -5}, id="seed-negative")]


@pytest.mark.parametrize("data", FOUND_CONFIG)
def test_found_config_violations(data, tmp_path):
  f = tmp_path / "c.json"
  f.write_text(json.dumps(data))
  flags = [t for i in range(0, len(BASE), 2)
           if BASE[i][2:].replace("-", "_") not in data
           for t in BASE[i:i + 2]]
  assert_rejected(["--config", str(f), *flags], out_flag="out" not in data)


def test_resume_refuses_flags_it_would_ignore(tmp_path):
  run = tmp_path / "r"
  run.mkdir()
  (run / "config.json").write_text("{}")
  for flag in (["--epochs", "5"], ["--gamma", "2"], ["--preset", "digits-demo"]):
    code, err = _run_cli(["--resume", str(run), *flag])
    assert code == 2, (flag, err)
    assert err.count("\n") == 1 and f"{flag[0]} cannot change it" in err, err


@pytest.mark.parametrize("exc,code,line", [
    (UsageError("--l1: bad"), 2, "rda-train: error: --l1: bad"),
    (OSError(28, "No space left on device", "runs/x/metrics.jsonl"), 2,
     "rda-train: error: runs/x/metrics.jsonl: No space left on device"),
    (run_lib.Stopped("interrupted after epoch 1", 130), 130,
     "rda-train: interrupted after epoch 1"),
])
def test_main_maps_run_errors_to_exit_codes(monkeypatch, exc, code, line):
  """What the property relies on: main turns a UsageError, and an OSError
  (a full disk or a vanished --out while writing), into exit 2 and one
  'rda-train: error:' line; a stopped run into its own code and line."""
  def fail(cfg):
    raise exc
  monkeypatch.setattr(run_lib, "run", fail)
  got, err = _run_cli(BASE)
  assert got == code and err.splitlines() == [line], (got, err)


def test_main_does_not_hide_bugs_behind_exit_2(monkeypatch):
  """Only those types mean bad input: any other exception (a bug, e.g. a
  plain ValueError or KeyError) propagates with its traceback, so the
  property cannot pass by swallowing everything into exit 2."""
  for exc in (ValueError("bug"), KeyError("bug"), RuntimeError("bug")):
    def fail(cfg, exc=exc):
      raise exc
    monkeypatch.setattr(run_lib, "run", fail)
    got, _ = _run_cli(BASE)
    assert got == f"{type(exc).__name__}: {exc}", got


def test_config_file_preset_is_applied_beneath_the_file(tmp_path):
  """{"preset": P} in a file means what --preset P means; the file's own keys
  and then the flags still win, and --preset on the command line beats the
  file's."""
  f = tmp_path / "c.json"
  f.write_text(json.dumps({"preset": "digits-demo", "epochs": 3}))
  from_file = checks.build(None, str(f), {})
  plain = checks.build("digits-demo", None, {"epochs": 3})
  assert from_file == plain and from_file.preset == "digits-demo"
  assert checks.build(None, str(f), {"epochs": 5}).epochs == 5
  other = [p for p in PRESETS if p != "digits-demo"][0]
  assert checks.build(other, str(f), {}).preset == other
