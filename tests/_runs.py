"""Run directories for resume tests: a finished run cut back to an epoch."""

import shutil
from pathlib import Path

import jax

from train import cli
from train.checkpoint import Checkpoints


def resume_from(full: Path, cut: Path, epoch: int) -> Path:
  """Copies the finished run ``full`` to ``cut`` as it was when killed after
  ``epoch`` (later checkpoints, the summary and later metrics rows gone),
  checks that its newest checkpoint is that epoch's, resumes it to the end
  and returns ``cut``."""
  shutil.copytree(full, cut)
  for ckpt in (cut / "checkpoints").iterdir():
    if ckpt.name.isdigit() and int(ckpt.name) > epoch:
      shutil.rmtree(ckpt)
  (cut / "summary.json").unlink()
  rows = (full / "metrics.jsonl").read_text().splitlines()
  (cut / "metrics.jsonl").write_text("\n".join(rows[:epoch]) + "\n")
  assert Checkpoints(cut).latest() == epoch
  assert cli.main(["--resume", str(cut), "--progress", "none"]) == 0
  return cut


def final_state(run_dir: Path, epoch: int):
  """The host copy of the train state checkpointed after ``epoch``."""
  ck = Checkpoints(run_dir)
  try:
    return jax.device_get(ck.restore_local(epoch))
  finally:
    ck.close()
