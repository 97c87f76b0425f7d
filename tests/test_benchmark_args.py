"""The benchmark scripts refuse a bad flag with one line and exit code 2,
before any work (issue 28): benchmarks/_args.py, shared by all of them.

Each case used to end in a traceback (ZeroDivisionError, KeyError, a
reshape error) or, worse, to run and print numbers for a target of 1.5.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from benchmarks import _args

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
  spec = importlib.util.spec_from_file_location(
      f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


CASES = [
    ("update_overhead", ["--steps", "0"], "--steps", "'0'"),
    ("update_overhead", ["--repeats", "-1"], "--repeats", "'-1'"),
    ("update_overhead", ["--json", "/nonexistent/dir/x.json"], "--json",
     "/nonexistent/dir/x.json"),
    ("export_size", ["--run", "/nonexistent"], "--run", "/nonexistent"),
    ("export_size", ["--layers", "/nonexistent.jsonl"], "--layers",
     "/nonexistent.jsonl"),
    ("train_throughput", ["--methods", "bogus"], "--methods", "'bogus'"),
    ("train_throughput", ["--methods", "rda,"], "--methods", "''"),
    ("train_throughput", ["--model", "resnet99"], "--model", "'resnet99'"),
    ("train_throughput", ["--dtype", "int8"], "--dtype", "'int8'"),
    ("train_throughput", ["--batch-size", "0"], "--batch-size", "'0'"),
    ("scaling", ["--image-shape", "8,8"], "--image-shape", "'8,8'"),
    ("scaling", ["--image-shape", "8,0,1"], "--image-shape", "'8,0,1'"),
    ("scaling", ["--method", "bogus"], "--method", "'bogus'"),
    ("scaling", ["--layouts", "both"], "--layouts", "'both'"),
    ("target_epoch_time", ["--samples", "0"], "--samples", "'0'"),
    ("target_epoch_time", ["--repeats", "0"], "--repeats", "'0'"),
    ("target_epoch_time", ["--target", "1.5"], "--target", "'1.5'"),
    ("target_drift", ["--target", "1.5"], "--target", "'1.5'"),
    ("target_drift", ["--target", "nan"], "--target", "'nan'"),
    ("target_drift", ["--steps", "1"], "--steps", "'1'"),
    ("target_drift", ["--every", "0"], "--every", "'0'"),
    ("goals", ["{tmp}", "--min-sparsity", "2"], "--min-sparsity", "'2'"),
    ("goals", ["{tmp}", "--max-gap", "-1"], "--max-gap", "'-1'"),
    ("goals", ["{tmp}", "--dense-top1", "inf"], "--dense-top1", "'inf'"),
    # Siblings: the other scripts that take counts, lists or fractions.
    ("frontier", ["--out", "{tmp}/f", "--methods", "rda,bogus"], "--methods",
     "'bogus'"),
    ("frontier", ["--out", "{tmp}/f", "--seeds", "0,x"], "--seeds", "'0,x'"),
    ("structured_frontier", ["--out", "{tmp}/s", "--seeds", "-1"], "--seeds",
     "'-1'"),
    ("structured_frontier", ["--out", "{tmp}/s", "--values", "1e-3,nan"],
     "--values", "'1e-3,nan'"),
    ("slim_latency", ["--repeats", "0"], "--repeats", "'0'"),
    ("slim_latency", ["--batch-sizes", "1", "0"], "--batch-sizes", "'0'"),
    ("slim_latency", ["--fractions", "1"], "--fractions", "'1'"),
    ("slim_latency", ["--widths", "16/0/128"], "--widths", "'16/0/128'"),
]


@pytest.mark.parametrize("script,argv,flag,value", CASES,
                         ids=[f"{c[0]}{' '.join(c[1])}" for c in CASES])
def test_bad_flag_one_line_exit_2_before_any_work(script, argv, flag, value,
                                                  tmp_path, capsys):
  mod = _load(script)
  argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
  with pytest.raises(SystemExit) as e:
    mod.main(argv)
  assert e.value.code == 2
  out, err = capsys.readouterr()
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith(f"{script}.py: error: argument {flag}: "), err
  assert value in lines[0], err
  assert out == ""  # nothing measured, nothing printed
  assert not any(tmp_path.iterdir())  # nothing written


def test_export_size_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
  mod = _load("export_size")
  with pytest.raises(SystemExit) as e:
    mod.main(["--run", str(tmp_path)])
  assert e.value.code == 2
  out, err = capsys.readouterr()
  assert out == "" and len(err.strip().splitlines()) == 1
  assert f"--run {tmp_path}: no config.json" in err


@pytest.mark.parametrize("rows,says", [
    ([{"epoch": 1}], "no sparsity_per_layer"),
    ([{"sparsity_per_layer": {"['params']['x']['kernel']": 0.5}}],
     "no sparsity for the ResNet-18 kernel"),
    ("not json", "Expecting value")])
def test_export_size_refuses_a_layers_file_it_cannot_use(rows, says,
                                                         tmp_path, capsys):
  f = tmp_path / "metrics.jsonl"
  f.write_text(rows if isinstance(rows, str)
               else "\n".join(json.dumps(r) for r in rows))
  mod = _load("export_size")
  with pytest.raises(SystemExit) as e:
    mod.main(["--layers", str(f)])
  assert e.value.code == 2
  out, err = capsys.readouterr()
  assert out == "" and len(err.strip().splitlines()) == 1
  assert f"argument --layers: {f}: " in err and says in err


def test_export_size_reads_its_default_layers_file():
  mod = _load("export_size")
  per_layer = mod.read_layers(mod.H200_RUN)
  assert per_layer and all(0.0 <= v <= 1.0 for v in per_layer.values())


@pytest.mark.parametrize("parse,good,bad", [
    (_args.int_at_least(1), [("1", 1), ("50", 50)],
     ["0", "-3", "1.5", "1e3", "", "nan"]),
    (_args.float_in(0.0, 1.0), [("0", 0.0), ("1", 1.0), ("0.95", 0.95)],
     ["1.0001", "-0.1", "nan", "inf", "", "x"]),
    (_args.float_in(0.0, 1.0, hi_open=True), [("0.5", 0.5)], ["1", "1.0"]),
    (_args.image_shape, [("32,32,3", (32, 32, 3)), ("8,8,1", (8, 8, 1))],
     ["8,8", "8,8,1,1", "8,x,1", "0,8,1", "", "8,,1"]),
    (_args.int_list(0), [("0,1,2", ["0", "1", "2"]), ("7", ["7"])],
     ["", "0,", "-1", "1.5", "a"]),
    (_args.float_list(0.0), [("1e-3,2e-3", ["1e-3", "2e-3"])],
     ["", "1e-3,", "-1", "inf", "x"]),
])
def test_argument_types(parse, good, bad):
  for text, want in good:
    assert parse(text) == want
  for text in bad:
    with pytest.raises(argparse.ArgumentTypeError, match="must be"):
      parse(text)
