"""Channel sparsity in the trainer: group RDA, network slimming, slim models.

``--structure channel`` / ``sparse-group`` give ``rda`` and ``prox-sgd`` the
channel groups of ``rda_optax.channel_groups`` (one group per output channel:
its kernel column, bias and BatchNorm scale and bias), formed from the
channel units the model declares (``models.channel_units``), not from its
layer names. ``--method net-slim``
is Liu et al. (2017): l1 on the BatchNorm scales, channels pruned by
``|scale|`` at the phase boundary to a FLOPs target, fine-tuning. Both end
in the same place: whole channel groups at exactly 0, which ``models.slim``
cuts out. This module holds what the two share: the freeze mask that keeps
dead channels dead in the second phase, the per-layer channel counts of the
log, FLOPs, and the slim model written into the run directory.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, NamedTuple, Optional

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

import models
import rda_optax
from train import optim
from train._errors import UsageError
from train.rundir import summary_value

STRUCTURES = ("none", "channel", "sparse-group")
# Methods that take --structure: the ones whose update has a proximal step.
STRUCTURED_METHODS = ("rda", "prox-sgd", "rmda", "grda", "prox-adam")
# Those whose group strength --target-flops can choose (rda_optax's
# target_flops).
FLOPS_TARGET_METHODS = ("rda", "rmda", "grda", "prox-adam")
SLIM_FILE = "slim.msgpack"
SLIM_META = "slim.json"
# The widths the run trains at after the switch (slim_training).
TRAIN_SLIM = "train_slim.json"
# Per --group-weighting. Digits (small CNN, digits-demo preset, 20 + 5
# epochs, docs/RESULTS.md): size 1.5e-3 leaves 39 of 128 hidden channels
# (and every conv channel) at 99.6% test top-1, 2.5e-3 kills the whole
# layer within 14 epochs; uniform 0.06 keeps 22% of the FLOPs at 99.2%,
# 0.04 removes nothing in 400 steps (its protection time is 625). Other
# networks and run lengths need their own value.
DEFAULT_GROUP_L1 = {"size": 1.5e-3, "uniform": 0.06}


def _fail(msg: str) -> None:
  raise UsageError(msg)


# --- options ----------------------------------------------------------------

def uses_groups(cfg: Any, method: str) -> bool:
  """Whether ``method`` of ``cfg`` trains with channel groups."""
  return cfg.structure != "none" and method in STRUCTURED_METHODS


def slims(cfg: Any, method: str) -> bool:
  """Whether the run ends with a slim model written and evaluated."""
  return uses_groups(cfg, method) or method == "net-slim"


def slims_in_training(cfg: Any, method: str) -> bool:
  """Whether the run goes on on the slim model from the switch to the
  second phase (``--slim-training``)."""
  return slims(cfg, method) and cfg.slim_training


def _abstract_params(model_name: str) -> Any:
  # Which leaves form channel groups does not depend on the input size or
  # the classes, so any small RGB input will do.
  model = models.get(model_name)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  # Zero-stride views: the shapes channel_groups reads, no memory.
  return jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape),
                      shapes["params"])


def model_units(model_name: str) -> tuple:
  """The channel units ``--model`` declares (``models.channel_units``):
  what the trainer's channel groups are made of, whatever the layer
  names."""
  return models.channel_units(models.get(model_name))


def weighting(cfg: Any) -> str:
  """``--group-weighting``; ``auto`` is uniform with a FLOPs target (under
  size weighting a wide Dense layer's channels rank last, and the target
  spends the whole budget on the convs: on digits the hidden layer ends
  empty at 10% top-1) and size otherwise."""
  if cfg.group_weighting != "auto":
    return cfg.group_weighting
  return "uniform" if flops_target_groups(cfg) else "size"


def flops_target_groups(cfg: Any) -> bool:
  """Whether ``--target-flops`` chooses the group strength of the grouped
  methods. With net-slim in the run it stays net-slim's pruning target (as
  before group targets existed), and the grouped run takes ``--group-l1``."""
  return (cfg.target_flops is not None and cfg.structure != "none"
          and "net-slim" not in cfg.methods
          and any(m in FLOPS_TARGET_METHODS for m in cfg.methods))


def check(cfg: Any) -> None:
  """Checks ``--structure``, ``--group-l1`` and net-slim's options."""
  def _check(ok: bool, msg: str) -> None:
    if not ok:
      _fail(msg)

  _check(cfg.structure in STRUCTURES,
         f"--structure must be {', '.join(STRUCTURES)}, got {cfg.structure!r}")
  run = cfg.methods
  if cfg.structure != "none":
    _check(any(m in STRUCTURED_METHODS for m in run),
           f"--structure {cfg.structure} needs --method "
           f"{' or '.join(STRUCTURED_METHODS)} (got {', '.join(run)})")
  _check(cfg.group_weighting in ("auto",) + rda_optax.GROUP_WEIGHTINGS,
         "--group-weighting must be auto or "
         f"{' or '.join(rda_optax.GROUP_WEIGHTINGS)}, "
         f"got {cfg.group_weighting!r}")
  if cfg.group_weighting not in ("auto", "size"):
    _check(cfg.structure != "none",
           "--group-weighting needs --structure channel or sparse-group")
  if cfg.group_l1 is not None:
    _check(cfg.structure != "none",
           "--group-l1 needs --structure channel or sparse-group")
    _check(isinstance(cfg.group_l1, (int, float)) and
           np.isfinite(cfg.group_l1) and cfg.group_l1 > 0,
           f"--group-l1 must be > 0, got {cfg.group_l1}")
  if cfg.structure != "none" or "net-slim" in run:
    try:
      specs = rda_optax.channel_groups(_abstract_params(cfg.model),
                                       units=model_units(cfg.model))
    except ValueError as e:
      _fail(f"--model {cfg.model}: no channel groups: its channel units do "
            f"not fit its params ({e})")
    _check(any(s is not None for s in jax.tree.leaves(specs)),
           f"--model {cfg.model}: no kernel feeds a BatchNorm, so there are "
           "no channel groups to remove")
  _check(isinstance(cfg.bn_l1, (int, float)) and np.isfinite(cfg.bn_l1)
         and cfg.bn_l1 >= 0, f"--bn-l1 must be >= 0, got {cfg.bn_l1}")
  given = [f for f in ("target_flops", "target_flops_from", "prune_channels")
           if getattr(cfg, f) is not None]
  grouped_target = flops_target_groups(cfg)
  if grouped_target:
    # Group RDA & co.: the group strength is chosen each step to keep
    # --target-flops of the FLOPs (rda_optax's target_flops).
    bad = [m for m in run if m in STRUCTURED_METHODS
           and m not in FLOPS_TARGET_METHODS]
    _check(not bad, "--target-flops with --structure: --method "
           f"{(bad or [''])[0]} has no FLOPs target; use "
           + ", ".join(FLOPS_TARGET_METHODS))
    _check(cfg.group_l1 is None, "--target-flops and --group-l1: give one "
           "of them (the group strength is chosen to reach the FLOPs target)")
    _check(cfg.target_sparsity is None and cfg.target_sparsity_from is None,
           "--target-flops with --structure cannot be combined with a target "
           "sparsity (one counts channels' FLOPs, the other weights)")
  if given and "net-slim" not in run and not grouped_target:
    _fail(f"--{given[0].replace('_', '-')} is an option of --method net-slim"
          + (" (or of --structure channel with "
             f"{', '.join(FLOPS_TARGET_METHODS)})"
             if given[0] == "target_flops" else ""))
  _check(len(given) <= 1, "net-slim: give one of --target-flops, "
         "--target-flops-from, --prune-channels")
  if cfg.target_flops is not None:
    _check(np.isfinite(cfg.target_flops) and 0 < cfg.target_flops <= 1,
           f"--target-flops must be in (0, 1], got {cfg.target_flops}")
  if cfg.prune_channels is not None:
    _check(np.isfinite(cfg.prune_channels) and 0 <= cfg.prune_channels < 1,
           f"--prune-channels must be in [0, 1), got {cfg.prune_channels}")
  if cfg.target_flops_from is not None:
    flops_from_run(cfg.target_flops_from)
  if "net-slim" in run and not given:
    _check(cfg.structure != "none" and any(
        m in STRUCTURED_METHODS for m in run),
           "--method net-slim needs --target-flops, --target-flops-from, "
           "--prune-channels, or --compare with rda or prox-sgd and "
           "--structure (to match that run's FLOPs)")


def flops_from_run(run_dir: str) -> float:
  """The FLOPs ratio (slim / dense) another run reached, from summary.json."""
  flag = "--target-flops-from"
  r = summary_value(run_dir, flag, ("flops", "ratio"), "flops ratio")
  if not (isinstance(r, (int, float)) and 0 < r <= 1):
    raise UsageError(f"{flag}: {Path(run_dir) / 'summary.json'}: flops "
                     f"ratio {r!r} not in (0, 1]")
  return float(r)


def net_slim_target(cfg: Any, summaries: list[dict]) -> Optional[float]:
  """net-slim's FLOPs target: the flag, the file, or the FLOPs ratio the
  grouped rda/prox-sgd run of the same ``--compare`` reached; None with
  ``--prune-channels``."""
  if cfg.prune_channels is not None:
    return None
  if cfg.target_flops is not None:
    return cfg.target_flops
  if cfg.target_flops_from is not None:
    return flops_from_run(cfg.target_flops_from)
  for s in summaries:
    if s["method"] in STRUCTURED_METHODS and s.get("flops"):
      return s["flops"]["ratio"]
  raise UsageError("net-slim needs --target-flops, --target-flops-from or "
                   "--prune-channels")


# --- optimizers -------------------------------------------------------------

def flops_model(cfg: Any, method: str, model: Any, image_shape
                ) -> Optional[rda_optax.FlopsModel]:
  """What ``--target-flops`` counts for a grouped ``method``: ``model``'s
  FLOPs on ``image_shape`` as an exact polynomial of the channels kept per
  unit (``models.flops_polynomial``); None when the run has no FLOPs
  target for its groups (then nothing is computed)."""
  if not (uses_groups(cfg, method) and method in FLOPS_TARGET_METHODS
          and flops_target_groups(cfg)):
    return None
  return models.flops_polynomial(model, tuple(image_shape))


def group_args(cfg: Any, spe: int,
               flops: Optional[rda_optax.FlopsModel] = None
               ) -> dict[str, Any]:
  """``groups=``/``group_l1=`` for ``rda``/``prox_sgd``: the channel groups
  weighted by ``--group-weighting``, with ``--group-l1`` (0 in the
  ``--debias-epochs``, like l1); with ``--target-flops``, ``target_flops=``
  (``optim.flops_schedule``) and ``flops`` (:func:`flops_model`: the
  model's FLOPs on the data's images) as ``group_costs=`` instead.

  Raises:
    ValueError: with ``--target-flops`` and no ``flops``: the FLOPs depend
      on the image shape and classes, which only the run knows.
  """
  if cfg.structure == "none":
    return {}
  groups = functools.partial(rda_optax.channel_groups,
                             units=model_units(cfg.model),
                             weighting=weighting(cfg))
  if flops_target_groups(cfg):
    if flops is None:
      raise ValueError(
          "--target-flops: pass the model's FLOPs polynomial "
          "(structure.flops_model(cfg, method, model, image_shape), as "
          "train.run.build_run does) to methods.optimizer(..., flops=)")
    return dict(groups=groups, group_costs=flops,
                target_flops=optim.flops_schedule(cfg, cfg.target_flops,
                                                  spe))
  lam = (cfg.group_l1 if cfg.group_l1 is not None
         else DEFAULT_GROUP_L1[weighting(cfg)])
  return dict(groups=groups, group_l1=optim.debiased(lam, cfg, spe))


def freeze_mask(params: Any, channel_units: Optional[tuple] = None) -> Any:
  """Kernels and every leaf in a channel group (BatchNorm scale and bias).

  ASR freezes exact zeros in these leaves. Kernels alone are not enough: a
  dead channel's BatchNorm scale and bias still get gradients, the group's
  average may grow past its threshold again, and the channel would come
  back as a constant ``relu(bias)`` that ``models.slim`` cannot remove.
  ``channel_units``: the model's (:func:`model_units`); default: by name.
  """
  specs = rda_optax.channel_groups(params, units=channel_units)
  kernels = rda_optax.default_l1_mask(params)
  return jax.tree.map(lambda k, s: bool(k) or s is not None, kernels, specs,
                      is_leaf=lambda x: x is None)


def _bn_scales(params: Any, channel_units: Optional[tuple] = None) -> Any:
  specs = rda_optax.channel_groups(params, units=channel_units)
  return jax.tree_util.tree_map_with_path(
      lambda p, s: s is not None and str(getattr(p[-1], "key", "")) == "scale",
      specs, is_leaf=lambda x: x is None)


def add_bn_l1(strength: optax.ScalarOrSchedule,
              channel_units: Optional[tuple] = None
              ) -> optax.GradientTransformation:
  """``rda_optax.add_bn_l1`` on the BatchNorm scales that belong to a channel
  group: the channels that pruning by scale can remove."""
  return rda_optax.add_bn_l1(strength, mask=functools.partial(
      _bn_scales, channel_units=channel_units))


# --- pruning by BatchNorm scale (net-slim) ----------------------------------

class Units(NamedTuple):
  """The prunable channels: family key and index of each, and its score."""
  keys: list[str]
  index: np.ndarray
  score: np.ndarray


def _flat(params):
  return traverse_util.flatten_dict(params, sep="/")


def _spec_flat(params, channel_units=None):
  specs = rda_optax.channel_groups(params, units=channel_units)
  return {"/".join(str(getattr(k, "key", k)) for k in p): s
          for p, s in jax.tree_util.tree_flatten_with_path(
              specs, is_leaf=lambda x: x is None)[0] if s is not None}


def prune_units(params: Any, channel_units: Optional[tuple] = None) -> Units:
  """One unit per channel group; its score is the largest ``|scale|`` of
  the group's BatchNorms (a ResNet stream channel goes only when every
  writer's scale is small). Each family's best channel is left out, so no
  layer loses all of its channels. ``channel_units``: the model's
  (:func:`model_units`); default: by name."""
  flat, specs = _flat(params), _spec_flat(params, channel_units)
  fam: dict[str, np.ndarray] = {}
  for path, s in specs.items():
    if path.endswith("/scale"):
      a = np.abs(np.asarray(flat[path], np.float32))
      fam[s.key] = a if s.key not in fam else np.maximum(fam[s.key], a)
  keys, idx, score = [], [], []
  for k, a in fam.items():
    for c in np.argsort(a, kind="stable")[:-1]:
      keys.append(k)
      idx.append(c)
      score.append(a[c])
  order = np.argsort(np.asarray(score), kind="stable")
  return Units([keys[i] for i in order], np.asarray(idx)[order],
               np.asarray(score)[order])


def zero_units(params: Any, units: Units, k: int,
               channel_units: Optional[tuple] = None) -> Any:
  """``params`` with the first ``k`` units' whole groups set to exactly 0."""
  by_key: dict[str, list[int]] = {}
  for key, c in zip(units.keys[:k], units.index[:k]):
    by_key.setdefault(key, []).append(int(c))
  return _zero_groups(params, by_key, channel_units)


def _zero_groups(params: Any, by_key: dict[str, list[int]],
                 channel_units: Optional[tuple] = None) -> Any:
  """``params`` with the groups ``by_key[family]`` set to exactly 0."""
  flat, specs = _flat(params), _spec_flat(params, channel_units)
  out = {p: np.array(v) for p, v in flat.items()}
  for path, s in specs.items():
    if s.key in by_key:
      sl = [slice(None)] * out[path].ndim
      sl[s.axis] = by_key[s.key]
      out[path][tuple(sl)] = 0
  return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(out, sep="/"))


def slim_flops(model: Any, params: Any, input_shape,
               multiple: int = 1) -> int:
  small, _ = models.slim(model, {"params": params}, multiple=multiple)
  return models.flops(small, input_shape)


def prune_to_flops(model: Any, params: Any, input_shape, target: float
                   ) -> tuple[Any, int]:
  """Prunes the fewest lowest-scale units that bring the slim model's FLOPs
  to at most ``target`` times the dense model's (binary search: FLOPs only
  fall as units go). Returns the params and the number pruned; if even
  every prunable unit is not enough, all of them go."""
  declared = models.channel_units(model)
  units = prune_units(params, declared)
  goal = target * models.flops(model, input_shape)
  lo, hi = 0, len(units.keys)
  cache: dict[int, int] = {}

  def f(k):
    if k not in cache:
      cache[k] = slim_flops(model, zero_units(params, units, k, declared),
                            input_shape)
    return cache[k]

  while lo < hi:
    mid = (lo + hi) // 2
    if f(mid) <= goal:
      hi = mid
    else:
      lo = mid + 1
  return zero_units(params, units, lo, declared), lo


def prune_fraction(params: Any, fraction: float,
                   channel_units: Optional[tuple] = None
                   ) -> tuple[Any, int]:
  """Prunes ``round(fraction * channels)`` lowest-scale units (capped at
  the prunable ones)."""
  units = prune_units(params, channel_units)
  total = len(units.keys) + len({k for k in units.keys})
  k = min(int(round(fraction * total)), len(units.keys))
  return zero_units(params, units, k, channel_units), k


# --- widths that keep the FLOPs target -------------------------------------

class Fit(NamedTuple):
  """Widths at multiples of ``--width-multiple`` within a FLOPs target
  (:func:`fit_widths`), per unit key: ``live`` channels (score > 0) before,
  ``counts`` kept (each a multiple of the multiple or the unit's full
  width), ``keep`` their indices (the top-scored); ``flops`` those widths'
  FLOPs (``models.flops``), ``live_flops`` the live channels' (at least
  one a unit, as ``models.slim`` keeps), ``goal`` the target's;
  ``reached``: ``flops <= goal`` (False when every unit at its smallest
  width is still over); ``live_cut``: the live channels left out."""
  live: dict[str, int]
  counts: dict[str, int]
  keep: dict[str, np.ndarray]
  flops: int
  live_flops: int
  goal: float
  reached: bool
  live_cut: int


def _levels(width: int, multiple: int) -> list[int]:
  # Below the full width only multiples run fast; the full width is always
  # allowed (it runs as the dense layer does).
  return sorted({*range(multiple, width, multiple), width})


def fit_widths(model: Any, input_shape, scores: dict[str, Any],
               multiple: int, target: float) -> Fit:
  """Per-unit widths, multiples of ``multiple`` (or the unit's full width),
  whose FLOPs are at most ``target`` times the dense model's, keeping the
  top-scored channels of each unit.

  ``scores[unit key]``: one score per channel, 0 for a dead one. Each
  unit starts at its live count (score > 0) rounded down to a multiple (at
  least ``multiple``). While that is over the target, the block of
  ``multiple`` channels whose removal loses the least score per FLOP saved
  goes (a unit at its smallest width stays). Then, while a block fits, the
  block of next-best channels with the most score per FLOP added comes
  back (only blocks with some live channel). The greedy rule of the
  fractional knapsack: score is what the method says a channel is worth,
  FLOPs what it costs, and a block's cost depends on its neighbours'
  widths, so each step is priced at the current widths (the exact FLOPs
  polynomial, ``models.flops_polynomial``). Ties go to the earlier unit.
  """
  units = models.channel_units(model, "fit_widths")
  const, lin, pair = models.flops_polynomial(model, tuple(input_shape))
  goal = target * models.flops(model, tuple(input_shape))
  keys = [u.key for u in units]
  sc = {u: np.asarray(scores[u], np.float64) for u in keys}
  order = {u: np.lexsort((np.arange(sc[u].size), -sc[u])) for u in keys}
  # Score of the top-n channels of each unit, for every n.
  top = {u: np.concatenate([[0.0], np.cumsum(sc[u][order[u]])]) for u in keys}
  levels = {u: _levels(sc[u].size, multiple) for u in keys}
  live = {u: int(np.count_nonzero(sc[u] > 0)) for u in keys}
  at = {u: max((i for i, n in enumerate(levels[u]) if n <= live[u]),
               default=0) for u in keys}

  def widths(moved=None, by=0):
    return {u: levels[u][at[u] + (by if u == moved else 0)] for u in keys}

  def cost(n):
    return (const + sum(c * n[u] for u, c in lin.items())
            + sum(c * n[a] * n[b] for (a, b), c in pair.items()))

  def step(u, by):
    """Score and FLOPs that moving unit ``u`` by ``by`` levels adds."""
    now, new = widths(), widths(u, by)
    return top[u][new[u]] - top[u][now[u]], cost(new) - cost(now)

  while cost(widths()) > goal:
    best = None
    for i, u in enumerate(keys):
      if at[u] > 0:
        lost, saved = (-d for d in step(u, -1))
        rank = (lost / saved if saved > 0 else np.inf, i)
        best = min(best or (rank, u), (rank, u))
    if best is None:
      break
    at[best[1]] -= 1
  while True:
    best = None
    for i, u in enumerate(keys):
      if at[u] + 1 < len(levels[u]):
        gain, added = step(u, 1)
        if gain > 0 and cost(widths()) + added <= goal:
          rank = (-gain / added if added > 0 else -np.inf, i)
          best = min(best or (rank, u), (rank, u))
    if best is None:
      break
    at[best[1]] += 1
  counts = widths()
  keep = {u: np.sort(order[u][:counts[u]]) for u in keys}
  return Fit(live, counts, keep, cost(counts),
             cost({u: max(n, 1) for u, n in live.items()}), goal,
             cost(counts) <= goal,
             sum(live[u] - int(np.count_nonzero(sc[u][keep[u]] > 0))
                 for u in keys))


def width_target(cfg: Any, method: str, target: Optional[float]
                 ) -> Optional[float]:
  """The FLOPs target the widths after the switch keep (:func:`fit_widths`),
  or None where the widths are the live counts rounded up as before: no
  FLOPs target (net-slim's ``target``, or the grouped methods'
  ``--target-flops``), ``--width-multiple 1``, or no slim model."""
  if cfg.width_multiple <= 1 or not slims(cfg, method):
    return None
  if method == "net-slim":
    return target
  if method in FLOPS_TARGET_METHODS and flops_target_groups(cfg):
    return cfg.target_flops
  return None


def channel_scores(params: Any, channel_units: tuple, method: str
                   ) -> dict[str, np.ndarray]:
  """``{unit key: score per channel}``, what the method ranks channels by:
  net-slim the largest ``|scale|`` of the unit's BatchNorms (as
  :func:`prune_units`), the grouped methods the l2 norm of the channel's
  whole group (its writers' kernel columns and biases, its BatchNorms'
  scale and bias), which their group penalty shrinks. Dead channels
  (``models.dead_channels``) score 0."""
  scale, sumsq = _group_stats(params, channel_units)
  dead = _dead_units(params, channel_units, sumsq)
  # A unit without a BatchNorm scale is scored by its group in any case.
  return {u.key: np.where(dead[u.key], 0.0, scale[u.key]
                          if method == "net-slim" and u.key in scale
                          else np.sqrt(sumsq[u.key]))
          for u in channel_units}


def _group_stats(params: Any, channel_units: tuple
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Per unit key and channel: the largest ``|scale|`` of its BatchNorms,
  and the sum of squares of its whole group."""
  flat, specs = _flat(params), _spec_flat(params, channel_units)
  scale: dict[str, np.ndarray] = {}
  sumsq: dict[str, np.ndarray] = {}
  for path, s in specs.items():
    x = np.moveaxis(np.asarray(flat[path], np.float64), s.axis, -1)
    x = x.reshape(-1, x.shape[-1])
    if path.endswith("/scale"):
      a = np.abs(x).max(0)
      scale[s.key] = a if s.key not in scale else np.maximum(scale[s.key], a)
    sq = np.square(x).sum(0)
    sumsq[s.key] = sq if s.key not in sumsq else sumsq[s.key] + sq
  return scale, sumsq


def _dead_units(params: Any, channel_units: tuple, sumsq=None
                ) -> dict[str, np.ndarray]:
  """``{unit key: dead per channel}`` as ``models.slim`` sees it: every
  BatchNorm of the unit dead; without one, the whole group at 0."""
  dead = models.dead_channels({"params": params})
  if sumsq is None and not all(u.norms for u in channel_units):
    sumsq = _group_stats(params, channel_units)[1]
  return {u.key: (np.logical_and.reduce([dead[n] for n in u.norms])
                  if u.norms else sumsq[u.key] == 0) for u in channel_units}


def fit_to_flops(model: Any, params: Any, input_shape, method: str,
                 multiple: int, target: float) -> tuple[Any, Fit, str]:
  """``params`` with the channels :func:`fit_widths` leaves out set to 0
  (whole groups, as net-slim prunes), so that slimming with ``multiple``
  gives those widths and the slim model equals this masked one; the fit;
  and the line the run logs at the switch."""
  units = models.channel_units(model)
  scores = channel_scores(params, units, method)
  fit = fit_widths(model, input_shape, scores, multiple, target)
  # Every channel that still outputs something and is not kept, so that
  # slimming keeps exactly fit.counts (a BatchNorm with scale 0 and bias
  # != 0 scores 0 under net-slim, yet is alive).
  dead = _dead_units(params, units)
  cut = {u.key: np.setdiff1d(np.flatnonzero(~dead[u.key]),
                             fit.keep[u.key]).tolist() for u in units}
  out = _zero_groups(params, cut, units)
  dense = models.flops(model, input_shape)
  show = lambda d: "/".join(str(d[u.key]) for u in units)  # noqa: E731
  line = (f"widths for --target-flops {target} at multiples of "
          f"--width-multiple {multiple}: live channels {show(fit.live)} "
          f"(FLOPs {fit.live_flops / dense:.4f} of dense) -> "
          f"{show(fit.counts)} (FLOPs {fit.flops / dense:.4f}); the rounding "
          f"cut {fit.live_cut} live channels")
  if not fit.reached:
    line += (f"; {target} is out of reach: every unit is at its smallest "
             f"width ({multiple} channels, or its full width)")
  return out, fit, line


# --- training on the slim model ---------------------------------------------

def slim_state(model: Any, state: Any, multiple: int = 1) -> tuple[Any, Any]:
  """The ``models.Slicing`` of ``state`` (a host ``engine.TrainState``) and
  the state cut to its slim model.

  Params and BatchNorm statistics are cut as ``models.slim`` cuts them; so
  is every leaf of the optimizer state that sits under a parameter's path
  with that parameter's shape (averages, momenta, initial weights), so the
  kept channels keep their state. Other leaves (step counts, thresholds)
  are left as they are.
  """
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  s = models.slicer(model, variables, multiple=multiple)
  shapes = {p: np.shape(x) for p, x in _flat(state.params).items()}

  def cut_tree(tree):
    return traverse_util.unflatten_dict(
        {p: s.cut(p, x) for p, x in _flat(tree).items()}, sep="/")

  def cut_leaf(path, x):
    names = []
    for k in reversed(path):
      if not isinstance(k, jax.tree_util.DictKey):
        break
      names.insert(0, str(k.key))
    # The longest trailing run of dict keys that names a parameter.
    for i in range(len(names)):
      p = "/".join(names[i:])
      if p in shapes and np.shape(x) == shapes[p]:
        return s.cut(p, x)
    return x

  return s, state._replace(
      params=cut_tree(state.params),
      batch_stats=cut_tree(state.batch_stats) if state.batch_stats else {},
      opt_state=jax.tree_util.tree_map_with_path(cut_leaf, state.opt_state))


def full_sparsity(params: Any, dense: Any) -> tuple[float, dict[str, float]]:
  """Sparsity of slim ``params`` counted over the dense model's kernels
  (``dense``: shapes of its params), the removed entries as zeros: the
  sparsity of the full-width variables that export writes
  (:func:`dense_variables`). A run at full width counts the consumers'
  weights on dead inputs as they are (nonzero, though they multiply
  zeros), so it logs less."""
  size = {jax.tree_util.keystr(p): int(np.prod(x.shape))
          for p, x in jax.tree_util.tree_flatten_with_path(dense)[0]
          if len(x.shape) >= 2}  # the kernels, as sparsity_report's mask
  rows = {r.path: r.zeros + size[r.path] - r.size
          for r in rda_optax.sparsity_report(params)}
  return (sum(rows.values()) / sum(size.values()),
          {p: z / size[p] for p, z in rows.items()})


def write_train_slim(run_dir: Path, epoch: int, before: Any, after: Any,
                     slicing: Any, multiple: int, input_shape,
                     fit: Optional[Fit] = None) -> dict[str, Any]:
  """Records the switch to the slim model in ``train_slim.json``: the
  widths ``--resume`` rebuilds after the switch, and the kept channels of
  each BatchNorm, from which :func:`dense_variables` puts the trained slim
  variables back into the full-width model; with ``fit``
  (:func:`fit_to_flops`), the target the widths keep and the live channels
  they cut. ``flops_after`` is always that of the widths that train.
  Returns the record."""
  keep = {bn: slicing.cut(f"{bn}/scale", np.arange(n)).tolist()
          for bn, n in _bn_widths(before, input_shape).items()}
  rec = dict(epoch=epoch, multiple=multiple, input_shape=list(input_shape),
             num_classes=before.num_classes,
             widths_before=_widths(before, input_shape),
             widths_after=jax.tree.map(int, after.widths),
             flops_before=models.flops(before, input_shape),
             flops_after=models.flops(after, input_shape), keep=keep)
  if fit is not None:
    rec["fit"] = dict(flops_goal=fit.goal, reached=fit.reached,
                      live=fit.live, live_flops=fit.live_flops,
                      live_cut=fit.live_cut)
  (run_dir / TRAIN_SLIM).write_text(json.dumps(rec))
  return rec


def _bn_widths(model: Any, input_shape) -> dict[str, int]:
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(
      (1, *input_shape), jnp.float32))["params"]
  return {p[:-len("/scale")]: x.shape[0] for p, x in _flat(shapes).items()
          if p.endswith("/scale")}


def _widths(model: Any, input_shape) -> Any:
  if model.widths is not None:
    return jax.tree.map(int, model.widths)
  return list(_bn_widths(model, input_shape).values())


def dense_variables(run_dir: str | Path, variables: Any) -> Any:
  """The run's final ``variables`` at full width: a run that trained on the
  slim model has its kept channels put back where they were
  (``train_slim.json``) and zeros in the removed ones, which computes the
  same logits as the slim model; any other run's as they are."""
  rec = train_slim_record(run_dir)
  if rec is None:
    return variables
  cfg = json.loads((Path(run_dir) / "config.json").read_text())
  model = models.get(cfg["model"], num_classes=rec["num_classes"])
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(
      (1, *rec["input_shape"]), jnp.float32))
  pattern = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
  for bn, idx in rec["keep"].items():
    scale = _flat(pattern["params"])[f"{bn}/scale"]
    scale[np.asarray(idx, int)] = 1  # alive: kept (and only those)
  s = models.slicer(model, pattern)

  def uncut(col, tree):
    full = _flat(shapes[col])  # once per collection, not per leaf
    return traverse_util.unflatten_dict(
        {p: s.uncut(p, x, full[p].shape) for p, x in _flat(tree).items()},
        sep="/")

  return {col: uncut(col, tree) for col, tree in variables.items()}


def train_slim_record(run_dir: str | Path) -> Optional[dict[str, Any]]:
  """``train_slim.json`` of a run, or None before its switch."""
  path = Path(run_dir) / TRAIN_SLIM
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UsageError(f"{path}: unreadable ({e}); the run's checkpoints after "
                     "the switch cannot be rebuilt without it") from None


def trained_widths(run_dir: str | Path) -> dict[str, Any]:
  """``models.get`` arguments of the model the run's last checkpoint holds:
  the slim widths after a switch, none otherwise."""
  rec = train_slim_record(run_dir)
  return {} if rec is None else dict(widths=_tuples(rec["widths_after"]))


# --- what the run logs and writes -------------------------------------------

def channel_counts(params: Any) -> dict[str, int]:
  """Alive channels of each BatchNorm layer (``models.dead_channels``)."""
  return {k: int((~d).sum())
          for k, d in models.dead_channels({"params": params}).items()}


def flops_row(model: Any, params: Any, input_shape,
              dense_model: Any = None, multiple: int = 1) -> dict[str, Any]:
  """FLOPs of the dense model, of ``model`` with ``params`` slimmed (widths
  rounded up to ``multiple``), and their ratio (``dense_model``: the
  full-width model when ``model`` is already slim)."""
  dense = models.flops(model if dense_model is None else dense_model,
                       input_shape)
  small = slim_flops(model, params, input_shape, multiple)
  return dict(dense=dense, slim=small, ratio=small / dense)


def save_slim(run_dir: Path, model: Any, variables: Any) -> None:
  """Writes the slim model: its widths (``slim.json``) and variables
  (``slim.msgpack``, ``flax.serialization``)."""
  widths = jax.tree.map(int, model.widths)
  meta = dict(widths=widths, num_classes=model.num_classes)
  (run_dir / SLIM_FILE).write_bytes(flax.serialization.msgpack_serialize(
      jax.tree.map(np.asarray, variables)))
  (run_dir / SLIM_META).write_text(json.dumps(meta))


def _tuples(x):
  return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def load_slim(run_dir: str | Path, dtype: Any = jnp.float32
              ) -> tuple[Any, dict]:
  """Rebuilds the slim model of a finished run: ``(model, variables)``.

  The model is ``models.get(config.model)`` with the widths of
  ``slim.json``; the variables are those of ``slim.msgpack``.
  """
  run_dir = Path(run_dir)
  try:
    cfg = json.loads((run_dir / "config.json").read_text())
    meta = json.loads((run_dir / SLIM_META).read_text())
    raw = (run_dir / SLIM_FILE).read_bytes()
  except (OSError, ValueError) as e:
    raise UsageError(f"{run_dir}: no readable slim model: {e}") from None
  model = models.get(cfg["model"], num_classes=meta["num_classes"],
                     dtype=dtype, widths=_tuples(meta["widths"]))
  variables = flax.serialization.msgpack_restore(raw)
  return model, jax.tree.map(jnp.asarray, variables)


def config_fields(cfg: Any, method: str,
                  target: Optional[float]) -> dict[str, Any]:
  """What a run directory's config.json says of the structure options:
  only the ones its own method takes, so that ``--resume`` validates it
  (a ``--compare`` shares one set of flags among methods) and trains to
  the same target: net-slim's FLOPs ``target``, or the grouped methods'
  ``--target-flops``."""
  out: dict[str, Any] = {}
  if method not in STRUCTURED_METHODS:
    out.update(structure="none", group_l1=None, group_weighting="auto")
  if method == "net-slim":
    out.update(target_sparsity=None, target_flops=target,
               target_flops_from=None)
  elif (uses_groups(cfg, method) and method in FLOPS_TARGET_METHODS
        and flops_target_groups(cfg)):
    out.update(target_flops=cfg.target_flops, target_flops_from=None,
               prune_channels=None)
  else:
    out.update(target_flops=None, target_flops_from=None, prune_channels=None)
  return out


def resume_target(cfg: Any) -> Optional[float]:
  """The target a resumed run trains to, from its config.json."""
  if cfg.method == "net-slim":
    return cfg.target_flops
  return cfg.target_sparsity


def summarize(cfg: Any, method: str, r: Any, state: Any,
              target: Optional[float], run_dir: Path, main: bool,
              dtype: Any) -> dict[str, Any]:
  """The summary's structure fields: FLOPs (dense, slim, ratio) for every
  run; for the structured ones, the slim model's widths, parameters and
  val/test top-1, evaluated after writing it and reading it back."""
  shape = r.images.shape[1:]
  # The row the tables and --target-flops-from read. With fitted widths
  # (width_target) it is the FLOPs of the model that trains and ships, its
  # widths rounded to --width-multiple (equal to the live channels' unless
  # channels died after the switch); otherwise, as before fitted widths
  # existed, that of the live channels alone.
  fitted = width_target(cfg, method, target) is not None
  out: dict[str, Any] = dict(flops=flops_row(
      r.model, state.params, shape, r.dense_model,
      cfg.width_multiple if fitted else 1))
  out["channels_per_layer"] = channel_counts(state.params)
  if method == "net-slim":
    out.update(target_sparsity=None, target_flops=target)
  elif uses_groups(cfg, method) and flops_target_groups(cfg):
    out.update(target_flops=cfg.target_flops)
  if not slims(cfg, method):
    return out
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  # Without fitted widths flops["slim"] above counts the alive channels;
  # the written model rounds its widths up to --width-multiple so that it
  # runs fast, and its own FLOPs go in this row (with fitted widths, the
  # same FLOPs as flops["slim"]).
  small, sv = models.slim(r.model, jax.device_get(variables),
                          multiple=cfg.width_multiple)
  if main:
    try:
      save_slim(run_dir, small, sv)
    except OSError as e:
      raise UsageError(f"cannot write the slim model into {run_dir}: "
                       f"{e.strerror or e}") from None
    if jax.process_count() == 1:
      # What the summary reports is the model as read back from disk.
      small, sv = load_slim(run_dir, dtype)
  evaluate = r.evaluator(small)
  slim_state = state._replace(params=sv["params"],
                              batch_stats=sv.get("batch_stats", {}))
  row = dict(widths=jax.tree.map(int, small.widths),
             width_multiple=cfg.width_multiple,
             flops=models.flops(small, shape),
             params=models.param_count(sv["params"]),
             dense_params=models.param_count(r.dense_params))
  for split in ("val", "test"):
    row[f"{split}_top1"] = (evaluate(slim_state, *r.evals[split])[0]
                            if split in r.evals else None)
  out["slim"] = row
  return out
