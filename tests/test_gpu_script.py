"""scripts/gpu_issue17.sh, the device script of issue 17, run on CPU."""

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_issue17.sh"
_spec = importlib.util.spec_from_file_location("goals", ROOT / "benchmarks" / "goals.py")
goals = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(goals)


def _tiny_cifar(path: Path) -> Path:
  """A 2-class, 32x32 RGB tarball laid out class/image, like the CIFAR one."""
  from PIL import Image
  rng = np.random.default_rng(0)
  src = path / "src"
  for label, name in enumerate(("airplane", "cat")):
    (src / name).mkdir(parents=True)
    for i in range(300):  # 540 training images: one dense batch of 512
      px = rng.integers(0, 80, (32, 32, 3)) + np.array([160 * label, 40, 90])
      Image.fromarray(px.astype(np.uint8)).save(src / name / f"{i:03d}.jpg")
  tar = path / "train.tar.xz"
  with tarfile.open(tar, "w:xz") as archive:
    for name in ("airplane", "cat"):
      archive.add(src / name, arcname=name)
  return tar


def _script(env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout,
                        env=dict(os.environ, PYTHON=sys.executable,
                                 PYTHONPATH=str(ROOT), **env))


def _tiny_part(tmp_path, **env):
  """One PART with a small CNN, 1 + 1 epochs and the tiny tarball; it must
  succeed with no failed run. Returns (process, RUNS, OUT)."""
  runs, out = tmp_path / "runs", tmp_path / "out"
  out.mkdir()
  done = _script(dict(MODEL="small_cnn", E1="1", E2="1",
                      DATA=str(_tiny_cifar(tmp_path)),
                      RUNS=str(runs), OUT=str(out),
                      RDA_OPTAX_CACHE=str(tmp_path / "cache"),
                      # A later wave reuses the first's small programs
                      # (init, evaluation, statistics): ~10 s of CPU less;
                      # the session's cache (tests/conftest.py) also lets
                      # PART e reuse PART a's, and the other way round.
                      JAX_COMPILATION_CACHE_DIR=os.environ.get(
                          "JAX_COMPILATION_CACHE_DIR",
                          str(tmp_path / "jax-cache")),
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **env))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "failed" not in done.stderr, done.stderr[-3000:]
  return done, runs, out


def test_part_a_end_to_end(tmp_path):
  """PART=a with a small CNN and 1 + 1 epochs, two runs side by side as on
  the device: the flags, GMP (ERK and, with GMP_GLOBAL, global) and RigL at
  the RDA run's sparsity, the goals table and the speed tables."""
  done, runs, out = _tiny_part(tmp_path, PART="a", DEBIAS="1", PARALLEL="2",
                               GMP_GLOBAL="1")
  names = {"small_cnn-sgd-2", "small_cnn-rda-debias1-2", "small_cnn-gmp-2",
           "small_cnn-gmp-global-2", "small_cnn-rigl-2"}
  assert {p.name for p in runs.iterdir() if p.is_dir()} == names | {"logs"}
  config = {n: json.loads((runs / n / "config.json").read_text()) for n in names}
  summary = {n: json.loads((runs / n / "summary.json").read_text()) for n in names}
  rda = config["small_cnn-rda-debias1-2"]
  assert (rda["method"], rda["debias_epochs"], rda["batch_size"],
          rda["init_scale"]) == ("rda", 1, 128, 10)
  for n in ("small_cnn-sgd-2", "small_cnn-gmp-2", "small_cnn-gmp-global-2",
            "small_cnn-rigl-2"):
    c = config[n]
    assert (c["batch_size"], c["lr"], c["lr_schedule"]) == (512, 0.4, "onecycle")
  assert all((c["val_fraction"], c["val_seed"], c["seed"], c["epochs"],
              c["asr_epochs"]) == (0.1, 0, 0, 1, 1) for c in config.values())
  assert config["small_cnn-gmp-global-2"]["sparsity_distribution"] == "global"
  assert config["small_cnn-gmp-2"]["sparsity_distribution"] == "auto"
  reached = summary["small_cnn-rda-debias1-2"]["sparsity"]
  assert reached > 0
  for n in ("small_cnn-gmp-2", "small_cnn-gmp-global-2", "small_cnn-rigl-2"):
    assert config[n]["method"] == n.split("-")[1]
    assert summary[n]["sparsity"] == pytest.approx(reached, abs=goals._SAME_SPARSITY)
  # The waves: dense and RDA side by side, then GMP and RigL.
  timeline = goals.read_timeline(runs / "timeline.tsv")
  waves = {t["run"]: t["wave"] for t in timeline}
  assert waves == {"small_cnn-sgd-2": "a1", "small_cnn-rda-debias1-2": "a1",
                   "small_cnn-gmp-2": "a2", "small_cnn-gmp-global-2": "a2",
                   "small_cnn-rigl-2": "a2"}
  by = {t["run"]: t for t in timeline}
  first = [by["small_cnn-sgd-2"], by["small_cnn-rda-debias1-2"]]
  assert max(t["start"] for t in first) < min(t["end"] for t in first)
  assert by["small_cnn-gmp-2"]["start"] >= max(t["end"] for t in first)
  # The goals table: RDA set against GMP and RigL, goal 2 decided.
  table = (runs / "goals.md").read_text()
  head = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
  row = next(line for line in table.splitlines() if "rda-debias1" in line)
  cells = dict(zip(head, [c.strip() for c in row.strip("|").split("|")]))
  assert cells["gmp %"] != "-" and cells["rigl %"] != "-"
  assert cells["goal 2"] in ("yes", "no") and cells["goal 1"] in ("yes", "no")
  assert (runs / "compare-small_cnn-2-s0.png").stat().st_size > 0
  assert "rda-debias1" in done.stdout and "at most side by side" in done.stdout
  # What comes back from the device: one tarball (no checkpoints) and goals.
  assert sorted(p.name for p in out.iterdir()) == ["goals-a.md", "issue17-a.tar.gz"]
  assert (out / "goals-a.md").read_text() == table
  with tarfile.open(out / "issue17-a.tar.gz") as packed:
    members = {m.name.removeprefix("./") for m in packed.getmembers()}
  assert {f"{n}/{f}" for n in names for f in ("config.json", "summary.json",
          "metrics.jsonl", "curves.png")} <= members
  assert {"timeline.tsv", "goals.md", "logs/small_cnn-rigl-2.log",
          "compare-small_cnn-2-s0.png"} <= members
  assert not any("checkpoints" in m for m in members)


def test_part_e_end_to_end(tmp_path):
  """PART=e with a small CNN and 1 + 1 epochs: the three channel runs side
  by side (default, uniform weighting, sparse-group), then network slimming
  at each channel run's FLOPs, the slim models written."""
  done, runs, out = _tiny_part(tmp_path, PART="e", PARALLEL="3",
                               UGROUP_L1="0.5", DENSE_TOP1="90")
  m = "small_cnn"
  names = {f"{m}-rda-channel-2", f"{m}-rda-uchannel-2",
           f"{m}-rda-sparse-group-2", f"{m}-net-slim-2", f"{m}-net-slim-u-2"}
  assert {p.name for p in runs.iterdir() if p.is_dir()} == names | {"logs"}
  config = {n: json.loads((runs / n / "config.json").read_text()) for n in names}
  summary = {n: json.loads((runs / n / "summary.json").read_text()) for n in names}
  u = config[f"{m}-rda-uchannel-2"]
  assert (u["structure"], u["group_weighting"], u["group_l1"]) == (
      "channel", "uniform", 0.5)
  assert config[f"{m}-rda-channel-2"]["group_weighting"] == "auto"  # size
  assert config[f"{m}-rda-sparse-group-2"]["structure"] == "sparse-group"
  for slim, src in (("net-slim", "rda-channel"), ("net-slim-u", "rda-uchannel")):
    assert config[f"{m}-{slim}-2"]["target_flops"] == pytest.approx(
        summary[f"{m}-{src}-2"]["flops"]["ratio"])
  for n in names:
    assert summary[n]["slim"]["val_top1"] == summary[n]["val_top1"]
  waves = {t["run"]: t["wave"] for t in goals.read_timeline(runs / "timeline.tsv")}
  assert waves == {f"{m}-rda-channel-2": "e1", f"{m}-rda-uchannel-2": "e1",
                   f"{m}-rda-sparse-group-2": "e1", f"{m}-net-slim-2": "e2",
                   f"{m}-net-slim-u-2": "e2"}
  assert sorted(p.name for p in out.iterdir()) == ["goals-e.md", "issue17-e.tar.gz"]


@pytest.mark.parametrize("env, line", [
    (dict(PART="z"),
     "gpu_issue17.sh: PART must be a, b, c, d, e, f, g, h or i, not 'z'"),
    (dict(PART="a", PARALLEL="0"),
     "gpu_issue17.sh: PARALLEL must be 1 to 9, not '0'"),
    (dict(PART="b", DATA="/nonexistent/train.tar.xz"),
     "gpu_issue17.sh: DATA /nonexistent/train.tar.xz does not exist "
     "(carry .data with the tarball)"),
    (dict(PART="c", E1="1", E2="1", DEBIAS="1", MODEL="m"),
     "gpu_issue17.sh: PART c needs RDA seed 1's run (PART b): no "
     "{tmp}/r/m-rda-debias1-2-s1/summary.json; set FROM_S1"),
])
def test_bad_settings_are_one_line_and_exit_2(tmp_path, env, line):
  done = _script(dict(dict(DATA=str(tmp_path)), RUNS=str(tmp_path / "r"), **env),
                 timeout=60)
  assert (done.returncode, done.stderr.strip()) == (2, line.format(tmp=tmp_path))
  assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("part,model,count", [("f", "resnet18", 6),
                                              ("g", "vgg16bn", 4),
                                              ("h", "resnet18", 2),
                                              ("i", "vgg16bn", 6)])
def test_dry_parts_print_runs_the_trainer_accepts(tmp_path, part, model,
                                                  count):
  """PARTs f, g, h and i as DRY=1 prints them: every run's flags pass the
  trainer's parser and checks, equal sparsity (FLOPs for i) and seeds
  across methods."""
  from train import checks, cli
  data = tmp_path / "train.tar.xz"
  data.write_bytes(b"")  # only its existence is checked before the runs
  done = subprocess.run(
      ["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True,
      timeout=120, env=dict(os.environ, PYTHON=sys.executable, PART=part,
                            DRY="1", DATA=str(data), NEW="prox-adam",
                            NEW_LR="0.001", TARGET="0.9", FLOPS="0.4"))
  runs = [l[len("== run "):].split(": ", 1) for l in done.stdout.splitlines()
          if l.startswith("== run ")]
  assert len(runs) == count, done.stdout + done.stderr
  targets, seeds = set(), {}
  for name, flags in runs:
    args = vars(cli.parser().parse_args(flags.split()))
    cfg = checks.build(None, None, {k: v for k, v in args.items()
                                    if k in checks.Config.__dataclass_fields__
                                    and v is not None})
    assert cfg.model == model and name.startswith(model)
    targets.add(cfg.target_flops if part == "i" else cfg.target_sparsity)
    seeds.setdefault(cfg.method, set()).add(cfg.seed)
  assert targets == {"h": {None}, "i": {0.4}}.get(part, {0.9})
  assert all(s == {0, 1} for s in seeds.values()), seeds
  if part == "f":
    assert set(seeds) == {"prox-adam", "rda", "gmp"}
  if part == "i":
    assert set(seeds) == {"rda", "rmda", "net-slim"}
