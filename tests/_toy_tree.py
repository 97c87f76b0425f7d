"""A small params tree and its seeded gradients, shared by the GMP and RigL
tests: a dense kernel, a conv kernel and a bias."""

import jax
import jax.numpy as jnp
import numpy as np


def params(seed=0):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(20, 25)), jnp.float32),
          "v": jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}


def grads(tree, i):
  rng = np.random.default_rng(1000 + i)
  return jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), tree)
