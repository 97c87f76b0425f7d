"""crop-flip, the CIFAR default augmentation: each image becomes an 8x8
window of its 4-pixel zero-padded self (mirrored left-right half of the
time), drawn from the key alone."""

import jax
import numpy as np

from train import engine


def _images(n=128, h=8, w=8, c=3):
  # Every pixel of an image distinct (and non-zero), so a window identifies
  # its offset and its orientation without ambiguity.
  base = (np.arange(h * w * c) % 250 + 1).reshape(h, w, c)
  return np.stack([np.roll(base, i, axis=2) for i in range(n)]).astype(np.uint8)


def _explain(out, img):
  """The (dy, dx, flipped) that map img to out, all of them."""
  h, w, _ = img.shape
  pad = np.pad(img, ((4, 4), (4, 4), (0, 0)))
  found = []
  for dy in range(9):
    for dx in range(9):
      win = pad[dy:dy + h, dx:dx + w]
      for flip in (False, True):
        if np.array_equal(out, win[:, ::-1] if flip else win):
          found.append((dy, dx, flip))
  return found


def test_crop_flip_windows_mirrors_and_determinism():
  x = _images()
  key = jax.random.key(3)
  aug = jax.jit(engine.augment_batch, static_argnums=2)
  out = np.asarray(aug(key, x, "crop-flip"))
  assert out.shape == x.shape and out.dtype == np.uint8
  how = [_explain(o, i) for o, i in zip(out, x)]
  assert all(len(h) == 1 for h in how), [h for h in how if len(h) != 1][:3]
  dy, dx, flip = (np.array(v) for v in zip(*[h[0] for h in how]))
  # Offsets cover the whole pad-4 range, and about half the images are
  # mirrored: 128 fair coin flips land in [40, 88] except with
  # probability < 1e-5 (and the key is fixed, so the draw is too).
  assert set(dy) == set(dx) == set(range(9))
  assert 40 <= flip.sum() <= 88, flip.sum()
  # Offsets and flips are independent draws, not one number.
  assert not np.array_equal(dy, dx)
  # The same key gives the same batch; another key, another one.
  again = np.asarray(aug(key, x, "crop-flip"))
  np.testing.assert_array_equal(out, again)
  other = np.asarray(aug(jax.random.key(4), x, "crop-flip"))
  assert not np.array_equal(out, other)
  # "crop" is the same windows, never mirrored; "none" is the identity.
  crop = np.asarray(aug(key, x, "crop"))
  how_c = [_explain(o, i) for o, i in zip(crop, x)]
  assert all(len(h) == 1 and not h[0][2] for h in how_c)
  np.testing.assert_array_equal(
      np.array([h[0][:2] for h in how_c]), np.stack([dy, dx], 1))
  np.testing.assert_array_equal(engine.augment_batch(key, x, "none"), x)


def test_channel_stats_match_numpy_in_chunks_and_rows():
  # Non-square images (h != w), several chunks, and a subset of rows: the
  # normalization statistics are numpy's over exactly the images read.
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(11, 5, 7, 3), dtype=np.uint8)
  f = x.astype(np.float64) / 255.0
  rows = np.array([0, 3, 4, 9])
  for chunk, sel in [(3, None), (4096, None), (3, rows)]:
    mean, std = engine.channel_stats(x, chunk=chunk, rows=sel)
    ref = f if sel is None else f[sel]
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, ref.std(axis=(0, 1, 2)) + 1e-3,
                               rtol=1e-6)
