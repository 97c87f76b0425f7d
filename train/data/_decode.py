"""Turning one encoded image into a uint8 array; runs in worker processes.

This module is what each decode worker imports, so it stays light: PIL and
NumPy only, nothing from the rest of the trainer.
"""

import io

import numpy as np
from PIL import Image

# PIL modes that hold one gray channel; every other mode (RGB, RGBA, P, CMYK,
# YCbCr, ...) is converted to RGB. Alpha is dropped: the models take 1 or 3
# channels.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B",
                         "I;16N", "F"})
# Gray modes wider than 8 bits, with the pixel value that maps to 255. PIL's
# own convert("L") clips them at 255 instead of scaling, which turns a 16-bit
# gradient into black and white. "I" is what 16-bit files give in some PIL
# versions and formats, so it is read on the 16-bit scale too; "F" is read
# as [0, 1], the usual range of float images.
_WIDE_GRAY = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535,
              "I": 65535, "F": 1.0}


def _wide_gray_to_l(image: Image.Image) -> Image.Image:
  """A 16-bit, 32-bit integer or float gray image scaled to 8 bits.

  Raises:
    ValueError: pixels outside the mode's range, whose scale is unknown (a
      per-image stretch would make the same value differ between images).
  """
  full = _WIDE_GRAY[image.mode]
  a = np.asarray(image).astype(np.float64)
  if a.size and not (np.isfinite(a).all() and a.min() >= 0
                     and a.max() <= full):
    raise ValueError(
        f"{image.mode} pixels span [{a.min():g}, {a.max():g}], outside "
        f"[0, {full:g}]; save the images as 8- or 16-bit")
  return Image.fromarray(np.rint(a * (255 / full)).astype(np.uint8))


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
  """Crops the largest centred square and resizes it to size x size.

  Cropping first keeps the aspect ratio, as for down-sampled ImageNet.
  Bilinear resampling in PIL widens its kernel when shrinking, so it also
  anti-aliases.
  """
  width, height = image.size
  side = min(width, height)
  left = (width - side) // 2
  top = (height - side) // 2
  if side == size and width == height:
    return image
  return image.resize((size, size), Image.Resampling.BILINEAR,
                      box=(left, top, left + side, top + side))


def decode_image(data: bytes, image_size: int | None) -> np.ndarray:
  """Decodes one image file.

  Args:
    data: the encoded file (PNG, JPEG, anything PIL reads).
    image_size: if set, centre-crop to a square and resize to this side.

  Returns:
    uint8 array, (H, W) for a gray image and (H, W, 3) for any other.

  Raises:
    Exception: whatever PIL raises for an unreadable, truncated or non-image
      file (the caller reports it with the file's name).
  """
  with Image.open(io.BytesIO(data)) as image:
    if image_size is not None:
      # For JPEG this lets libjpeg decode at 1/2, 1/4 or 1/8 scale, still at
      # least image_size on each side: far faster for large photographs.
      image.draft(image.mode, (image_size, image_size))
    # load() is where truncated data raises; PIL's LOAD_TRUNCATED_IMAGES is
    # left at its default (False) so a cut-off file is an error, not gray.
    image.load()
    mode = "L" if image.mode in _GRAY_MODES else "RGB"
    if image.mode in _WIDE_GRAY:
      image = _wide_gray_to_l(image)
    if image.mode != mode:
      image = image.convert(mode)
    if image_size is not None:
      image = center_crop_resize(image, image_size)
    return np.asarray(image, dtype=np.uint8)


def decode_chunk(
    payloads: list[bytes | str], image_size: int | None
) -> list[tuple[np.ndarray | None, str | None]]:
  """Decodes a batch of images; the unit of work of one worker task.

  Args:
    payloads: each the encoded bytes of an image, or (str) the path of an
      image file to read here, so that workers read directory sources in
      parallel.
    image_size: as for `decode_image`.

  Returns:
    One (array, None) or (None, error message) per payload, in order. Errors
    are returned rather than raised so that one bad file neither loses the
    rest of the chunk nor hides which file was bad.
  """
  results = []
  for payload in payloads:
    try:
      if isinstance(payload, str):
        with open(payload, "rb") as f:
          payload = f.read()
      results.append((decode_image(payload, image_size), None))
    except Exception as e:  # pylint: disable=broad-except
      # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
      # and more for bad files; all of them mean "not a usable image".
      results.append((None, f"{type(e).__name__}: {e}".splitlines()[0]))
  return results


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
  """Centre-crops and resizes a uint8 NHWC batch that is already in memory."""
  out = np.empty((len(images), image_size, image_size, images.shape[-1]),
                 np.uint8)
  for i, image in enumerate(images):
    gray = images.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if gray else image)
    resized = np.asarray(center_crop_resize(pil, image_size))
    out[i] = resized[..., None] if gray else resized
  return out
