"""The defaults that differ by platform: --dtype auto and scanned epochs."""

import jax
import jax.numpy as jnp
import pytest

import _tiny_model  # tests/_tiny_model.py
from train import inputs
from train import engine
from train import run as run_lib
from train.config import Config


@pytest.mark.parametrize("platform,dtype,scan", [
    ("cpu", jnp.float32, False), ("gpu", jnp.bfloat16, True),
    ("cuda", jnp.bfloat16, True), ("rocm", jnp.bfloat16, True),
    ("tpu", jnp.bfloat16, True)])
def test_accelerator_defaults(platform, dtype, scan):
  """bfloat16 compute and one compiled scan per epoch on accelerators;
  float32 and a host loop of jitted steps on CPU (where XLA runs
  convolutions inside a loop ~30x slower, engine.make_train_epoch)."""
  assert engine.accelerator_defaults(platform) == (dtype, scan)


def test_dtype_auto_follows_the_backend(monkeypatch):
  """--dtype auto resolves through the backend JAX runs on; an explicit
  --dtype wins on any platform."""
  for platform, want in (("cpu", jnp.float32), ("tpu", jnp.bfloat16)):
    monkeypatch.setattr(jax, "default_backend", lambda p=platform: p)
    assert inputs.compute_dtype(Config(dtype="auto")) == want
    assert inputs.compute_dtype(Config(dtype="float32")) == jnp.float32
    assert inputs.compute_dtype(Config(dtype="bfloat16")) == jnp.bfloat16


def test_the_batch_reaches_the_model_in_the_compute_dtype():
  # The uint8 batch is normalized and cast once, before the model: bfloat16
  # compute means a bfloat16 input (the parameters stay float32).
  run, state = _tiny_model.epoch(steps=1, batch=4, n_images=8, scan=False,
                                 dtype=jnp.bfloat16)
  _tiny_model.Linear.dtypes.clear()
  run(state, jnp.zeros((8, 2, 2, 1), jnp.uint8), jnp.zeros(8, jnp.int32),
      jax.random.key(1))
  assert set(_tiny_model.Linear.dtypes) == {jnp.dtype(jnp.bfloat16)}
