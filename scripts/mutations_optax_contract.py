"""Mutation check of the optax-contract tests (issue 12): each mutation
re-introduces one defect in rda_optax, the named tests must fail, and the
file is restored with git. Needs a clean worktree.

  python scripts/mutations_optax_contract.py
"""
import subprocess
import sys
from pathlib import Path

R = str(Path(__file__).resolve().parents[1]) + "/"
PY = sys.executable
muts = [
 ("rda_optax/_soft_threshold.py", "  return jnp.where(jnp.abs(x) <= tau, jnp.zeros_like(x),\n                   x - jnp.sign(x) * tau)", "  return jnp.where(jnp.abs(x) > tau, x - jnp.sign(x) * tau, jnp.zeros_like(x))",
  "tests/test_soft_threshold.py::test_non_finite_in_non_finite_out tests/test_rda.py::test_nan_gradient_never_zeroes_weights tests/test_prox_sgd.py::test_nan_gradient_gives_nan_not_zero"),
 ("rda_optax/_soft_threshold.py", "  return shrink(x, jnp.where(tau >= 0, tau, jnp.nan))", "  return shrink(x, tau)", "tests/test_soft_threshold.py::test_negative_threshold"),
 ("rda_optax/_soft_threshold.py", '  check_hyper("soft_threshold: tau", tau, positive=False)\n', "", "tests/test_soft_threshold.py::test_negative_threshold"),
 ("rda_optax/_rda.py", "    b = guard(g_t / jnp.sqrt(t), g_t > 0)", "    b = g_t / jnp.sqrt(t)", "tests/test_rda.py::test_traced_bad_hyperparameter_gives_nan"),
 ("rda_optax/_rda.py", "    l2_t = guard(l2_t, l2_t >= 0)", "", "tests/test_rda.py::test_traced_bad_hyperparameter_gives_nan"),
 ("rda_optax/_rda.py", '    _common.check_float_params(params, "rda")\n    mask = resolve_mask(l1_mask, params)\n    _warn', '    mask = resolve_mask(l1_mask, params)\n    _warn', "tests/test_rda.py::test_integer_params_refused"),
 ("rda_optax/_rda.py", '  state_dtype = _common.check_state_dtype(state_dtype, "rda")', '  state_dtype = None if state_dtype is None else jnp.dtype(state_dtype)', "tests/test_rda.py::test_bad_array_hyperparameters"),
 ("rda_optax/_common.py", "  elif isinstance(value, (jax.Array, np.ndarray, np.generic)):", "  elif False:", "tests/test_rda.py::test_bad_array_hyperparameters"),
 ("rda_optax/_rda.py", "        lambda p, m: jnp.array(p, copy=True) if keeps_w1(m)", "        lambda p, m: jnp.array(p, copy=True) if True", "tests/test_rda.py::test_state_keeps_w1_only_where_read"),
 ("rda_optax/_rda.py", "      new_updates.append(w_new.astype(w.dtype) - w)", "      new_updates.append(w_new - w.astype(w_new.dtype))", "tests/test_rda.py::test_low_precision_params"),
 ("rda_optax/_rda.py", "      gbar = (avg + (g.astype(ct) - avg) / t.astype(ct)).astype(sd)", "      gbar = avg + (g.astype(ct) - avg) / t", "tests/test_rda.py::test_low_precision_params"),
 ("rda_optax/_prox_sgd.py", "      mu = guard(mu, (mu >= 0) & (mu < 1))", "", "tests/test_prox_sgd.py::test_injected_momentum_under_jit"),
 ("rda_optax/_prox_sgd.py", "  use_trace = not (isinstance(momentum, (int, float)) and momentum == 0)", "  use_trace = bool(momentum)", "tests/test_prox_sgd.py::test_injected_momentum_under_jit"),
 ("rda_optax/_rda.py", "    gbar = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=gbar_dtype(p)),", "    gbar = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), gbar_dtype(p)),", "tests/test_conformance.py::test_sharding_on_8_simulated_devices"),
 ("rda_optax/_rda.py", '    z = -gbar if center == "zero" else b * w1 - gbar', '    z = -gbar if center == "zero" else w1 - gbar', "tests/test_conformance.py::test_each_step"),
 ("rda_optax/_masks.py", "  if isinstance(params, optax.MaskedNode):\n    return params\n", "", "tests/test_conformance.py::test_masked_and_partition_with_explicit_masks"),
 ("rda_optax/_rda.py", "  def update_fn(updates, state, params=None, **extra_args):", "  def update_fn(updates, state, params=None):", "tests/test_conformance.py::test_extra_args"),
 ("rda_optax/_rda.py", "    if _common.has_abstract_leaves(params):\n      return jax.eval_shape(init_fn, params)\n    _common.check_float_params(params, \"rda\")", "    _common.check_float_params(params, \"rda\")", "tests/test_conformance.py::test_abstract_init"),
 ("rda_optax/_asr.py", "  if is_tracer(start_step):\n    return", "  if is_tracer(start_step) or not isinstance(start_step, int):\n    return", "tests/test_asr.py::test_bad_start_step"),
]
subprocess.run(["git", "diff", "--quiet"], cwd=R, check=True)
for f, old, new, tests in muts:
  src = open(R + f).read()
  assert src.count(old) == 1, (f, old)
  open(R + f, "w").write(src.replace(old, new))
  r = subprocess.run(f"PYTHONPATH=. timeout 600 {PY} -m pytest -q -x -p no:cacheprovider {tests}",
                     shell=True, cwd=R, capture_output=True, text=True)
  subprocess.run(["git", "checkout", f], cwd=R, check=True, capture_output=True)
  last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-200:]
  print("CAUGHT" if r.returncode else "MISSED", f, "|", new[:50].replace("\n", " "), "|", last)
