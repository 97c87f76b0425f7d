import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import rda_optax


def test_known_values():
  x = jnp.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
  out = rda_optax.soft_threshold(x, 1.0)
  np.testing.assert_array_equal(out, [-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0])
  # Zeros are +0.0: a -0.0 would print oddly and differ bitwise in exports.
  assert not np.any(np.signbit(np.asarray(out)[1:6]))


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 50),
                  # XLA flushes subnormals to zero, so S_0(1e-45) is 0.
                  elements=st.floats(-1e3, 1e3, width=32,
                                     allow_subnormal=False)),
       st.floats(0, 100, width=32))
def test_matches_definition(x, tau):
  out = np.asarray(rda_optax.soft_threshold(jnp.asarray(x), tau))
  ref = np.sign(x) * np.maximum(np.abs(x) - np.float32(tau), 0)
  np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)
  assert np.all((out == 0) == (np.abs(x) <= np.float32(tau)))


def test_non_finite_in_non_finite_out():
  x = jnp.array([jnp.nan, jnp.inf, -jnp.inf, 0.5, 0.0])
  out = np.asarray(rda_optax.soft_threshold(x, 1.0))
  assert np.isnan(out[0])  # never the |x| <= tau branch's 0
  assert out[1] == np.inf and out[2] == -np.inf
  np.testing.assert_array_equal(out[3:], 0.0)
  # A NaN threshold (traced: a concrete one is refused) poisons every
  # entry, zeros included.
  out = jax.jit(rda_optax.soft_threshold)(x, jnp.nan)
  assert np.all(np.isnan(np.asarray(out)))
  with pytest.raises(ValueError, match="finite"):
    rda_optax.soft_threshold(x, float("nan"))


def test_negative_threshold():
  x = jnp.array([1.0, -2.0])
  for tau in (-0.5, jnp.float32(-0.5), jnp.array([0.1, -0.1])):
    with pytest.raises(ValueError, match="tau"):
      rda_optax.soft_threshold(x, tau)
  # Traced, it cannot be checked: NaN, so the weights cannot silently grow.
  out = jax.jit(rda_optax.soft_threshold)(x, jnp.float32(-0.5))
  assert np.all(np.isnan(np.asarray(out)))
  np.testing.assert_array_equal(jax.jit(rda_optax.soft_threshold)(x, 0.5),
                                [0.5, -1.5])
