"""One rda-train process per run directory.

    with run_lock(run_dir):
      ...  # train, write metrics and checkpoints

The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``run_dir/.lock``. The
kernel drops it when the holder's file is closed, which includes the holder
being killed (SIGKILL, OOM), so a crashed run never leaves a stale lock: the
file may stay behind, but it only blocks while a live process holds it. A
holder that ends normally removes the file. The
holder's pid is written into the file so the refusal can name it.

flock locks belong to the open file, not to the process, so a second
``run_lock`` on the same directory is refused in the same process too. They
are advisory and, on NFS, depend on the server; on a local disk they are
exact.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from train._errors import UsageError

LOCK_NAME = ".lock"


def _holder(fd: int) -> str:
  """The pid written by the holder, or "unknown" (it may not have written
  it yet, or the file was written by hand)."""
  try:
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
  except OSError:
    return "unknown"
  return text if text.isdigit() else "unknown"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
  """Holds the exclusive lock of ``run_dir`` for the ``with`` block.

  Args:
    run_dir: an existing run directory.

  Yields:
    The lock file's path.

  Raises:
    UsageError: another process (or another ``run_lock`` in this one) holds
      the lock, or the lock file cannot be opened (the directory is missing
      or not writable); the message is one line naming ``run_dir``.
  """
  run_dir = Path(run_dir)
  path = run_dir / LOCK_NAME
  for _ in range(3):
    fd = _open_locked(run_dir, path)
    if fd is not None:
      break
  else:
    raise UsageError(f"{run_dir}: cannot lock {path}: it keeps being "
                     "replaced by another process")
  try:
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
      raise UsageError(f"{run_dir}: cannot write the lock file {path}: "
                       f"{e.strerror or e}") from None
    try:
      yield path
    finally:
      # Removed while still held, so no run directory keeps an empty .lock.
      # A process that opened the old file meanwhile notices that it was
      # unlinked once it gets the lock (_open_locked) and opens it afresh.
      with contextlib.suppress(OSError):
        os.unlink(path)
  finally:
    os.close(fd)


def _open_locked(run_dir: Path, path: Path) -> int | None:
  """Opens and locks ``path``; None when the file was removed or replaced
  between the open and the lock (its holder finished: try again)."""
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  except OSError as e:
    raise UsageError(f"{run_dir}: cannot open the lock file {path}: "
                     f"{e.strerror or e}") from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise UsageError(f"{run_dir} is in use by another rda-train process "
                       f"(pid {_holder(fd)})") from None
    except OSError as e:
      raise UsageError(f"{run_dir}: cannot lock {path}: "
                       f"{e.strerror or e}") from None
    try:
      same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      return fd
  except BaseException:
    os.close(fd)
    raise
  os.close(fd)
  return None
