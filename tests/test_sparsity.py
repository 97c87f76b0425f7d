import jax
import jax.numpy as jnp
import pytest

import rda_optax


def test_global_and_per_leaf():
  params = {"conv": {"kernel": jnp.array([[0.0, 1.0], [0.0, 0.0]])},
            "dense": {"kernel": jnp.zeros((2, 3)).at[0, 0].set(1.0),
                      "bias": jnp.zeros(3)}}
  # Kernels only: 3 + 5 zeros of 4 + 6.
  assert float(rda_optax.sparsity(params)) == pytest.approx(0.8)
  rows = rda_optax.sparsity_report(params)
  assert [(r.zeros, r.size) for r in rows] == [(3, 4), (5, 6)]
  assert rows[0].path == "['conv']['kernel']"
  assert rows[1].sparsity == pytest.approx(5 / 6)
  all_leaves = lambda p: jax.tree.map(lambda _: True, p)
  assert float(rda_optax.sparsity(params, all_leaves)) == pytest.approx(11 / 13)


def test_jittable_and_empty():
  params = {"b": jnp.zeros(3)}
  assert float(jax.jit(rda_optax.sparsity)(params)) == 0.0
  assert rda_optax.sparsity_report(params) == []


@pytest.mark.parametrize("fn", [rda_optax.sparsity,
                                rda_optax.sparsity_report])
def test_mask_mismatch(fn):
  # The message names the caller's argument, ``mask``, and both structures.
  with pytest.raises(ValueError, match=r"^mask: tree structure "
                     r"PyTreeDef\(\{'b': \*\}\) does not match the params' "
                     r"structure PyTreeDef\(\{'a': \*\}\)$"):
    fn({"a": jnp.ones((2, 2))}, {"b": True})
