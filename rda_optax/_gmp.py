"""Gradual magnitude pruning (GMP), Zhu & Gupta (2017)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rda_optax import _allocation
from rda_optax import _common
from rda_optax._common import NO_PARAMS_MSG
from rda_optax._masks import MaskOrFn


class GMPState(NamedTuple):
  """State of :func:`gmp`.

  Attributes:
    count: number of updates applied so far; the 0-based step ``t`` of the
      schedule.
    masks: pytree like the params of bool arrays; ``False`` marks a pruned
      entry (held at exactly 0). Unpruned leaves are all ``True``.
    inner_state: the wrapped transformation's state.
  """
  count: jax.Array
  masks: Any
  inner_state: optax.OptState


def gmp(
    inner: optax.GradientTransformation,
    target_sparsity: float,
    *,
    begin_step: int,
    end_step: int,
    delta_t: int = 100,
    initial_sparsity: float = 0.0,
    distribution: str = "uniform",
    mask: MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Gradual magnitude pruning around ``inner``: Zhu & Gupta (2017), eq. (1).

  Every ``delta_t`` optimizer steps from ``t_0 = begin_step`` to ``t_0 + n
  delta_t = end_step`` the pruned leaves are re-masked by magnitude to the
  sparsity

  .. math::
    s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{n\,\Delta t}\right)^3,
    \qquad t \in \{t_0, t_0 + \Delta t, \dots, t_0 + n\Delta t\},

  from ``s_i = initial_sparsity`` to ``s_f = target_sparsity``; after
  ``end_step`` training goes on at the final mask. At a pruning step each
  pruned leaf keeps its ``k`` largest ``|w|`` among the entries still alive
  (a pruned weight never returns), with ``k`` from
  :func:`rda_optax.keep_counts` at ``s_t``: ``"uniform"`` (every leaf at
  ``s_t``, Zhu & Gupta's choice), ``"erk"`` (Erdos-Renyi-Kernel budgets at
  ``s_t``) or ``"global"`` (one threshold across leaves). The step's update is
  applied in the same call, so the iterate returned at ``t_0 + j delta_t``
  already has sparsity ``s_t``.

  Masking: the gradient ``inner`` sees is zero at pruned entries, the entries
  of ``inner``'s state that are shaped like the params (momentum, Adam's
  moments) are zeroed there, and the returned update is ``-w`` there, so a
  pruned weight lands on exactly 0 and its momentum can never move it.
  ``optax.apply_updates`` of a pruned entry gives ``w - w = 0``.

  Which layers: Zhu & Gupta apply one schedule to the layers they prune;
  RigL (Evci et al. 2020, section 3) keeps the first layer dense under the
  uniform distribution while ERK prunes every layer. Here every leaf selected
  by ``mask`` is pruned (default: ``ndim >= 2``, i.e. all conv and dense
  kernels, first conv and classifier included); pass a ``mask`` with the
  first conv ``False`` to keep it dense.

  Place it outermost, around the whole update rule, e.g.
  ``gmp(optax.sgd(lr, momentum=0.9), 0.9, begin_step=..., end_step=...)``;
  ``optax.apply_if_finite(gmp(...))`` skips a non-finite step and leaves
  ``count`` (hence the schedule) where it was. Weight decay, clipping and
  schedules go inside ``inner`` (``gmp(optax.chain(
  optax.add_decayed_weights(wd), optax.sgd(lr)), ...)``). Nothing may
  follow it in a chain: a pruned entry's update is ``-w``, so anything
  that adds to or rescales updates after it (``add_decayed_weights``,
  ``clip_by_global_norm``, ``scale``) moves every pruned weight off 0.
  ``optax.masked``, ``optax.partition``, ``optax.MultiSteps`` and
  ``optax.apply_if_finite`` around it keep the zeros (README, "What
  composes with optax").

  Args:
    inner: the update rule of the surviving weights, e.g. ``optax.sgd``.
    target_sparsity: ``s_f``, the final fraction of pruned entries among the
      leaves of ``mask``, in ``[0, 1]``.
    begin_step: ``t_0``, the first pruning step (0-based optimizer step).
    end_step: ``t_0 + n delta_t``, the last pruning step; ``end_step -
      begin_step`` must be a multiple of ``delta_t`` (``0``: one-shot pruning
      to ``s_f`` at ``begin_step``).
    delta_t: optimizer steps between pruning steps, >= 1.
    initial_sparsity: ``s_i``, in ``[0, target_sparsity]``.
    distribution: ``"uniform"``, ``"erk"`` or ``"global"``.
    mask: which leaves are pruned; pytree of bools or callable of the params,
      default :func:`rda_optax.default_l1_mask`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs
    ``params``; extra arguments go to ``inner``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, rda_optax
    >>> params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4), "b": jnp.ones(4)}
    >>> tx = rda_optax.gmp(optax.sgd(0.0, momentum=0.9), 0.75,
    ...                    begin_step=0, end_step=2, delta_t=1)
    >>> state, update = tx.init(params), jax.jit(tx.update)
    >>> for _ in range(3):
    ...   grads = jax.tree.map(jnp.ones_like, params)
    ...   updates, state = update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> int((params["w"] != 0).sum()), int((params["b"] != 0).sum())
    (4, 4)

  References:
    Zhu, Gupta, "To prune, or not to prune: exploring the efficacy of pruning
    for model compression", ICLR workshop 2018 (arXiv:1710.01878);
    Evci, Gale, Menick, Castro, Elsen, "Rigging the lottery: making all
    tickets winners", ICML 2020.
  """
  s_f = _allocation.check_target(target_sparsity, "target_sparsity")
  s_i = _allocation.check_target(initial_sparsity, "initial_sparsity")
  if s_i > s_f:
    raise ValueError(
        f"initial_sparsity {s_i} must be <= target_sparsity {s_f}")
  _allocation.check_distribution(distribution)
  for name, v, lo in (("begin_step", begin_step, 0), ("end_step", end_step, 0),
                      ("delta_t", delta_t, 1)):
    _common.check_int(name, v, lo)
  if end_step < begin_step or (end_step - begin_step) % delta_t:
    raise ValueError(
        f"end_step - begin_step must be a multiple of delta_t >= 0, got "
        f"begin_step={begin_step}, end_step={end_step}, delta_t={delta_t}")
  n = (end_step - begin_step) // delta_t
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    _allocation.leaf_flags(params, mask)
    masks = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
    return GMPState(count=jnp.zeros([], jnp.int32), masks=masks,
                    inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    flags = _allocation.leaf_flags(params, mask)
    leaves, treedef = jax.tree.flatten(params)
    pruned = [i for i, f in enumerate(flags) if f]
    # The pruning steps are static, so their per-leaf budgets are a constant
    # table built at trace time; only the row index is traced.
    if distribution == "global":
      # One budget per step; the split across leaves comes from magnitudes.
      size = sum(int(np.prod(jnp.shape(leaves[i]))) for i in pruned)
      totals = np.array([round(size * (1.0 - schedule_value(j)))
                         for j in range(n + 1)], np.int32)
    else:
      table = np.array(
          [treedef.flatten_up_to(_allocation.keep_counts(
              params, schedule_value(j), distribution, mask))
           for j in range(n + 1)], np.int32).reshape(n + 1, len(leaves))
    t = state.count
    since = t - begin_step
    is_prune = (since >= 0) & (since % delta_t == 0) & (since <= n * delta_t)
    row = jnp.clip(since // delta_t, 0, n)
    old = treedef.flatten_up_to(state.masks)

    def prune(old):
      # Dead entries score below any |w| so they stay dead.
      scores = [jnp.where(old[i], jnp.abs(leaves[i]), -1.0) for i in pruned]
      if distribution == "global":
        kept = _allocation.global_top_k_masks(scores, jnp.asarray(totals)[row])
      else:
        kept = [_allocation.top_k_mask(s, jnp.asarray(table[:, i])[row])
                for s, i in zip(scores, pruned)]
      new = list(old)
      for i, m in zip(pruned, kept):
        new[i] = m
      return new

    new = jax.lax.cond(is_prune, prune, lambda o: list(o), old)
    new_masks = jax.tree.unflatten(treedef, new)
    out, inner_state = masked_update(inner, updates, state.inner_state, params,
                                     new_masks, new_masks, **extra_args)
    return out, GMPState(count=optax.safe_increment(t), masks=new_masks,
                         inner_state=inner_state)

  def schedule_value(j):
    if n == 0:
      return s_f
    return s_f + (s_i - s_f) * (1.0 - j / n) ** 3

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def masked_update(inner, updates, inner_state, params, old_masks, new_masks,
                  **extra_args):
  """Runs ``inner`` on the entries alive in both masks; the rest go to 0.

  ``live = old & new``. Gradients and params-shaped state entries outside
  ``live`` are zeroed before ``inner`` runs, and the returned update is
  ``-w`` outside ``live``: entries just pruned or dead land on 0, entries
  just grown (in ``new`` only) stay at 0 for this step and start their
  first ``inner`` step from a zero state.
  """
  live = jax.tree.map(jnp.logical_and, old_masks, new_masks)
  grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)),
                       updates, live)
  inner_state = optax.tree_utils.tree_map_params(
      inner, _zero_outside, inner_state, live)
  out, inner_state = inner.update(grads, inner_state, params, **extra_args)
  out = jax.tree.map(
      lambda u, p, m: jnp.where(m, u, -jnp.asarray(p).astype(u.dtype)),
      out, params, live)
  return out, inner_state


def _zero_outside(s, m):
  # Only state entries shaped like their param (momentum, Adam moments);
  # factored or scalar statistics are left alone.
  if not hasattr(s, "shape") or jnp.shape(s) != jnp.shape(m):
    return s
  return jnp.where(m, s, jnp.zeros_like(s))
