"""Orbax checkpoints of the whole training state, one per saved epoch.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint as the
latest complete one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """Saves and restores ``TrainState`` pytrees under ``run_dir/checkpoints``."""

  def __init__(self, run_dir: Path, keep: int = 2):
    self._mngr = ocp.CheckpointManager(
        Path(run_dir).absolute() / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def save(self, epoch: int, state: Any) -> None:
    self._mngr.save(epoch, args=ocp.args.StandardSave(state), force=True)
    self._mngr.wait_until_finished()

  def latest(self) -> Optional[int]:
    return self._mngr.latest_step()

  def restore(self, epoch: int, like: Any) -> Any:
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._mngr.restore(epoch, args=ocp.args.StandardRestore(target))

  def restore_local(self, epoch: Optional[int] = None) -> Any:
    """Restores a checkpoint as it was saved, onto this process's first
    device, whatever topology wrote it (for inspection and export)."""
    epoch = self.latest() if epoch is None else epoch
    meta = self._mngr.item_metadata(epoch)
    meta = getattr(meta, "tree", meta)
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), meta)
    return self._mngr.restore(epoch, args=ocp.args.StandardRestore(target))

  def close(self) -> None:
    self._mngr.close()
