"""Proximal SGD (FOBOS), Algorithm 1 of He et al. (2020): the baseline."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from rda_optax import _common
from rda_optax._common import NO_PARAMS_MSG, at_step, check_hyper, guard
from rda_optax._group import GroupsOrFn, check_group_args, resolve_groups
from rda_optax._masks import MaskOrFn, resolve_mask
from rda_optax._prox import Prox


class ProxSGDState(NamedTuple):
  """State of :func:`prox_sgd`.

  Attributes:
    count: number of updates applied so far.
    trace: heavy-ball momentum buffer, float32 (or the params' dtype when
      wider); an empty tuple when ``momentum`` is the Python number 0.
  """
  count: jax.Array
  trace: optax.Updates


def prox_sgd(
    learning_rate: optax.ScalarOrSchedule,
    l1: optax.ScalarOrSchedule,
    *,
    momentum: float | jax.Array = 0.0,
    l1_mask: MaskOrFn = None,
    groups: GroupsOrFn = None,
    group_l1: Optional[optax.ScalarOrSchedule] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Proximal SGD, Algorithm 1 / equations (11)-(12).

  .. math::
    v_t &= \mu v_{t-1} + g_t \\
    w_{t+1/2} &= w_t - \alpha_t v_t \\
    w_{t+1} &= S_{\alpha_t \lambda}(w_{t+1/2})

  on leaves selected by ``l1_mask`` (default: ``ndim >= 2``); other leaves
  take the plain SGD step ``w_{t+1/2}``. With ``momentum = 0`` this is the
  paper's Algorithm 1. A weight is zeroed when ``|w_t - alpha_t g_t| <=
  alpha_t lambda`` (criterion 19): as ``alpha_t -> 0`` the threshold
  vanishes, which is why prox-SGD finds little sparsity. With momentum the
  buffer averages the gradient but not the l1 subgradient: at a fixed point
  ``v = g/(1 - mu)``, so the limit solves the problem with penalty
  ``(1 - mu) lambda`` (10x weaker at ``mu = 0.9``).

  With ``groups`` (as in :func:`rda_optax.rda`) the backward step is the
  sparse-group threshold on the grouped leaves, ``w_{t+1} =
  P_{alpha_t lambda, alpha_t lambda_G}(w_{t+1/2})``, and a group is zeroed
  when ``||S_{alpha_t lambda}(w_{t+1/2})_g|| <= alpha_t lambda_g``: the
  group form of criterion (19), whose threshold vanishes with ``alpha_t``.

  The step is computed in float32 and rounded once to the params' dtype;
  updates carry the params' dtype and a thresholded weight becomes exactly
  0.0, as in :func:`rda_optax.rda`. A NaN gradient makes the affected
  weights NaN, never 0.

  Composition: the update is ``w_{t+1} - w_t``. Before ``prox_sgd``, on the
  gradient, anything may go (``optax.chain(optax.add_decayed_weights(wd),
  prox_sgd(...))`` is SGD's weight decay; clipping likewise). After it
  only :func:`rda_optax.freeze_zeros`: anything that adds to or rescales
  the update moves the weights it thresholds off 0. ``optax.masked``,
  ``optax.partition``, ``optax.MultiSteps`` and ``optax.apply_if_finite``
  around it keep the zeros (README, "What composes with optax").

  Complex params are refused, as in :func:`rda_optax.rda` (the complex l1
  prox exists in :func:`rda_optax.soft_threshold`; the rest is not derived
  or tested for complex weights yet).

  Hyper-parameters: Python numbers and concrete arrays are checked here
  (``ValueError``). Traced values (``optax.inject_hyperparams`` under
  ``jit``) and schedule values cannot be; there ``learning_rate < 0``,
  ``l1 < 0`` or ``momentum`` outside ``[0, 1)`` make the update NaN (a
  schedule may reach ``learning_rate = 0``). The momentum buffer exists
  unless ``momentum`` is the Python number 0, so an injected momentum
  keeps it at every value.

  Args:
    learning_rate: ``alpha_t``, float, array or schedule; > 0 when concrete.
    l1: ``lambda`` >= 0, float, array or schedule.
    momentum: heavy-ball coefficient ``mu`` in [0, 1), float or array.
    l1_mask: as in :func:`rda_optax.rda`.
    groups: as in :func:`rda_optax.rda`.
    group_l1: as in :func:`rda_optax.rda` (``lambda_g = group_l1
      w_g sqrt(|g|)``); given exactly when ``groups`` is.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs
    ``params`` (extra keyword arguments are accepted and ignored).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rda_optax
    >>> params = {"kernel": jnp.array([[1.0, 0.1], [0.05, 2.0]])}
    >>> tx = rda_optax.prox_sgd(learning_rate=0.5, l1=0.4)
    >>> state = tx.init(params)
    >>> grads = {"kernel": jnp.array([[0.2, 0.1], [0.2, -1.0]])}
    >>> updates, state = tx.update(grads, state, params)
    >>> optax.apply_updates(params, updates)["kernel"]  # S_{0.2}(w - 0.5 g)
    Array([[0.7, 0. ],
           [0. , 2.3]], dtype=float32)
  """
  check_hyper("learning_rate", learning_rate, positive=True)
  check_hyper("l1", l1, positive=False)
  _common.check_range("momentum", momentum, 0.0, 1.0)
  check_group_args(groups, group_l1)
  # Decided on the argument's type, never on an array's value, so that the
  # state has one structure in init and update under inject_hyperparams.
  use_trace = not (isinstance(momentum, (int, float)) and momentum == 0)

  def init_fn(params):
    if _common.has_abstract_leaves(params):
      return jax.eval_shape(init_fn, params)
    _common.check_float_params(params, "prox_sgd")
    resolve_mask(l1_mask, params)
    if groups is not None:
      resolve_groups(groups, params)
    trace = (jax.tree.map(lambda p: jnp.zeros_like(p, dtype=_trace_dtype(p)),
                          params) if use_trace else ())
    return ProxSGDState(count=jnp.zeros([], jnp.int32), trace=trace)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    _common.check_float_params(params, "prox_sgd")
    lr = at_step(learning_rate, state.count)
    lr = guard(lr, lr >= 0)
    lam = at_step(l1, state.count)
    lam = guard(lam, lam >= 0)
    if use_trace:
      mu = jnp.asarray(momentum, jnp.float32)
      mu = guard(mu, (mu >= 0) & (mu < 1))
      trace = jax.tree.map(
          lambda g, v: (mu.astype(v.dtype) * v + g.astype(v.dtype)), updates,
          state.trace)
      direction = trace
    else:
      trace = ()
      direction = updates

    glam = None
    if groups is not None:
      glam = at_step(group_l1, state.count)
      glam = guard(glam, glam >= 0)
    prox = Prox.of(params, lam, l1_mask=l1_mask, groups=groups,
                   group_l1=glam)
    new_updates = _step(prox, direction, params, lr)
    return new_updates, ProxSGDState(
        count=optax.safe_increment(state.count), trace=trace)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _step(prox, direction, params, lr):
  """The update onto ``prox_{alpha lambda}(w - alpha d)``, rounded once to
  the params' dtype. Ungrouped leaves are thresholded one by one in their
  compute dtype; grouped ones jointly (a group spans leaves)."""
  treedef = jax.tree.structure(params)
  ws = treedef.flatten_up_to(params)
  ds = treedef.flatten_up_to(direction)
  if prox.kind in ("group", "sparse_group"):
    half = [w.astype(_common.compute_dtype(w.dtype))
            - lr * d.astype(_common.compute_dtype(w.dtype))
            for d, w in zip(ds, ws)]
    out = prox(half, lr)
  else:
    out = []
    for d, w, penalized in zip(ds, ws, prox.l1_flags):
      ct = _common.compute_dtype(w.dtype)
      half = w.astype(ct) - lr.astype(ct) * d.astype(ct)
      if penalized:
        one = Prox((True,), (None,), (lr * prox.l1).astype(ct))
        half = one([half])[0]
      out.append(half)
  return jax.tree.unflatten(
      treedef, [w_new.astype(w.dtype) - w for w_new, w in zip(out, ws)])


def _trace_dtype(p):
  return _common.compute_dtype(_common.leaf_dtype(p))
