"""RigL dynamic sparse training, Evci et al. (2020)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rda_optax import _allocation
from rda_optax import _common
from rda_optax._common import NO_PARAMS_MSG
from rda_optax._gmp import masked_update
from rda_optax._masks import MaskOrFn


class RigLState(NamedTuple):
  """State of :func:`rigl`.

  Attributes:
    count: number of updates applied so far; the 0-based step ``t``.
    masks: pytree like the params of bool arrays; ``False`` marks an inactive
      entry (held at exactly 0). Each pruned leaf has a fixed number of
      ``True`` entries; unpruned leaves are all ``True``.
    inner_state: the wrapped transformation's state.
  """
  count: jax.Array
  masks: Any
  inner_state: optax.OptState


def rigl(
    inner: optax.GradientTransformation,
    target_sparsity: float,
    *,
    t_end: int,
    delta_t: int = 100,
    alpha: float = 0.3,
    distribution: str = "erk",
    mask: MaskOrFn = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""RigL around ``inner``: Evci et al. (2020), Algorithm 1 and eq. (1).

  Sparse from the first step: ``init`` draws a random mask per pruned leaf
  with exactly ``k_l`` active entries (:func:`rda_optax.keep_counts` at
  ``target_sparsity``, ``"erk"`` by default as in the paper's best runs, or
  ``"uniform"``), and the first update sets every weight outside it to 0.
  Then at every step ``t`` with ``t mod delta_t = 0``, ``0 < t < t_end``,
  each pruned leaf drops the ``d_t`` active weights of smallest ``|w|`` and
  grows the ``d_t`` inactive ones (a weight dropped at this step included)
  with the largest dense gradient ``|g|``:

  .. math::
    d_t = \mathrm{round}(f_{decay}(t)\, k_l), \qquad
    f_{decay}(t) = \frac{\alpha}{2}\left(1 + \cos\frac{\pi t}{T_{end}}\right).

  ``g`` is the gradient this transformation receives. Since inactive
  weights are exactly 0 in the params, the gradient of the loss at them is
  the paper's "dense gradient" at no extra cost; it must be the raw
  gradient (put ``rigl`` outermost, around ``inner``). Weight decay,
  clipping and schedules go inside ``inner``; nothing may follow ``rigl``
  in a chain: an inactive entry's update is ``-w``, and anything that adds
  to or rescales updates after it (``add_decayed_weights``,
  ``clip_by_global_norm``, ``scale``) moves it off 0. Wrappers around it
  (``optax.masked``, ``optax.apply_if_finite``) keep the zeros.

  On an update step the active count per leaf stays ``k_l``; newly grown
  weights start at exactly 0 (they are 0 in the params after this step, and
  ``inner`` sees them from the next step with a zeroed momentum), dropped
  weights land on 0; a weight dropped and regrown at once keeps its value
  (the paper's default). Between update steps and after ``t_end`` the mask
  is fixed and ``inner`` runs on the active weights only (gradient, update
  and params-shaped state entries are masked as in :func:`rda_optax.gmp`).

  Which layers: every leaf selected by ``mask`` (default ``ndim >= 2``). The
  paper's ERK prunes every layer; with ``"uniform"`` it keeps the first layer
  dense (section 3): pass a ``mask`` with the first conv ``False`` for that.

  Args:
    inner: the update rule of the active weights, e.g. ``optax.sgd(lr,
      momentum=0.9)``.
    target_sparsity: fraction of inactive entries among the leaves of
      ``mask``, in ``[0, 1]``; fixed for the whole run.
    t_end: last optimizer step (exclusive) at which the mask may change;
      the paper uses 75% of the total steps. >= 1.
    delta_t: optimizer steps between mask updates (paper: 100). >= 1.
    alpha: initial drop fraction (paper: 0.3), in ``[0, 1]``.
    distribution: ``"erk"`` (default) or ``"uniform"``.
    mask: which leaves are sparse; pytree of bools or callable of the params,
      default :func:`rda_optax.default_l1_mask`.
    seed: int >= 0 for the initial random mask (drawn with numpy on the
      host, so every process of a multi-host run draws the same mask).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs
    ``params``; extra arguments go to ``inner``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, rda_optax
    >>> params = {"w": jnp.ones((10, 10)), "b": jnp.ones(10)}
    >>> tx = rda_optax.rigl(optax.sgd(0.1, momentum=0.9), 0.9, t_end=30,
    ...                     delta_t=10, distribution="uniform")
    >>> state, update = tx.init(params), jax.jit(tx.update)
    >>> for _ in range(20):
    ...   grads = jax.tree.map(jnp.ones_like, params)
    ...   updates, state = update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> int(state.masks["w"].sum()), int((params["w"] != 0).sum())
    (10, 10)

  References:
    Evci, Gale, Menick, Castro, Elsen, "Rigging the lottery: making all
    tickets winners", ICML 2020 (arXiv:1911.11134).
  """
  target = _allocation.check_target(target_sparsity, "target_sparsity")
  if distribution not in ("erk", "uniform"):
    raise ValueError(
        f"distribution must be 'erk' or 'uniform' for rigl, got "
        f"{distribution!r} (a global threshold needs trained magnitudes)")
  for name, v, lo in (("t_end", t_end, 1), ("delta_t", delta_t, 1),
                      ("seed", seed, 0)):
    _common.check_int(name, v, lo)
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
      0.0 <= alpha <= 1.0):
    raise ValueError(f"alpha must be a float in [0, 1], got {alpha!r}")
  inner = optax.with_extra_args_support(inner)

  def counts_of(params):
    return jax.tree.structure(params).flatten_up_to(
        _allocation.keep_counts(params, target, distribution, mask))

  def init_fn(params):
    flags = _allocation.leaf_flags(params, mask)
    counts = counts_of(params)
    leaves, treedef = jax.tree.flatten(params)
    # Drawn on the host: the masks are constants of the shapes and the seed,
    # and compiling a threefry draw plus a sort per leaf takes seconds on CPU.
    rng = np.random.default_rng(seed)
    masks = []
    for p, f, k in zip(leaves, flags, counts):
      shape = tuple(jnp.shape(p))
      m = np.ones(math.prod(shape), bool)
      if f:
        m[:] = False
        m[np.argsort(-rng.random(m.size), kind="stable")[:k]] = True
      masks.append(jnp.asarray(m.reshape(shape)))
    return RigLState(count=jnp.zeros([], jnp.int32),
                     masks=jax.tree.unflatten(treedef, masks),
                     inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    flags = _allocation.leaf_flags(params, mask)
    counts = counts_of(params)
    leaves, treedef = jax.tree.flatten(params)
    grads = treedef.flatten_up_to(updates)
    t = state.count
    is_update = (t > 0) & (t % delta_t == 0) & (t < t_end)
    frac = 0.5 * alpha * (1.0 + jnp.cos(math.pi * t.astype(jnp.float32) / t_end))
    old = treedef.flatten_up_to(state.masks)

    def drop_and_grow(old):
      new = list(old)
      for i, f in enumerate(flags):
        if not f:
          continue
        k = counts[i]
        d = jnp.floor(frac * k + 0.5).astype(jnp.int32)
        kept = _allocation.top_k_mask(
            jnp.where(old[i], jnp.abs(leaves[i]), -jnp.inf), k - d)
        # NaN gradients would rank below the kept entries' -inf and shrink
        # the count; treat them as 0.
        g = jnp.nan_to_num(jnp.abs(grads[i]).astype(jnp.float32), nan=0.0)
        grown = _allocation.top_k_mask(jnp.where(kept, -jnp.inf, g), d)
        new[i] = kept | grown
      return new

    new = jax.lax.cond(is_update, drop_and_grow, lambda o: list(o), old)
    new_masks = jax.tree.unflatten(treedef, new)
    out, inner_state = masked_update(inner, updates, state.inner_state, params,
                                     state.masks, new_masks, **extra_args)
    return out, RigLState(count=optax.safe_increment(t), masks=new_masks,
                          inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
