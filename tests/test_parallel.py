"""The mesh and multi-process helpers of ``train.parallel``, in-process.

The multi-device and multi-process runs themselves are in test_scaling.py
and test_multiprocess.py (subprocesses); these check the pieces on one
device, where mutation testing can see them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _tiny_model  # tests/_tiny_model.py
from train import parallel
from train._errors import UsageError


def test_fsdp_splits_the_largest_divisible_axis():
  # On a one-device mesh too: which axis a leaf is split over.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1),
                           ("data", "fsdp"))
  tree = {"a": np.zeros((6, 4)), "b": np.zeros((3, 8)), "c": np.zeros((5, 3)),
          "d": np.zeros(())}
  specs = {k: tuple(s.spec) for k, s in
           parallel.Topology(mesh, 2).params(tree).items()}
  assert specs == {"a": ("fsdp", None), "b": (None, "fsdp"), "c": (),
                   "d": ()}
  assert all(tuple(s.spec) == () for s in
             parallel.Topology(mesh, 1).params(tree).values())


def test_shard_rows_hold_what_local_rows_names():
  # One device holds every row (in a whole number of shards); which rows a
  # process reads from disk (local_rows) is what its devices hold.
  topo = parallel.topology(1)
  x = np.arange(30).reshape(10, 3)
  arr = parallel.shard_rows(x, topo, seed=5)
  rows = parallel.local_rows(10, topo, seed=5)
  np.testing.assert_array_equal(rows, np.arange(10))
  np.testing.assert_array_equal(np.asarray(arr), x[rows])
  assert arr.sharding == topo.batch(2)


@pytest.mark.parametrize("env", [
    {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"},
    {"JAX_NUM_PROCESSES": "2"},
    {"JAX_PROCESS_ID": "0"},
])
def test_a_launch_from_the_environment_needs_all_three(monkeypatch, env):
  # One variable alone is a half-configured launch: refused, with nothing
  # started, rather than a silent single-process run.
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
            "RDA_DISTRIBUTED"):
    monkeypatch.delenv(k, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  with pytest.raises(UsageError, match=r"^multi-process runs need "
                     r"--coordinator, --num-processes and --process-id \(or "
                     r"the JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/"
                     r"JAX_PROCESS_ID variables\) together$"):
    parallel.initialize(None, None, None)


def test_process_id_out_of_range_is_refused(monkeypatch):
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  with pytest.raises(UsageError, match=r"^--process-id 2 is not in \[0, 2\)$"):
    parallel.initialize("127.0.0.1:1", 2, None)


def test_devices_flag_is_refused_in_a_multi_process_run(monkeypatch):
  # Two processes of one device each, seen from process 0 (faked: a real
  # one is test_multiprocess.py's).
  d = jax.devices()[0]
  monkeypatch.setattr(jax, "devices", lambda: [d, d])
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(UsageError, match="^--devices cannot be used in a "
                     "multi-process run$"):
    parallel.topology(1)


def test_sharded_and_replicated_epochs_see_every_row_once():
  # A frozen linear model (lr 0) and steps x batch = n: the epoch's loss and
  # accuracy are those of all n rows in any order, so the shard_map gather
  # of the sharded layout must give what the replicated one gives.
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(16, 2, 2, 1), dtype=np.uint8)
  y = rng.integers(0, 10, size=16).astype(np.int32)
  topo = parallel.topology(1)
  out = {}
  for sharded in (False, True):
    run, state = _tiny_model.epoch(lr=0.0, steps=4, batch=4, n_images=16,
                                   scan=True, topo=topo, sharded_data=sharded)
    images = parallel.shard_rows(x, topo, 3) if sharded else jnp.asarray(x)
    labels = parallel.shard_rows(y, topo, 3) if sharded else jnp.asarray(y)
    state, m = run(state, images, labels, jax.random.key(1))
    assert float(state.batch_stats["rows"]) == 16
    out[sharded] = m
  assert float(out[True]["train_top1"]) == float(out[False]["train_top1"])
  np.testing.assert_allclose(float(out[True]["loss"]),
                             float(out[False]["loss"]), rtol=1e-5)
