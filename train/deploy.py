"""``python -m train export RUN_DIR --slim``: the run's slim network as a
program that runs with ``jax`` and ``numpy`` alone (docs/EXPORT.md).

Two files. ``model.slim.jaxexport`` is a serialized ``jax.export`` artifact
(StableHLO, lowered for CPU and CUDA) of ``logits = f(*variables, images)``:
the run's input normalization, then the slim model in eval mode. ``images``
are the raw images as the data set holds them (uint8, NHWC), and the batch
dimension is symbolic, so one artifact takes any batch size.
``model.slim.npz`` holds the variables, one array per argument, keyed
``NNNN/params/conv0/kernel`` etc.: sorting the keys gives the argument order.
``docs/deploy_example.py`` is a loader that imports nothing else.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

import models
from train import engine
from train import export as export_lib
from train import inputs
from train._errors import UsageError

DEFAULT_NAME = "model.slim.jaxexport"
# Lowering for a platform needs no device of it: one file serves a CPU
# host and a GPU one.
PLATFORMS = ("cpu", "cuda")


class SlimExport(NamedTuple):
  artifact: Path
  variables: Path
  artifact_bytes: int
  variables_bytes: int
  widths: Any
  flops: int
  dense_flops: int


def variables_path(artifact: Path) -> Path:
  """Where the variables go: beside the artifact, suffix ``.npz``
  (``model.slim.jaxexport`` -> ``model.slim.npz``)."""
  return artifact.with_suffix(".npz")


def _check_outputs(out: Path, force: bool) -> Path:
  """Refuses, before anything is computed or written, destinations that
  would overwrite without ``--force`` or cannot be written."""
  npz = variables_path(out)
  if npz == out:
    raise UsageError(f"--out {out}: must not end in .npz (the variables go "
                     "to a .npz beside it)")
  for p in (out, npz):
    if p.is_dir():
      raise UsageError(f"--out {out}: {p} is a directory")
    if p.exists() and not force:
      raise UsageError(f"--out {out}: {p} already exists (pass --force to "
                       "replace it)")
  if not out.parent.is_dir():
    raise UsageError(f"--out {out}: directory {out.parent} does not exist")
  return npz


def flat_variables(variables: Any) -> dict[str, np.ndarray]:
  """``{"NNNN/path/to/leaf": array}`` in ``jax.tree.leaves`` order, the
  order of the exported function's arguments."""
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  return {f"{i:04d}/" + "/".join(str(getattr(k, "key", k)) for k in path):
          np.asarray(a) for i, (path, a) in enumerate(leaves)}


def inference_fn(model: Any, treedef: Any, mean: np.ndarray, std: np.ndarray,
                 dtype: Any):
  """``f(*leaves, images) -> float32 logits``: the run's evaluation
  forward (engine.make_evaluate) with its normalization built in, so a
  deploy program passes raw images."""
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

  def f(*args):
    variables = jax.tree.unflatten(treedef, args[:-1])
    x = engine.normalize(args[-1], mean, std, dtype)
    return model.apply(variables, x, train=False).astype(jnp.float32)

  return f


def serialize(model: Any, variables: Any, mean: np.ndarray, std: np.ndarray,
              dtype: Any, image_shape, image_dtype) -> bytes:
  """The exported, serialized ``f`` with a symbolic batch dimension."""
  leaves, treedef = jax.tree.flatten(variables)
  batch = jax.export.symbolic_shape(
      "b, " + ", ".join(str(int(d)) for d in image_shape))
  args = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)
          for a in leaves] + [jax.ShapeDtypeStruct(batch, image_dtype)]
  f = inference_fn(model, treedef, mean, std, dtype)
  exported = jax.export.export(jax.jit(f), platforms=PLATFORMS)(*args)
  return bytes(exported.serialize())


def _write_both(files: dict[Path, bytes]) -> None:
  """Writes every file or none: each to a temporary name first, renamed
  only when all are written."""
  tmps = {p: p.with_name(f".{p.name}.tmp{os.getpid()}") for p in files}
  try:
    for p, data in files.items():
      tmps[p].write_bytes(data)
    for p in files:
      os.replace(tmps[p], p)
  except OSError as e:
    for t in tmps.values():
      t.unlink(missing_ok=True)
    raise UsageError(f"cannot write {e.filename or ''}: "
                     f"{e.strerror or e}") from None


def export_slim(run_dir: Path, out: Optional[Path] = None,
                multiple: Optional[int] = None,
                force: bool = False) -> SlimExport:
  """Slims the run's final variables (exactly, ``models.slim`` with widths
  rounded up to ``multiple``, default the run's ``--width-multiple``) and
  writes the artifact and its variables."""
  cfg = export_lib.run_config(run_dir)
  out = run_dir / DEFAULT_NAME if out is None else out
  npz = _check_outputs(out, force)
  variables = export_lib.final_variables(run_dir)
  multiple = cfg.width_multiple if multiple is None else multiple
  splits = inputs.load_data(cfg)
  dtype = inputs.compute_dtype(cfg)
  mean, std = export_lib.normalization(cfg, splits.train.images)
  model = models.get(cfg.model, num_classes=splits.num_classes, dtype=dtype)
  small, sv = models.slim(model, variables, multiple=multiple)
  sv = jax.tree.map(np.asarray, sv)
  shape = splits.train.images.shape[1:]
  blob = serialize(small, sv, mean, std, dtype, shape,
                   splits.train.images.dtype)
  buf = io.BytesIO()
  np.savez(buf, **flat_variables(sv))
  _write_both({out: blob, npz: buf.getvalue()})
  return SlimExport(out, npz, len(blob), len(buf.getvalue()),
                    jax.tree.map(int, small.widths),
                    models.flops(small, shape), models.flops(model, shape))


def describe(r: SlimExport) -> str:
  """The one line ``export --slim`` prints."""
  return (f"wrote {r.artifact} ({r.artifact_bytes} bytes) and {r.variables} "
          f"({r.variables_bytes} bytes): slim widths {r.widths}, "
          f"{r.flops} FLOPs, {100 * r.flops / r.dense_flops:.1f}% of the "
          f"dense {r.dense_flops}")
