"""Runs a slim model written by ``python -m train export RUN_DIR --slim``
with nothing but jax and numpy (docs/EXPORT.md).

  python deploy_example.py model.slim.jaxexport model.slim.npz images.npz
      [--batch 64] [--logits OUT.npy]

``images.npz`` holds ``images`` (uint8, N x H x W x C, as the data set has
them: the artifact normalizes) and optionally ``labels``.
"""

import argparse

import jax
import numpy as np


def load(artifact, variables):
  """``predict(images) -> logits`` for any batch size."""
  with open(artifact, "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  with np.load(variables) as z:
    # Keys are NNNN/path: sorted, they are the artifact's argument order.
    weights = [z[k] for k in sorted(z.files)]
  return lambda images: np.asarray(exported.call(*weights, images))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("artifact")
  ap.add_argument("variables")
  ap.add_argument("images")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--logits", help="save the logits here (.npy)")
  args = ap.parse_args()
  predict = load(args.artifact, args.variables)
  with np.load(args.images) as d:
    images = d["images"]
    labels = d["labels"] if "labels" in d.files else None
  logits = np.concatenate([predict(images[i:i + args.batch])
                           for i in range(0, len(images), args.batch)])
  if args.logits:
    np.save(args.logits, logits)
  if labels is not None:
    correct = int(np.sum(logits.argmax(-1) == labels))
    print(f"top-1 {correct}/{len(labels)} = {100 * correct / len(labels):.2f}%")


if __name__ == "__main__":
  main()
