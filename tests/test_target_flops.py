"""``target_flops``: the group strength chosen each step so that the
surviving groups cost at most a share of the total (issue 25).

The toy trees have one-step answers that can be worked out by hand: with
``rda(gamma=1, l1=0)`` and ``center="zero"`` the first iterate is the group
prox of ``z = -g``, and a group's score is ``||z_g|| / (w_g sqrt(|g|))``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rda_optax
from rda_optax import _target

# Three families. "a": 3 channels of 4 entries (weight 1, so the score is
# ||z_g|| / 2), cost 1 each; "b": 2 channels of 1 entry, cost 2 each; "c":
# 1 channel of 9 entries (score ||z_g|| / 3), cost 4. Total cost 11.
G = {"a": jnp.array([[-2.0, -4.0, -6.0]] * 4),   # norms 4, 8, 12 -> 2, 4, 6
     "b": jnp.array([[-5.0, -1.0]]),             # scores 5, 1
     "c": jnp.full((9, 1), -1.0)}                # norm 3 -> score 1
SPECS = {k: rda_optax.GroupSpec(k) for k in G}
COSTS = {"a": 1.0, "b": 2.0, "c": 4.0}
# Decreasing score order: a2 (6, cost 1), b0 (5, 2), a1 (4, 1), a0 (2, 1),
# then b1 and c tied at 1 (2 and 4). Cumulative: 1, 3, 4, 5, 7, 11.


def _params():
  return jax.tree.map(jnp.ones_like, G)


def _step(target, tx_fn=rda_optax.rda, jit=True, **kw):
  args = dict(gamma=1.0) if tx_fn is rda_optax.rda else dict(
      learning_rate=1.0)
  kw.setdefault("group_costs", COSTS)
  tx = tx_fn(**args, l1=0.0, groups=SPECS, target_flops=target, **kw)
  p = _params()
  update = jax.jit(tx.update) if jit else tx.update
  u, _ = update(G, tx.init(p), p)
  return optax.apply_updates(p, u)


def _alive(w):
  """{family: bool per channel}, a channel alive when any entry is."""
  return {k: np.asarray(jnp.any(v != 0, axis=0)) for k, v in w.items()}


def _kept_cost(w):
  al = _alive(w)
  return sum(COSTS[k] * al[k].sum() for k in al) / 11.0


@pytest.mark.parametrize("target, alive, tau", [
    # Budget 5.5: a2, b0, a1, a0 cost 5; b1 would make 7. Strength: the
    # first score left out, 1 (b1 and c tie there and both go).
    (0.5, {"a": [1, 1, 1], "b": [1, 0], "c": [0]}, 1.0),
    # Budget 3.3: a2 and b0 (3); a1 would make 4. Strength 4.
    (0.3, {"a": [0, 0, 1], "b": [1, 0], "c": [0]}, 4.0),
    # Budget 0.99: not even a2 fits; everything goes (strength 6).
    (0.09, {"a": [0, 0, 0], "b": [0, 0], "c": [0]}, 6.0),
    # The whole budget: strength 0, every (nonzero) group kept as is.
    (1.0, {"a": [1, 1, 1], "b": [1, 1], "c": [1]}, 0.0),
])
def test_hand_computed_survivors_and_values(target, alive, tau):
  w = _step(target)
  _check_survivors(w, alive, tau)


def _check_survivors(w, alive, tau):
  """The groups alive are ``alive``'s, those with a score above the chosen
  strength ``tau`` (the score of the first group left out), and the
  survivors are not shrunk: the target selects groups (a projection onto
  the budget), it does not shrink by ``tau`` (which, with channel norms
  close to each other, left the survivors near 0 and a CIFAR network
  unable to learn). RDA's first iterate is then ``-G`` on the survivors."""
  got = _alive(w)
  for k in G:
    assert got[k].tolist() == [bool(x) for x in alive[k]], (k, got)
    score = np.linalg.norm(np.asarray(G[k]), axis=0) / (
        np.sqrt(G[k].shape[0]))
    assert np.all(score[got[k]] > tau) and np.all(score[~got[k]] <= tau), k
  for k in G:
    np.testing.assert_allclose(np.asarray(w[k]),
                               np.where(got[k], -np.asarray(G[k]), 0),
                               rtol=1e-6)


def _scores(method, g, w0):
  """Per family, each channel's score as the first step's prox sees it
  (``rda_optax._group.group_scores``'s definition, worked out here from
  the methods' first step with learning rate / gamma 1 and l1 = 0)."""
  out = {}
  for k, gk in g.items():
    g2 = np.asarray(gk, np.float64).reshape(-1, gk.shape[-1])
    w2 = np.asarray(w0[k], np.float64).reshape(-1, gk.shape[-1])
    n = g2.shape[0]
    if method == "rda":
      z, scale = -g2, 1.0                       # S(-gbar), gamma = 1
    elif method in ("rmda", "grda"):
      z, scale = w2 - g2, 1.0                   # scalar scales only rescale
    else:                                        # prox_adam, step 1
      d = (np.abs(g2) + 1e-8).mean(axis=0)       # metric, group-meaned
      z, scale = w2 - g2 / d, 1.0 / d
    out[k] = np.linalg.norm(z, axis=0) / (np.sqrt(n) * scale)
  return out


@pytest.mark.parametrize("method", ["rda", "rmda", "grda", "prox_adam"])
@pytest.mark.parametrize("target", [0.05, 0.3, 0.5, 0.77, 1.0])
def test_kept_cost_is_within_budget_and_maximal(method, target):
  """Random norms, random per-channel costs: the survivors are exactly the
  longest run of the highest scores that fits (cost <= F), so adding the
  next channel in score order would overflow."""
  key = jax.random.split(jax.random.key(int(target * 100)), 4)
  g = {"a": jax.random.normal(key[0], (5, 7)),
       "b": jax.random.normal(key[1], (3, 3, 2, 4)),
       "c": jax.random.normal(key[2], (1, 6))}
  specs = {k: rda_optax.GroupSpec(k) for k in g}
  costs = {"a": np.arange(1.0, 8.0), "b": 3.0,
           "c": np.asarray(jax.random.uniform(key[3], (6,)) + 0.1)}
  fn = getattr(rda_optax, method)
  args = dict(gamma=1.0) if method == "rda" else dict(learning_rate=1.0)
  if method == "rmda":
    args["momentum"] = 1.0  # W = the prox point, whose zeros are exact
  if method == "grda":
    args["mu"] = 1.0
  if method == "prox_adam":
    args["eps"] = 1e-8
  tx = fn(**args, l1=0.0, groups=specs, target_flops=target,
          group_costs=costs)
  p = jax.tree.map(lambda x: 0.1 * jnp.ones_like(x), g)
  u, _ = jax.jit(tx.update)(g, tx.init(p), p)
  w = optax.apply_updates(p, u)
  alive = np.concatenate([np.asarray(jnp.any(
      v.reshape(-1, v.shape[-1]) != 0, axis=0)) for v in w.values()])
  cost = np.concatenate([np.broadcast_to(np.asarray(costs[k], np.float64),
                                         (g[k].shape[-1],)) for k in g])
  cost = cost / cost.sum()
  score = np.concatenate(list(_scores(method, g, p).values()))
  order = np.argsort(-score, kind="stable")
  m = int(np.sum(np.cumsum(cost[order]) <= target + 1e-7))
  want = np.zeros_like(alive)
  want[order[:m]] = True
  np.testing.assert_array_equal(alive, want)
  assert cost[alive].sum() <= target + 1e-6
  if m < len(order):  # maximal: the next channel would not fit
    assert cost[alive].sum() + cost[order[m]] > target


def test_prefix_rule_on_scores():
  """cost_threshold: survivors (score > T) are the longest prefix of the
  decreasing order that fits, checked against a direct loop."""
  rng = np.random.default_rng(0)
  for _ in range(50):
    n = int(rng.integers(1, 30))
    scores = rng.exponential(size=n).astype(np.float32)
    costs = rng.integers(1, 9, size=n).astype(np.float64)
    costs /= costs.sum()
    f = float(rng.uniform(0.01, 1.0))
    t = float(_target.cost_threshold(jnp.asarray(scores), costs, f))
    order = np.argsort(-scores, kind="stable")
    cum, m = 0.0, 0
    for i in order:
      if cum + costs[i] > f + 1e-6:
        break
      cum += costs[i]
      m += 1
    want = scores[order[m]] if m < n else 0.0
    assert t == pytest.approx(want), (scores, costs, f)
    assert costs[scores > t].sum() <= f + 1e-6


def test_jit_and_eager_agree():
  for target in (0.3, 0.5, 1.0):
    a, b = _step(target, jit=True), _step(target, jit=False)
    for k in G:
      np.testing.assert_array_equal(a[k], b[k])


def test_schedule_of_the_step_and_several_steps():
  """A schedule F_t: the kept cost follows it step by step under jit."""
  sched = optax.linear_schedule(1.0, 0.3, 4)
  tx = rda_optax.rda(1.0, 0.0, groups=SPECS, target_flops=sched,
                     group_costs=COSTS)
  p = _params()
  st = tx.init(p)
  step = jax.jit(tx.update)
  for t in range(6):
    u, st = step(G, st, p)
    p = optax.apply_updates(p, u)
    assert _kept_cost(p) <= float(sched(t)) + 1e-6


def test_sparse_group_scores_after_the_l1_step():
  """With l1 > 0 the scores are those of S_l1(z): l1 = 1 takes b1 (|z| = 1)
  and c (entries 1) to zero before the groups are ranked, and a's norms to
  (1, 3, 5) * 2 -> scores 1, 3, 5. Budget 0.3 * 11: a2, b0 (score 4) fit."""
  tx = rda_optax.rda(1.0, 1.0, l1_mask=lambda t: jax.tree.map(
      lambda _: True, t), groups=SPECS, target_flops=0.3, group_costs=COSTS)
  p = _params()
  u, _ = tx.update(G, tx.init(p), p)
  got = _alive(optax.apply_updates(p, u))
  assert got["a"].tolist() == [False, False, True]
  assert got["b"].tolist() == [True, False]
  assert not got["c"].any()


@pytest.mark.parametrize("kw, name", [
    (dict(target_flops=0.0), "target_flops"),
    (dict(target_flops=1.5), "target_flops"),
    (dict(target_flops=-0.2), "target_flops"),
    (dict(target_flops=float("nan")), "target_flops"),
    (dict(target_flops=0.5, group_costs={"a": -1.0, "b": 1.0, "c": 1.0}),
     "group_costs"),
    (dict(target_flops=0.5, group_costs={"a": [1.0, float("inf"), 1.0],
                                         "b": 1.0, "c": 1.0}),
     "group_costs"),
    (dict(target_flops=0.5, group_costs=None), "group_costs"),
    (dict(target_flops=0.5, group_l1=0.1), "group_l1"),
    (dict(target_flops=None, group_l1=0.1), "group_costs"),
])
def test_bad_arguments_raise_at_construction(kw, name):
  args = dict(groups=SPECS, group_costs=COSTS)
  args.update(kw)
  with pytest.raises(ValueError, match=name):
    rda_optax.rda(1.0, 0.0, **args)


def test_target_flops_needs_groups_and_excludes_target_sparsity():
  with pytest.raises(ValueError, match="target_flops needs groups"):
    rda_optax.rmda(0.1, 0.0, target_flops=0.5, group_costs=COSTS)
  with pytest.raises(ValueError, match="target_sparsity"):
    rda_optax.rda(1.0, None, target_sparsity=0.5, groups=SPECS,
                  target_flops=0.5, group_costs=COSTS)


@pytest.mark.parametrize("costs, match", [
    ({"a": [1.0, 1.0], "b": 1.0, "c": 1.0}, r"group_costs\['a'\]: 2 costs "
     "for 3 groups"),
    ({"a": 1.0, "b": 1.0}, "missing"),
    ({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}, "unknown"),
    ({"a": 0.0, "b": 0.0, "c": 0.0}, "total cost"),
])
def test_costs_that_do_not_fit_the_params_raise_at_init(costs, match):
  for fn in (rda_optax.rda, rda_optax.prox_adam):
    tx = fn(1.0, 0.0, groups=SPECS, target_flops=0.5, group_costs=costs)
    with pytest.raises(ValueError, match=match):
      tx.init(_params())


def test_inject_hyperparams_traces_the_target():
  tx = optax.inject_hyperparams(rda_optax.rda, static_args=("group_costs",))(
      gamma=1.0, l1=0.0, groups=SPECS, target_flops=0.3, group_costs=COSTS)
  p = _params()
  u, _ = jax.jit(tx.update)(G, tx.init(p), p)
  w, want = optax.apply_updates(p, u), _step(0.3)
  for k in G:
    np.testing.assert_array_equal(w[k], want[k])


# --- a polynomial cost (rda_optax.FlopsModel) -----------------------------

# The families of G with cost 2 + n_a + n_a n_b + 2 n_b n_c (15 in full).
# In score order a2, b0, a1, a0, b1, c the prefixes cost 2, 3, 4, 6, 8, 11,
# 15 (m = 0..6): (n_a, n_b, n_c) = (1,0,0) -> 2+1; (1,1,0) -> 2+1+1;
# (2,1,0) -> 2+2+2; (3,1,0) -> 2+3+3; (3,2,0) -> 2+3+6; (3,2,1) -> 15.
POLY = rda_optax.FlopsModel(2.0, {"a": 1.0}, {("a", "b"): 1.0,
                                              ("b", "c"): 2.0})


@pytest.mark.parametrize("target, alive, tau", [
    # Budget 7.5: a2, b0, a1 cost 6; a0 would make 8. The linear
    # reading of the same numbers would keep more.
    (0.5, {"a": [0, 1, 1], "b": [1, 0], "c": [0]}, 2.0),
    # Budget 4.5: a2, b0 (4); a1 would make 6.
    (0.3, {"a": [0, 0, 1], "b": [1, 0], "c": [0]}, 4.0),
    # Budget 1.5, below the constant 2: nothing fits (strength 6).
    (0.1, {"a": [0, 0, 0], "b": [0, 0], "c": [0]}, 6.0),
])
def test_pairwise_cost_hand_computed(target, alive, tau):
  w = _step(target, group_costs=POLY)
  _check_survivors(w, alive, tau)


def test_pairwise_cost_jit_and_eager_agree():
  for target in (0.3, 0.5, 0.9, 1.0):
    a = _step(target, group_costs=POLY)
    b = _step(target, jit=False, group_costs=POLY)
    for k in G:
      np.testing.assert_array_equal(a[k], b[k])


def _poly_cost(model, n):
  """The polynomial at kept counts ``n`` ({family: count}), in float64."""
  return (model.const + sum(c * n[k] for k, c in model.linear.items())
          + sum(c * n[a] * n[b] for (a, b), c in model.pairwise.items()))


@pytest.mark.parametrize("seed", range(6))
def test_pairwise_kept_cost_is_within_budget_and_maximal(seed):
  """Random scores and a random chain of pairwise costs: the kept groups
  are the longest prefix of the score order whose polynomial cost fits F,
  and keeping the next group too would exceed it."""
  rng = np.random.default_rng(seed)
  widths = {"a": 5, "b": 7, "c": 4, "d": 6}
  g = {k: jnp.asarray(rng.normal(size=(3, n)), jnp.float32)
       for k, n in widths.items()}
  specs = {k: rda_optax.GroupSpec(k) for k in g}
  model = rda_optax.FlopsModel(
      float(rng.uniform(0, 5)), {"a": float(rng.uniform(1, 9)),
                                 "d": float(rng.uniform(1, 9))},
      {("a", "b"): float(rng.uniform(0.1, 2)),
       ("b", "c"): float(rng.uniform(0.1, 2)),
       ("c", "d"): float(rng.uniform(0.1, 2))})
  target = float(rng.uniform(0.1, 0.9))
  tx = rda_optax.rda(1.0, 0.0, groups=specs, target_flops=target,
                     group_costs=model)
  p = jax.tree.map(jnp.ones_like, g)
  u, _ = jax.jit(tx.update)(g, tx.init(p), p)
  alive = _alive(optax.apply_updates(p, u))
  full = _poly_cost(model, widths)
  kept = {k: int(a.sum()) for k, a in alive.items()}
  assert _poly_cost(model, kept) <= target * full * (1 + 1e-6)
  # The next group in score order (rda: score ||g|| / sqrt(3)).
  scores = {k: np.linalg.norm(np.asarray(v), axis=0) for k, v in g.items()}
  nxt = max(((s, k) for k, v in scores.items()
             for s, a in zip(v, alive[k]) if not a), default=None)
  if nxt is not None:
    more = dict(kept, **{nxt[1]: kept[nxt[1]] + 1})
    assert _poly_cost(model, more) > target * full


def test_a_flops_model_with_bad_coefficients_raises():
  for bad in (rda_optax.FlopsModel(-1.0, {"a": 1.0}),
              rda_optax.FlopsModel(0.0, {"a": 1.0}, {("a",): 1.0}),
              rda_optax.FlopsModel(0.0, {"a": 1.0}, {("a", "b"): -1.0})):
    with pytest.raises(ValueError, match="group_costs"):
      rda_optax.rda(1.0, 0.0, groups=SPECS, target_flops=0.5,
                    group_costs=bad)
  tx = rda_optax.rda(1.0, 0.0, groups=SPECS, target_flops=0.5,
                     group_costs=rda_optax.FlopsModel(0, {"a": 1.0}))
  with pytest.raises(ValueError, match="missing"):
    tx.init(_params())


# --- models.flops_polynomial -------------------------------------------------

@pytest.mark.parametrize("name, shape", [
    ("small_cnn", (8, 8, 1)), ("small_cnn", (28, 28, 1)),
    ("vgg16bn", (32, 32, 3)), ("resnet18", (32, 32, 3))])
def test_flops_polynomial_is_exact_on_slimmed_models(name, shape):
  """At random kept counts (random channels of each unit made dead, the
  model cut by ``models.slim``) the polynomial equals ``models.flops`` of
  the slim model, as integers; at full width the dense FLOPs."""
  import models
  from flax import traverse_util
  model = models.get(name)
  const, lin, pair = models.flops_polynomial(model, shape)
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  flat = {p: np.ones(v.shape, np.float32) for p, v in
          traverse_util.flatten_dict(shapes, sep="/").items()}
  units = models.channel_units(model)
  width = {u.key: flat[u.writers[0]].shape[-1] for u in units}

  def poly(n):
    return (const + sum(c * n[u] for u, c in lin.items())
            + sum(c * n[a] * n[b] for (a, b), c in pair.items()))

  assert poly(width) == models.flops(model, shape)
  rng = np.random.default_rng(0)
  for _ in range(2):
    params, n = {p: v.copy() for p, v in flat.items()}, {}
    for u in units:
      n[u.key] = int(rng.integers(1, width[u.key] + 1))
      dead = rng.choice(width[u.key], width[u.key] - n[u.key], replace=False)
      for bn in u.norms:
        params[f"{bn}/scale"][dead] = 0
        params[f"{bn}/bias"][dead] = 0
    small, _ = models.slim(model, {
        "params": traverse_util.unflatten_dict(params, sep="/")})
    got = poly(n)
    assert isinstance(got, int)
    assert got == models.flops(small, shape), (name, n)


# --- the trainer ------------------------------------------------------------

@pytest.mark.parametrize("method", ["rda", "rmda", "grda", "prox-adam"])
def test_optimizer_takes_the_flops_polynomial_explicitly(method):
  """methods.optimizer needs the FLOPs polynomial for --target-flops (no
  hidden default input), and its families are the groups' (the model's
  channel units): init on the model's params accepts it."""
  import models
  from train import methods, structure
  from train.config import Config
  cfg = Config(method=method, structure="channel", target_flops=0.5,
               model="small_cnn", dataset="digits")
  with pytest.raises(ValueError, match="FLOPs polynomial"):
    methods.optimizer(cfg, method, 10)
  model = models.get("small_cnn")
  flops = structure.flops_model(cfg, method, model, (8, 8, 1))
  assert flops == models.flops_polynomial(model, (8, 8, 1))
  tx = methods.optimizer(cfg, method, 10, flops=flops).tx
  params = models.init(model, jax.random.key(0), (8, 8, 1))["params"]
  tx.init(params)  # raises if the cost keys are not the group families
  no_target = Config(method=method, structure="channel", model="small_cnn")
  assert structure.flops_model(no_target, method, model, (8, 8, 1)) is None


def _summary(out):
  import json as _json
  (summary,) = list(out.glob("*/summary.json"))
  s = _json.loads(summary.read_text())
  return s[0] if isinstance(s, list) else s


def test_trainer_run_reaches_the_flops_target_without_tuning(tmp_path):
  """``--target-flops 0.5`` with group RDA on digits, no --group-l1: the
  slim model ends within [0.45, 0.5] of the dense FLOPs, and still
  classifies. At most 0.5: the cost is the exact FLOPs polynomial of the
  kept channels (models.flops_polynomial) and the prefix rule keeps only
  what fits. At least 0.45: the first channel left out would not have
  fit, and one channel's share of the FLOPs is small (a conv1 channel of
  the small CNN, the largest, is 18432 + 64 x 128 of 1723648, 1.6%; the
  0.45 leaves room for ties and for the ramp's last steps moving the
  order). No --group-weighting: its default (auto) is uniform with a FLOPs
  target; with ``size`` weighting a channel's score is the per-entry RMS of
  its dual average, which is smallest for the 4096-row hidden Dense
  columns, so the whole hidden layer goes first (measured: 0.494 of the
  FLOPs at 10% accuracy)."""
  from train import cli
  out = tmp_path / "runs"
  code = cli.main(["--out", str(out), "--batch-size", "64", "--progress",
                   "none", "--checkpoint-every", "9", "--preset",
                   "digits-demo", "--epochs", "4", "--asr-epochs", "1",
                   "--structure", "channel", "--target-flops", "0.5"])
  assert code == 0
  s = _summary(out)
  assert 0.45 <= s["flops"]["ratio"] <= 0.5, s["flops"]
  assert s["target_flops"] == 0.5
  assert all(n > 0 for n in s["channels_per_layer"].values()), s
  assert s["test_top1"] > 90, s["test_top1"]  # measured 99.17


@pytest.mark.parametrize("args, needle", [
    (["--structure", "channel", "--target-flops", "0.5", "--group-l1",
      "1e-3"], "--group-l1"),
    (["--structure", "channel", "--target-flops", "0.5",
      "--target-sparsity", "0.5"], "target sparsity"),
    (["--method", "prox-sgd", "--structure", "channel", "--target-flops",
      "0.5"], "--target-flops"),
    (["--structure", "channel", "--target-flops", "1.5"], "--target-flops"),
    (["--target-flops", "0.5"], "--target-flops"),
])
def test_trainer_refuses_bad_combinations(tmp_path, capsys, args, needle):
  from train import cli
  code = cli.main(["--out", str(tmp_path / "runs"), "--progress", "none",
                   *args])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1 and needle in err, err
  assert err.startswith("rda-train: "), err
  assert not (tmp_path / "runs").exists()


def test_auto_weighting_is_uniform_with_a_flops_target_only():
  from train import structure
  from train.config import Config
  base = dict(method="rda", structure="channel")
  assert structure.weighting(Config(**base)) == "size"
  assert structure.weighting(Config(**base, target_flops=0.5)) == "uniform"
  assert structure.weighting(Config(**base, target_flops=0.5,
                                    group_weighting="size")) == "size"
  # net-slim keeps --target-flops as its pruning target: no group target.
  assert structure.weighting(Config(method="rda", compare="rda,net-slim",
                                    structure="channel",
                                    target_flops=0.5)) == "size"
