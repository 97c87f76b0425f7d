"""Data parallelism (and optional parameter sharding) on ``jax.sharding``.

One ``Mesh`` over the devices with two axes: ``data`` and ``fsdp``. The
global batch is split over both. Parameters and the whole optimizer state
(RDA's running average and initial weights included) are replicated, or,
with ``--fsdp N``, each leaf is split along its largest axis divisible by
``N`` over the ``fsdp`` axis. The compiler inserts the gradient reduction
(an all-reduce, or a reduce-scatter under FSDP); RDA's update is elementwise
and adds no collective of its own (``tests/test_sharding.py``).

The training images are replicated on every device by default, so the
sampling of an epoch does not depend on the device count. With
``--data-sharding sharded`` (the default with several processes) each
device holds one row shard and samples its part of every batch from it
(``shard_rows``).
"""

from __future__ import annotations

import functools
import os
import re
import socket
import time
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from train._errors import UsageError

BATCH_AXES = ("data", "fsdp")


class Topology(NamedTuple):
  mesh: Mesh
  fsdp: int

  @property
  def size(self) -> int:
    return self.mesh.devices.size

  def batch(self, ndim: int, axis: int = 0) -> NamedSharding:
    """Sharding of an array whose ``axis`` is the batch."""
    spec = [None] * ndim
    spec[axis] = BATCH_AXES
    return NamedSharding(self.mesh, P(*spec))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def local_shards(self) -> list[int]:
    """Positions, in mesh order, of this process's devices: the row shards
    (``shard_rows``) it holds."""
    return [i for i, dev in enumerate(self.mesh.devices.flat)
            if dev.process_index == jax.process_index()]

  def params(self, tree: Any) -> Any:
    """Per-leaf shardings: replicated, or split over ``fsdp``."""
    def leaf(x):
      shape = np.shape(x)
      if self.fsdp > 1:
        # The largest divisible axis spreads the bytes most evenly.
        for ax in sorted(range(len(shape)), key=lambda a: -shape[a]):
          if shape[ax] % self.fsdp == 0:
            spec = [None] * len(shape)
            spec[ax] = "fsdp"
            return NamedSharding(self.mesh, P(*spec))
      return self.replicated()
    return jax.tree.map(leaf, tree)


def initialize(coordinator: Optional[str], num_processes: Optional[int],
               process_id: Optional[int]) -> None:
  """Joins a multi-process run through ``jax.distributed``.

  Flags win; otherwise ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
  and ``JAX_PROCESS_ID`` from the environment. With none of them set, a
  single process runs, unless ``RDA_DISTRIBUTED=auto`` asks JAX to detect
  the cluster itself (SLURM, Open MPI, Cloud TPU).
  """
  env = os.environ
  coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  if coordinator or num_processes or process_id is not None:
    if not (coordinator and num_processes and process_id is not None):
      raise UsageError("multi-process runs need --coordinator, "
                       "--num-processes and --process-id (or the "
                       "JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/"
                       "JAX_PROCESS_ID variables) together")
    if not 0 <= process_id < num_processes:
      raise UsageError(f"--process-id {process_id} is not in "
                       f"[0, {num_processes})")
    host, port = coordinator_address(coordinator)
    timeout = _coordinator_timeout()
    if process_id != 0:
      # jax.distributed aborts the whole process (a C++ check failure) when
      # the coordinator does not answer in time; wait for it here instead.
      _wait_for(host, port, timeout, coordinator)
    _cpu_collectives()
    jax.distributed.initialize(coordinator, num_processes, process_id,
                               initialization_timeout=timeout)
  elif env.get("RDA_DISTRIBUTED") == "auto":
    _cpu_collectives()
    jax.distributed.initialize()


_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):"
                      r"([0-9]{1,5})$")


def coordinator_address(address: str) -> tuple[str, int]:
  """``HOST:PORT`` (``[IPv6]:PORT`` too) as (host, port), or UsageError.

  A malformed address reaches JAX's C++ client otherwise, which crashes
  (a segmentation fault) or waits for ever.
  """
  m = _ADDRESS.match(address)
  if not m or not 1 <= int(m.group(2)) <= 65535:
    raise UsageError(f"--coordinator: expected HOST:PORT with a port in "
                     f"[1, 65535], got {address!r}")
  return m.group(1).strip("[]"), int(m.group(2))


def _coordinator_timeout() -> int:
  raw = os.environ.get("RDA_COORDINATOR_TIMEOUT", "300")
  try:
    timeout = int(raw)
  except ValueError:
    timeout = 0
  if timeout < 1:
    raise UsageError(f"RDA_COORDINATOR_TIMEOUT must be a whole number of "
                     f"seconds >= 1, got {raw!r}")
  return timeout


def _wait_for(host: str, port: int, timeout: int, address: str) -> None:
  """Returns once ``host:port`` accepts a connection; UsageError after
  ``timeout`` seconds (process 0 may start a little after the others)."""
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((host, port), timeout=2).close()
      return
    except OSError as e:
      reason = e.strerror or str(e) or type(e).__name__
    if time.monotonic() >= deadline:
      raise UsageError(
          f"--coordinator {address}: no answer after {timeout} s ({reason}); "
          "is process 0 running there? (RDA_COORDINATOR_TIMEOUT sets the wait)")
    time.sleep(0.5)


def _cpu_collectives() -> None:
  # Cross-process collectives on the CPU backend need gloo; GPU and TPU
  # backends ignore this option.
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError):  # an option this JAX does not have
    pass


def topology(devices: Optional[int] = None, fsdp: int = 1) -> Topology:
  """A mesh over the first ``devices`` devices (default: all of them)."""
  all_devices = jax.devices()
  n = len(all_devices) if devices is None else devices
  if not 1 <= n <= len(all_devices):
    raise UsageError(f"--devices {n}: {len(all_devices)} device(s) visible")
  if jax.process_count() > 1 and n != len(all_devices):
    raise UsageError("--devices cannot be used in a multi-process run")
  if fsdp < 1 or n % fsdp:
    raise UsageError(f"--fsdp {fsdp} must divide the device count {n}")
  grid = np.array(all_devices[:n]).reshape(n // fsdp, fsdp)
  return Topology(Mesh(grid, ("data", "fsdp")), fsdp)


def put_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Places a host array that every process holds in full."""
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def shard_rows(x: np.ndarray, topo: Topology, seed: int) -> jax.Array:
  """Splits the rows of ``x`` into ``topo.size`` equal shards, one per device.

  The rows are dealt by a permutation drawn from ``seed``, the same in every
  process; shard ``d`` goes to the ``d``-th device of the mesh (row-major
  over ``BATCH_AXES``, the order a batch is split in). The last
  ``len(x) % topo.size`` rows of the permutation are left out. Only the
  shards of this process's devices are copied to a device, so device memory
  holds ``len(x) / topo.size`` rows each instead of all of them.
  """
  deal = _deal(x.shape[0], topo.size, seed)
  d, m = deal.shape

  def local(index):
    rows = index[0]
    start = rows.start or 0
    stop = d * m if rows.stop is None else rows.stop
    return x[np.sort(deal.reshape(-1)[start:stop])]

  return jax.make_array_from_callback((d * m,) + x.shape[1:],
                                      topo.batch(x.ndim), local)


@functools.lru_cache(maxsize=4)
def _deal(n: int, shards: int, seed: int) -> np.ndarray:
  """(shards, n // shards) row indices: row d is shard d. Cached (read-only):
  images, labels and the statistics of one run share one permutation."""
  m = n // shards
  if m == 0:
    raise UsageError(f"{n} training images cannot be split over {shards} "
                     "devices")
  order = np.random.default_rng(seed).permutation(n)[:shards * m]
  order.setflags(write=False)
  return order.reshape(shards, m)


def local_rows(n: int, topo: Topology, seed: int) -> np.ndarray:
  """The rows that ``shard_rows`` gives this process's devices, sorted."""
  return np.sort(_deal(n, topo.size, seed)[topo.local_shards].reshape(-1))


def sum_over_processes(x: np.ndarray) -> np.ndarray:
  """``x`` summed over the processes of the run (a host-side all-reduce)."""
  if jax.process_count() == 1:
    return x
  return np.asarray(multihost_utils.process_allgather(x)).sum(axis=0)


def is_main() -> bool:
  """Process 0 writes the logs; every process takes part in checkpoints."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across the processes of the run (none with one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
