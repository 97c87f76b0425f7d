"""Orbax checkpoints of the whole training state, one per saved epoch.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint as the
latest complete one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import jax
import orbax.checkpoint as ocp

from train._errors import UsageError


class CheckpointWriteError(UsageError):
  """A checkpoint could not be written (full disk, read-only file system).

  Earlier checkpoints are untouched: orbax renames a checkpoint into place
  only once it is complete.
  """


_REASONS = ("No space left on device", "Read-only file system",
            "Permission denied", "Disk quota exceeded")


def _reason(e: BaseException) -> str:
  text = str(e)
  for r in _REASONS:
    if r in text:
      return r
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
  return first[:200]


def _dir_bytes(path: Path) -> int:
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  """Keeps orbax's own reports of a failed write off the terminal: the
  failure reaches the user once, as CheckpointWriteError.

  Orbax's threads log the failure through absl, with tracebacks. Then
  tensorstore finishes the writes still in flight and reports each to
  orbax's event loop, closed by then: one "Event loop is closed" traceback
  per write, printed from C++ onto file descriptor 2, some of them after
  the error has surfaced. So while orbax writes, descriptor 2 goes to an
  in-memory file: replayed if the write succeeds, kept away from the
  terminal for good if it fails. Some of those late reports are Python
  tracebacks printed through ``sys.stderr`` from tensorstore's threads, so
  after a failure ``sys.stderr`` routes by thread (:class:`_MainThreadOnly`):
  the main thread's text, the error line among it, still shows.
  """
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    with _fd2_to_memory():
      yield
  finally:
    logger.setLevel(level)


@contextlib.contextmanager
def _fd2_to_memory() -> Iterator[None]:
  try:
    mem = os.memfd_create("rda-orbax-stderr", os.MFD_CLOEXEC)
  except (AttributeError, OSError):  # not Linux: no capture
    yield
    return
  with contextlib.suppress(Exception):
    sys.stderr.flush()
  saved = os.dup(2)
  os.dup2(mem, 2)
  ok = False
  try:
    yield
    ok = True
  finally:
    if ok:
      os.dup2(saved, 2)
      os.close(saved)
      os.lseek(mem, 0, os.SEEK_SET)
      while chunk := os.read(mem, 1 << 16):
        os.write(2, chunk)
      os.close(mem)
    else:
      # Descriptor 2 stays on `mem` for the threads still finishing.
      logging.getLogger("asyncio").setLevel(logging.CRITICAL)
      try:
        if sys.stderr is not None and sys.stderr.fileno() == 2:
          sys.stderr = _MainThreadOnly(
              os.fdopen(saved, "w", buffering=1, errors="backslashreplace"),
              sys.stderr)
      except (AttributeError, OSError, ValueError):
        pass  # sys.stderr is not the terminal (redirected by the caller)


class _MainThreadOnly(io.TextIOBase):
  """``sys.stderr`` after a failed write: text from the main thread goes to
  the terminal, text from any other thread to the capture.

  Tensorstore's writes that were in flight keep finishing for a while and
  print one "Event loop is closed" traceback each, from its own threads;
  a race decided whether they landed before or after the error line.
  """

  def __init__(self, terminal: io.TextIOBase, captured: io.TextIOBase):
    self._terminal, self._captured = terminal, captured

  def _target(self) -> io.TextIOBase:
    main = threading.current_thread() is threading.main_thread()
    return self._terminal if main else self._captured

  def write(self, text: str) -> int:
    return self._target().write(text)

  def flush(self) -> None:
    self._target().flush()

  def fileno(self) -> int:
    return self._terminal.fileno()

  def isatty(self) -> bool:
    return self._terminal.isatty()

  def writable(self) -> bool:
    return True

  @property
  def encoding(self) -> str:
    return self._terminal.encoding


class Checkpoints:
  """Saves and restores ``TrainState`` pytrees under ``run_dir/checkpoints``."""

  def __init__(self, run_dir: Path, keep: int = 2):
    self._dir = Path(run_dir).absolute() / "checkpoints"
    self._failed = False
    try:
      with _quiet_orbax():
        self._mngr = ocp.CheckpointManager(
            self._dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers=ocp.StandardCheckpointHandler())
    except (ValueError, OSError) as e:
      raise CheckpointWriteError(
          f"cannot create {self._dir}: {_reason(e)}") from None

  def save(self, epoch: int, state: Any) -> None:
    """Writes ``state`` as checkpoint ``epoch`` and waits until it is complete.

    Raises:
      CheckpointWriteError: the write failed; the checkpoints written before
        are intact and ``latest()`` still names the newest of them.
    """
    self._check_room(epoch)
    try:
      with _quiet_orbax():
        self._mngr.save(epoch, args=ocp.args.StandardSave(state), force=True)
        self._mngr.wait_until_finished()
    except (ValueError, OSError) as e:
      self._failed = True
      try:
        last = self.latest()
      except (ValueError, OSError):
        last = None
      kept = ("no earlier checkpoint exists" if last is None else
              f"checkpoint {last} and those before it are intact")
      raise CheckpointWriteError(
          f"cannot write checkpoint {epoch} in {self._dir}: {_reason(e)}; "
          f"{kept}") from None

  def _check_room(self, epoch: int) -> None:
    # The previous checkpoint's size on disk predicts the next one's (same
    # tree; orbax compresses, so the in-memory size would overstate it).
    # Refusing up front keeps a full disk from starting a write at all.
    last = self.latest()
    if last is None or last == epoch:
      return
    try:
      need = _dir_bytes(self._dir / str(last))
      free = shutil.disk_usage(self._dir).free
    except OSError:
      return  # let the write itself report what is wrong
    if free < need:
      self._failed = True
      raise CheckpointWriteError(
          f"cannot write checkpoint {epoch} in {self._dir}: No space left on "
          f"device (about {need / 2**20:.1f} MiB needed, "
          f"{free / 2**20:.1f} MiB free); checkpoint {last} and those before "
          "it are intact")

  def latest(self) -> Optional[int]:
    return self._mngr.latest_step()

  def restore(self, epoch: int, like: Any) -> Any:
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._mngr.restore(epoch, args=ocp.args.StandardRestore(target))

  def restore_newest_intact(self, like: Any, note: Callable[[str], None],
                            like_for: Optional[Callable[[int], Any]] = None
                            ) -> tuple[Optional[int], Any]:
    """Restores the newest checkpoint that reads back whole.

    A checkpoint can be damaged after it was complete (a file deleted or
    truncated by hand, a disk error): orbax then fails deep inside
    tensorstore. Each damaged checkpoint is moved out of the way, to
    ``run_dir/checkpoints-damaged/EPOCH`` (kept for inspection; a later
    save of that epoch must not meet it), and the next older one is tried.

    Args:
      like: a state of the saved structure, for shapes and shardings.
      note: called with one line when a damaged checkpoint was passed over.
      like_for: epoch -> ``like`` of that checkpoint, where the structure
        changed during the run (the switch to the slim model).

    Returns:
      (epoch, state), or (None, like) when there is no checkpoint at all.

    Raises:
      UsageError: there are checkpoints, and none of them is intact.
    """
    damaged: list[str] = []
    for epoch in sorted(self._mngr.all_steps(), reverse=True):
      try:
        with _quiet_orbax():
          state = self.restore(epoch, like if like_for is None
                               else like_for(epoch))
      except Exception as e:  # pylint: disable=broad-except
        # Orbax and tensorstore raise ValueError, OSError and bare
        # Exception alike for a missing or cut file.
        damaged.append(f"{epoch} ({_reason(e)[:80]})")
        self._set_aside(epoch)
        continue
      if damaged:
        note(f"checkpoint {damaged[0]} in {self._dir} is damaged; moved to "
             f"{self._dir}-damaged and resuming from checkpoint {epoch}")
      return epoch, state
    if damaged:
      raise UsageError(
          f"no intact checkpoint in {self._dir}: checkpoint "
          f"{', '.join(damaged)} damaged (moved to {self._dir}-damaged); "
          "start the run again")
    return None, like

  def _set_aside(self, epoch: int) -> None:
    aside = Path(f"{self._dir}-damaged")
    try:
      aside.mkdir(exist_ok=True)
      target = aside / str(epoch)
      if target.exists():
        shutil.rmtree(target)
      os.replace(self._dir / str(epoch), target)
      self._mngr.reload()
    except OSError as e:
      raise CheckpointWriteError(
          f"checkpoint {epoch} in {self._dir} is damaged and cannot be moved "
          f"to {aside}: {e.strerror or e}") from None

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
    try:
      with _quiet_orbax():
        self._mngr.close()
    except (ValueError, OSError):
      if not self._failed:  # already reported by save()
        raise
