"""Tests for train/report.py: run files, plots, tables and progress output."""

import io
import json
import re

from matplotlib import image as mpimg
import pytest

from train import progress as progress_lib
from train import report

_LAYERS = ("['params']['Conv_0']['kernel']",
           "['params']['layer1_0']['conv1']['kernel']",
           "['params']['Dense_0']['kernel']")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records(epochs=6, val=True, phases=("rda",) * 4 + ("finetune",) * 2):
  records = []
  for e in range(1, epochs + 1):
    sparsity = min(0.9, 0.15 * e)
    records.append({
        "epoch": e, "phase": phases[(e - 1) % len(phases)],
        "loss": 2.0 / e, "train_top1": 50.0 + 7 * e,
        "val_top1": 48.0 + 6 * e if val else None,
        "val_top5": 80.0 + e if val else None, "sparsity": sparsity,
        "sparsity_per_layer": {k: sparsity * (i + 1) / 3
                               for i, k in enumerate(_LAYERS)},
        "gamma": 1.0, "l1": 1e-4, "lr": None, "images_per_sec": 4210.5,
        "skipped_steps": 0})
  return records


def _make_run(root, name, records, method=None, partial_tail=False):
  run = root / name
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"model": "cnn"}))
  text = "".join(json.dumps(r) + "\n" for r in records)
  if partial_tail:
    # What a run killed in the middle of a write leaves behind.
    text += '{"epoch": 99, "phase": "rda", "loss": 0.1'
  (run / "metrics.jsonl").write_text(text)
  if method is not None:
    (run / "summary.json").write_text(json.dumps({
        "method": method, "model": "cnn", "dataset": "digits",
        "test_top1": 91.25, "test_top5": None, "val_top1": 90.0,
        "sparsity": records[-1]["sparsity"], "epochs": len(records),
        "wall_s": 12.0}))
  return run


def _check_png(path, min_kb=8):
  assert path.is_file()
  assert path.read_bytes()[:8] == _PNG_MAGIC
  assert path.stat().st_size > min_kb * 1024
  pixels = mpimg.imread(path)
  assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
  # Not a blank canvas.
  assert pixels[..., :3].std() > 0.02
  return pixels.shape


def test_read_metrics_drops_partial_last_line(tmp_path):
  run = _make_run(tmp_path, "run", _records(), partial_tail=True)
  records = report.read_metrics(run)
  assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_read_metrics_rejects_corrupt_middle_line(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "metrics.jsonl").write_text('{"epoch": 1}\n{oops\n{"epoch": 2}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
    report.read_metrics(run)


def test_short_layer_name():
  assert report.short_layer_name(_LAYERS[0]) == "Conv_0/kernel"
  assert report.short_layer_name(_LAYERS[1]) == "layer1_0/conv1/kernel"
  assert report.short_layer_name("['params']['blocks'][3]['kernel']") == (
      "blocks/3/kernel")
  assert report.short_layer_name("params/Dense_0/kernel") == "Dense_0/kernel"


def test_plot_run(tmp_path):
  run = _make_run(tmp_path, "run", _records(), method="rda",
                  partial_tail=True)
  paths = report.plot_run(run)
  assert paths == [run / "curves.png", run / "layers.png"]
  height, width, _ = _check_png(paths[0], min_kb=20)
  # 8 x 6 inches at 120 dpi.
  assert (height, width) == (720, 960)
  _check_png(paths[1])


def test_plot_run_without_validation_and_single_epoch(tmp_path):
  run = _make_run(tmp_path, "noval", _records(epochs=1, val=False))
  paths = report.plot_run(run)
  assert [p.name for p in paths] == ["curves.png", "layers.png"]
  for p in paths:
    _check_png(p)


def test_plot_run_without_complete_epoch(tmp_path):
  run = tmp_path / "empty"
  run.mkdir()
  (run / "metrics.jsonl").write_text('{"epoch": 1, "lo')
  with pytest.raises(ValueError, match="no complete epoch"):
    report.plot_run(run)


def test_plot_compare(tmp_path):
  runs = [_make_run(tmp_path, "a", _records(), method="rda"),
          _make_run(tmp_path, "b", _records(epochs=4, val=False),
                    method="prox-sgd"),
          # No summary: labelled by its directory name.
          _make_run(tmp_path, "c", _records(epochs=8, phases=("dense",)))]
  out = report.plot_compare(runs, tmp_path / "out" / "compare.png",
                            title="three runs")
  assert out == tmp_path / "out" / "compare.png"
  height, width, _ = _check_png(out, min_kb=20)
  assert width > height


def test_plot_frontier(tmp_path):
  points = [{"method": "rda", "sparsity": s, "top1": 95 - 10 * s,
             "top1_std": 0.5, "sparsity_std": 0.01}
            for s in (0.9, 0.5, 0.7)]
  points += [{"method": "prox-sgd", "sparsity": s, "top1": 93 - 12 * s}
             for s in (0.4, 0.6, 0.8)]
  out = report.plot_frontier(points, tmp_path / "frontier.png",
                             title="digits")
  _check_png(out)


def test_format_table():
  columns = [("method", "method", ""), ("top1", "top-1", ".2f"),
             ("sparsity", "sparsity", ".1%")]
  rows = [{"method": "rda", "top1": 91.256, "sparsity": 0.7312},
          {"method": "prox-sgd", "top1": None, "sparsity": 0.5},
          {"method": "dense", "sparsity": 0.0}]
  lines = report.format_table(rows, columns).splitlines()
  assert lines[0].split() == ["method", "top-1", "sparsity"]
  assert set(lines[1].replace(" ", "")) == {"-"}
  assert lines[2].split() == ["rda", "91.26", "73.1%"]
  assert lines[3].split() == ["prox-sgd", "-", "50.0%"]
  assert lines[4].split() == ["dense", "-", "0.0%"]
  # Numbers are right-aligned: every column ends at the same offset.
  ends = {m.end() for line in lines[2:] for m in re.finditer(r"\S+$", line)}
  assert len(ends) == 1
  assert len({len(line) for line in lines}) == 1
  # Text is left-aligned.
  assert all(line.startswith(("method", "-", "rda", "prox-sgd", "dense"))
             for line in lines)


def test_markdown_table():
  columns = [("method", "method", ""), ("top1", "top-1", ".2f")]
  rows = [{"method": "rda|x", "top1": 91.256},
          {"method": "prox-sgd", "top1": None}]
  lines = report.markdown_table(rows, columns).splitlines()
  assert len(lines) == 4
  assert [c.strip() for c in lines[0].strip("|").split("|")] == [
      "method", "top-1"]
  assert re.fullmatch(r"\| -{3,} \| -{2,}: \|", lines[1])
  assert r"rda\|x" in lines[2] and "91.26" in lines[2]
  assert lines[3].split("|")[2].strip() == "-"


def _epoch(e, phase="rda", val=86.0):
  return {"epoch": e, "phase": phase, "loss": 0.5123, "train_top1": 88.14,
          "val_top1": val, "sparsity": 0.7312, "images_per_sec": 4210.4,
          "skipped_steps": 0}


def test_progress_plain_lines(monkeypatch):
  clock = iter([100.0, 110.0, 120.0, 130.0])
  monkeypatch.setattr(progress_lib, "_now", lambda: next(clock))
  stream = io.StringIO()  # Not a terminal: one plain line per epoch.
  with report.Progress(3, stream=stream) as progress:
    assert progress.mode == "lines"
    progress.update(_epoch(1))
    progress.write("checkpoint saved")
    progress.update(_epoch(2, val=None))
    progress.update(_epoch(3, phase="finetune"))
  lines = stream.getvalue().splitlines()
  assert lines == [
      "epoch 1/3 [rda] loss 0.512 train 88.1 val 86.0 sparsity 0.731 "
      "4,210 img/s eta 0:00:20",
      "checkpoint saved",
      "epoch 2/3 [rda] loss 0.512 train 88.1 sparsity 0.731 4,210 img/s "
      "eta 0:00:10",
      "epoch 3/3 [finetune] loss 0.512 train 88.1 val 86.0 sparsity 0.731 "
      "4,210 img/s elapsed 0:00:30",
  ]
  progress.close()  # Idempotent.


def test_progress_resumed_run_eta(monkeypatch):
  clock = iter([0.0, 5.0])
  monkeypatch.setattr(progress_lib, "_now", lambda: next(clock))
  stream = io.StringIO()
  progress = report.Progress(10, desc="cnn", stream=stream, initial=4)
  progress.update({"epoch": 5, "skipped_steps": 2})
  assert stream.getvalue() == "cnn epoch  5/10 skipped 2 eta 0:00:25\n"


def test_progress_inside_a_long_epoch(monkeypatch):
  """A step line at most every step_every seconds of an epoch, none for its
  last step (the epoch line follows), and the interval restarts with each
  epoch."""
  now = [0.0]
  monkeypatch.setattr(progress_lib, "_now", lambda: now[0])
  stream = io.StringIO()
  progress = report.Progress(2, desc="cnn", stream=stream)
  for t, done in ((4.0, 1), (9.9, 2), (10.0, 3), (15.0, 4), (20.5, 5),
                  (40.0, 6)):
    now[0] = t
    progress.step(done, 6)
  now[0] = 41.0
  progress.update({"epoch": 1})
  now[0] = 45.0
  progress.step(1, 6)  # 4 s into epoch 2: quiet
  now[0] = 55.0
  progress.step(2, 6)  # 10 s after the epoch's first step
  now[0] = 60.0
  progress.step(3, 6)  # 5 s after that line: quiet
  assert stream.getvalue().splitlines() == [
      "cnn epoch 1/2 step 3/6", "cnn epoch 1/2 step 5/6",
      "cnn epoch 1/2 eta 0:00:41", "cnn epoch 2/2 step 2/6"]


def test_progress_disabled_prints_nothing():
  stream = io.StringIO()
  with report.Progress(3, enabled=False, stream=stream) as progress:
    progress.update(_epoch(1))
    progress.write("hello")
  progress.close()
  assert stream.getvalue() == ""


def test_progress_bar_on_terminal():
  class Terminal(io.StringIO):

    def isatty(self):
      return True

  stream = Terminal()
  with report.Progress(2, desc="cnn", stream=stream) as progress:
    assert progress.mode == "bar"
    progress.update(_epoch(1))
    progress.write("a message")
    progress.update(_epoch(2))
  progress.close()
  out = stream.getvalue()
  assert "a message\n" in out
  assert "2/2" in out and "[rda]" in out and "4,210 img/s" in out


# --- issue 13: network order, weight counts, the loss panel ------------------


def test_layers_plot_is_in_network_order_with_weight_counts(tmp_path):
  import jax
  import jax.numpy as jnp
  import models
  model = models.get("small_cnn", num_classes=10)
  import numpy as np
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 8, 8, 1)))["params"]
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  run = _make_run(tmp_path, "run", _records(), method="rda")
  report.write_layers(run, model, (8, 8, 1), params)
  table = json.loads((run / "layers.json").read_text())
  # JAX sorts the keys ("classifier" first); the model calls conv0 first.
  names = [report.short_layer_name(p) for p, _ in table]
  assert names == ["conv0/kernel", "conv1/kernel", "hidden/kernel",
                   "classifier/kernel"], names
  sizes = {report.short_layer_name(p): n for p, n in table}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    key = report.short_layer_name(jax.tree_util.keystr(path))
    if key in sizes:
      assert sizes[key] == leaf.size
  record = {"sparsity_per_layer": {p: 0.5 for p, _ in table[::-1]}}
  bars, _ = report.layer_bars(run, record)
  assert [b for b, _ in bars] == [
      f"{n} ({report.plots._count(sizes[n])})" for n in names]
  assert report.plots._count(2359296) == "2.4M" and report.plots._count(1234) == "1.2k"


def test_compare_has_a_loss_panel_and_tells_overlapping_runs_apart(tmp_path):
  same = _records()
  runs = [_make_run(tmp_path, name, same, method=name)
          for name in ("rda", "prox-sgd", "sgd")]
  fig = report.compare_figure(runs, ["rda", "prox-sgd", "sgd"])
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ["validation top-1", "training loss", "sparsity"]
  loss = fig.axes[1].get_lines()
  assert [list(l.get_ydata()) for l in loss] == [[r["loss"] for r in same]] * 3
  styles = [(l.get_linestyle(), l.get_marker()) for l in loss]
  assert len(set(styles)) == 3, styles
