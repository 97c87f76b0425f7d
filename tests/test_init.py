import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rda_optax


@pytest.mark.parametrize("shape,fan_in", [((3, 3, 16, 32), 144), ((256, 10), 256)])
@pytest.mark.parametrize("s", [2.0, 10.0])
def test_scaled_uniform_bounds_and_std(shape, fan_in, s):
  w = rda_optax.scaled_uniform(s)(jax.random.key(0), shape, jnp.float32)
  c = s * np.sqrt(3.0 / fan_in)
  w = np.asarray(w)
  assert np.abs(w).max() <= c
  assert np.abs(w).max() > 0.95 * c  # uniform fills the interval
  np.testing.assert_allclose(w.std(), s / np.sqrt(fan_in), rtol=0.05)


def test_rescale_only_masked_leaves():
  params = {"k": jnp.ones((8, 8, 4, 4)), "b": jnp.ones(4)}
  out = rda_optax.rescale(params, jax.random.key(1), 5.0)
  np.testing.assert_array_equal(out["b"], params["b"])
  assert np.abs(np.asarray(out["k"])).max() <= 5.0 * np.sqrt(3 / 256)
  assert out["k"].dtype == params["k"].dtype


@pytest.mark.parametrize("s", [0.0, -1.0, float("inf")])
def test_bad_scale(s):
  with pytest.raises(ValueError, match="scale"):
    rda_optax.scaled_uniform(s)
  with pytest.raises(ValueError, match="scale"):
    rda_optax.rescale({"k": jnp.ones((2, 2))}, jax.random.key(0), s)
