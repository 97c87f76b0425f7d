"""PNG figures of runs: curves and per-layer sparsity of one run, runs side
by side, the accuracy-sparsity frontier.

Figures are drawn on :class:`matplotlib.figure.Figure` objects directly rather
than through ``pyplot``: that needs no GUI backend, keeps no global figure
registry that could leak memory over many plots, and is safe to call from a
training process that never opens a window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import contextlib
import json
import math
import numbers
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from matplotlib import ticker
from matplotlib.figure import Figure

import rda_optax

from train.report.metrics import (PathLike, _read_json, _read_summary,
                                  _run_label, read_metrics, short_layer_name)


# Figures are meant to be read on a screen and in a markdown report; 120 dpi
# keeps text crisp without making the PNGs large.
_DPI = 120
# Light fills so that the curves drawn on top stay readable.
_PHASE_COLORS = ("#dbe9f6", "#fde3c8", "#dcefd8", "#f3d9e8", "#e8e1f2",
                 "#f6f1c7", "#d9f0ef", "#eadbd3")
# Beyond this many epochs, point markers only clutter the lines.
_MAX_MARKED_EPOCHS = 40

def _series(records: Sequence[Mapping[str, Any]],
            key: str) -> tuple[list[float], list[float]]:
  """(epochs, values) for the records where ``key`` is a number.

  Missing values are left out rather than plotted as gaps, so that a metric
  measured only every few epochs still draws a connected line.
  """
  xs, ys = [], []
  for i, r in enumerate(records, start=1):
    value = r.get(key)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
      xs.append(r.get("epoch", i))
      ys.append(float(value))
  return xs, ys


def _phase_segments(
    records: Sequence[Mapping[str, Any]]) -> list[tuple[str, float, float]]:
  """(phase, first epoch, last epoch) for each run of consecutive epochs."""
  segments: list[tuple[str, float, float]] = []
  for i, r in enumerate(records, start=1):
    phase = str(r.get("phase") or "")
    epoch = r.get("epoch", i)
    if segments and segments[-1][0] == phase:
      segments[-1] = (phase, segments[-1][1], epoch)
    else:
      segments.append((phase, epoch, epoch))
  return segments


def _mark_phases(axes: Sequence[Any],
                 segments: Sequence[tuple[str, float, float]]) -> None:
  """Shades each phase and labels it in the first axes.

  Epoch ``e`` is drawn as covering ``[e - 0.5, e + 0.5]``, so a boundary sits
  halfway between the last epoch of one phase and the first of the next.
  """
  shade = len(segments) > 1  # A single phase would just tint the panels.
  colors: dict[str, str] = {}
  for phase, _, _ in segments:
    colors.setdefault(phase, _PHASE_COLORS[len(colors) % len(_PHASE_COLORS)])
  for k, (phase, start, end) in enumerate(segments):
    for ax in axes if shade else ():
      ax.axvspan(start - 0.5, end + 0.5, color=colors[phase], lw=0, zorder=0)
      if k:
        ax.axvline(start - 0.5, color="0.45", lw=0.9, ls="--", zorder=1)
    if phase:
      # x in data units, y in axes units: the label stays at the top of the
      # panel whatever the accuracy range is.
      axes[0].text(start - 0.5, 0.97, f" {phase}",
                   transform=axes[0].get_xaxis_transform(), ha="left",
                   va="top", fontsize=8, color="0.25", zorder=3)


def _epoch_axis(ax: Any, lo: int, hi: int) -> None:
  ax.set_xlim(lo - 0.5, hi + 0.5)
  if hi - lo < 10:
    # MaxNLocator falls back to fractional epochs on a short range.
    ax.set_xticks(range(int(lo), int(hi) + 1))
  else:
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def _sparsity_axis(ax: Any) -> None:
  ax.set_ylim(-0.02, 1.02)
  ax.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0))


def _save(fig: Figure, path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=_DPI)
  return path


def _run_title(run_dir: Path, records: Sequence[Mapping[str, Any]]) -> str:
  """'method · model · dataset' plus the final results, where known."""
  info = _read_summary(run_dir) or _read_json(run_dir / "config.json") or {}
  names = [str(info[k]) for k in ("method", "model", "dataset")
           if isinstance(info.get(k), (str, int, float))]
  title = " · ".join(names) or run_dir.name
  results = []
  test_top1 = info.get("test_top1")
  if isinstance(test_top1, numbers.Real):
    results.append(f"test top-1 {test_top1:.2f}%")
  sparsity = info.get("sparsity", records[-1].get("sparsity"))
  if isinstance(sparsity, numbers.Real):
    results.append(f"sparsity {sparsity:.1%}")
  return f"{title}\n{', '.join(results)}" if results else title


def plot_run(run_dir: PathLike) -> list[Path]:
  """Draws the curves and the final per-layer sparsity of one run.

  Writes ``run_dir/curves.png`` (top-1 accuracies above, sparsity below, phases
  shaded and named) and ``run_dir/layers.png`` (per-layer sparsity of the last
  recorded epoch, one horizontal bar per layer in network order).

  Args:
    run_dir: a run directory holding ``metrics.jsonl``, and optionally
      ``summary.json`` or ``config.json`` for the title.

  Returns:
    The paths written: ``[curves.png, layers.png]``, or just ``[curves.png]``
    when the last epoch has no per-layer sparsity.

  Raises:
    ValueError: the run has no complete epoch yet.
  """
  run_dir = Path(run_dir)
  records = read_metrics(run_dir)
  if not records:
    raise ValueError(f"{run_dir}: metrics.jsonl holds no complete epoch")
  return [p for p in (_plot_curves(run_dir, records),
                      _plot_layers(run_dir, records)) if p is not None]


def _plot_curves(run_dir: Path, records: Sequence[Mapping[str, Any]]) -> Path:
  fig = Figure(figsize=(8, 6), layout="constrained")
  acc_ax, sp_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
  marker = "o" if len(records) <= _MAX_MARKED_EPOCHS else None
  ys_all = []
  for key, label, color in (("train_top1", "train top-1", "C0"),
                            ("val_top1", "val top-1", "C1")):
    xs, ys = _series(records, key)
    if xs:
      acc_ax.plot(xs, ys, label=label, color=color, marker=marker, ms=3)
      ys_all += ys
  xs, ys = _series(records, "sparsity")
  if xs:
    sp_ax.plot(xs, ys, color="C2", marker=marker, ms=3, label="sparsity")

  epochs = [r.get("epoch", i) for i, r in enumerate(records, start=1)]
  _epoch_axis(sp_ax, min(epochs), max(epochs))
  _mark_phases((acc_ax, sp_ax), _phase_segments(records))
  if ys_all:
    # Headroom above the curves for the phase names.
    lo, hi = min(ys_all), max(ys_all)
    # A minimum span keeps a flat or single-epoch curve from being drawn on
    # a magnified axis that makes noise look like a trend.
    pad = max(hi - lo, 10.0) * 0.08
    acc_ax.set_ylim(max(lo - pad, 0.0), hi + 2.5 * pad)
    acc_ax.legend(loc="lower right", fontsize=9)
  acc_ax.set_ylabel("top-1 accuracy (%)")
  acc_ax.grid(alpha=0.3)
  _sparsity_axis(sp_ax)
  sp_ax.set_ylabel("sparsity (zero weights)")
  sp_ax.set_xlabel("epoch")
  sp_ax.grid(alpha=0.3)
  fig.suptitle(_run_title(run_dir, records), fontsize=11)
  return _save(fig, run_dir / "curves.png")


LAYERS_FILE = "layers.json"


def write_layers(run_dir: PathLike, model: Any, image_shape: Sequence[int],
                 params: Any) -> Path | None:
  """Writes ``run_dir/layers.json``: the kernels in network order, with their
  weight counts, for the per-layer plot.

  A parameter tree comes back from JAX with its keys sorted ("classifier"
  before "conv0"), so the order is taken from the order in which the model
  calls its modules, traced abstractly (no compilation, no FLOPs).

  Args:
    run_dir: the run directory.
    model: the Flax module.
    image_shape: one input image's shape (H, W, C).
    params: the model's parameters (shapes only are read).

  Returns:
    The file written: a JSON list of ``[path, weights]`` pairs, the path as
    in ``metrics.jsonl``'s ``sparsity_per_layer``; None when it could not be
    written (the plot then falls back to the log's order).
  """
  calls: list[tuple[str, ...]] = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__":
      calls.append(tuple(context.module.path))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32)))
  first = {}
  for i, path in enumerate(calls):
    first.setdefault(path, i)

  def position(path: str) -> int:
    parts = tuple(short_layer_name(path).split("/")[:-1])  # drop "kernel"
    return first.get(parts, len(calls))

  rows = sorted(rda_optax.sparsity_report(params),
                key=lambda r: position(r.path))
  out = Path(run_dir) / LAYERS_FILE
  try:
    out.write_text(json.dumps([[r.path, r.size] for r in rows]))
  except OSError:
    # Only the plot's order and labels depend on it: a full disk is
    # reported by the next file the run cannot do without.
    with contextlib.suppress(OSError):
      out.unlink()
    return None
  return out


def _layer_table(run_dir: Path) -> list[tuple[str, int]] | None:
  data = None
  try:
    data = json.loads((run_dir / LAYERS_FILE).read_text())
  except (OSError, ValueError):
    pass
  if not isinstance(data, list) or not all(
      isinstance(r, list) and len(r) == 2 for r in data):
    return None
  return [(str(path), int(size)) for path, size in data]


def layer_bars(run_dir: Path, record: Mapping[str, Any]
               ) -> tuple[list[tuple[str, float]], dict[str, int]]:
  """The bars of the per-layer plot: ("name (weights)", sparsity) in network
  order when ``layers.json`` exists (else in the log's order), and the weight
  count of each layer path."""
  per_layer = record.get("sparsity_per_layer") or {}
  table = _layer_table(run_dir)
  if table is not None:
    # Network order and weight counts: a 99% total beside a 34% layer reads
    # right once the big layers show their size.
    keys = [k for k, _ in table if k in per_layer]
    keys += [k for k in per_layer if k not in keys]
    sizes = dict(table)
  else:
    keys, sizes = list(per_layer), {}
  bars = []
  for k in keys:
    v = per_layer[k]
    if isinstance(v, numbers.Real):
      name = short_layer_name(k)
      if k in sizes:
        name += f" ({_count(sizes[k])})"
      bars.append((name, float(v)))
  return bars, sizes


def _plot_layers(run_dir: Path,
                 records: Sequence[Mapping[str, Any]]) -> Path | None:
  last = records[-1]
  layers, sizes = layer_bars(run_dir, last)
  if not layers:
    return None
  names, values = zip(*layers)
  # Grow with the layer count so that the names of deep networks do not
  # overlap.
  height = max(2.5, 0.26 * len(layers) + 1.3)
  fig = Figure(figsize=(7, height), layout="constrained")
  ax = fig.subplots()
  ys = range(len(layers))
  ax.barh(ys, values, color="C2", height=0.7)
  for y, v in zip(ys, values):
    ax.text(min(v, 1.0) + 0.01, y, f"{v:.1%}", va="center", fontsize=7)
  ax.set_yticks(list(ys), names, fontsize=8)
  ax.invert_yaxis()  # Network order, top to bottom.
  ax.set_xlim(0, 1.14)  # Room for the value labels past 100%.
  ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
  ax.xaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0))
  ax.set_xlabel("sparsity (zero weights); layer (weights)" if sizes else
                "sparsity (zero weights)")
  ax.grid(axis="x", alpha=0.3)
  epoch = last.get("epoch", len(records))
  overall = last.get("sparsity")
  title = f"{_run_label(run_dir)}: per-layer sparsity, epoch {epoch}"
  if isinstance(overall, numbers.Real):
    title += f" (overall {overall:.1%}, weighted by size)"
  ax.set_title(title, fontsize=10)
  return _save(fig, run_dir / "layers.png")


def _count(n: int) -> str:
  """1234 -> "1.2k", 2359296 -> "2.4M"."""
  if n >= 10**6:
    return f"{n / 10**6:.1f}M"
  if n >= 10**3:
    return f"{n / 10**3:.1f}k"
  return str(n)


def plot_compare(run_dirs: Iterable[PathLike],
                 out_path: PathLike,
                 title: str | None = None) -> Path:
  """Draws several runs on shared axes.

  Left panel: validation top-1 against epoch (training top-1, marked
  "(train)", for a run without a validation split). Middle: training loss.
  Right: sparsity. Each run has its own colour, line style and marker, so
  curves that lie on top of each other stay visible. Each run is labelled by the ``method`` of its
  ``summary.json``, or its directory name; labels that would collide get the
  directory name appended.

  Args:
    run_dirs: run directories holding ``metrics.jsonl``.
    out_path: the PNG file to write.
    title: an optional figure title.

  Returns:
    ``out_path`` as a Path.

  Raises:
    ValueError: no run directories were given.
  """
  run_dirs = [Path(d) for d in run_dirs]
  if not run_dirs:
    raise ValueError("plot_compare needs at least one run directory")
  labels = [_run_label(d) for d in run_dirs]
  labels = [f"{label} ({d.name})" if labels.count(label) > 1 and
            label != d.name else label for label, d in zip(labels, run_dirs)]

  fig = compare_figure(run_dirs, labels)
  if title:
    fig.suptitle(title, fontsize=11)
  return _save(fig, Path(out_path))


# Overlapping curves (two methods that reach the same sparsity) stay visible:
# each run gets its own line style and marker as well as its own colour.
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def compare_figure(run_dirs: Sequence[Path], labels: Sequence[str]) -> Figure:
  """The figure of `plot_compare`: accuracy, training loss and sparsity."""
  fig = Figure(figsize=(14, 4.6), layout="constrained")
  acc_ax, loss_ax, sp_ax = fig.subplots(1, 3)
  max_epoch = 1
  all_val = True
  for i, (run_dir, label) in enumerate(zip(run_dirs, labels)):
    records = read_metrics(run_dir)
    # Markers on at most ~_MAX_MARKED_EPOCHS points, so long runs stay lines.
    every = max(1, math.ceil(len(records) / _MAX_MARKED_EPOCHS))
    style = dict(color=f"C{i % 10}", ls=_LINESTYLES[i % len(_LINESTYLES)],
                 marker=_MARKERS[i % len(_MARKERS)], ms=4, markevery=every,
                 mfc="none")
    xs, ys = _series(records, "val_top1")
    if not xs:
      xs, ys = _series(records, "train_top1")
      label += " (train)"
      all_val = False
    acc_ax.plot(xs, ys, label=label, **style)
    xs, ys = _series(records, "loss")
    loss_ax.plot(xs, ys, label=label, **style)
    xs, ys = _series(records, "sparsity")
    sp_ax.plot(xs, ys, label=label, **style)
    max_epoch = max([max_epoch] + [r.get("epoch", 0) for r in records])
  for ax in (acc_ax, loss_ax, sp_ax):
    _epoch_axis(ax, 1, max_epoch)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
  acc_ax.set_ylabel("top-1 accuracy (%)")
  acc_ax.set_title("validation top-1" if all_val else
                   "validation top-1 (train where no validation split)",
                   fontsize=10)
  loss_ax.set_ylabel("training loss")
  loss_ax.set_title("training loss", fontsize=10)
  _sparsity_axis(sp_ax)
  sp_ax.set_ylabel("sparsity (zero weights)")
  sp_ax.set_title("sparsity", fontsize=10)
  # One legend for all panels, outside them, so that it hides no curve.
  handles, names = acc_ax.get_legend_handles_labels()
  fig.legend(handles, names, loc="outside lower center",
             ncols=min(len(names), 4), fontsize=9, frameon=False)
  return fig


def plot_frontier(points: Iterable[Mapping[str, Any]],
                  out_path: PathLike,
                  title: str | None = None) -> Path:
  """Draws accuracy against sparsity, one line per method.

  Args:
    points: dicts with ``method``, ``sparsity`` (fraction 0-1) and ``top1``
      (percent), and optionally ``top1_std`` and ``sparsity_std``, drawn as
      error bars. Points of a method are joined in order of sparsity.
    out_path: the PNG file to write.
    title: an optional figure title.

  Returns:
    ``out_path`` as a Path.
  """
  by_method: dict[str, list[Mapping[str, Any]]] = {}
  for p in points:
    by_method.setdefault(str(p["method"]), []).append(p)

  def std(p: Mapping[str, Any], key: str) -> float:
    value = p.get(key)
    return float(value) if isinstance(value, numbers.Real) else 0.0

  fig = Figure(figsize=(7, 5), layout="constrained")
  ax = fig.subplots()
  for i, (method, pts) in enumerate(by_method.items()):
    pts = sorted(pts, key=lambda p: p["sparsity"])
    xs = [float(p["sparsity"]) for p in pts]
    ys = [float(p["top1"]) for p in pts]
    xerr = [std(p, "sparsity_std") for p in pts]
    yerr = [std(p, "top1_std") for p in pts]
    ax.errorbar(xs, ys, xerr=xerr if any(xerr) else None,
                yerr=yerr if any(yerr) else None, color=f"C{i % 10}",
                marker="o", ms=5, capsize=3, label=method)
  ax.xaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0))
  ax.set_xlabel("sparsity (zero weights)")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.grid(alpha=0.3)
  if by_method:
    ax.legend(loc="best", fontsize=9)
  if title:
    ax.set_title(title, fontsize=11)
  return _save(fig, Path(out_path))
