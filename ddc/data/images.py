"""Finding and decoding image files: any size, any channel count, into fixed uint8 arrays.

Decoding rules (documented in the README, relied on by tests):

* Formats: JPEG, PNG, BMP and GIF through ``tf.io.decode_image`` (first frame of a GIF);
  TIFF through ``tifffile`` (TensorFlow cannot decode TIFF).
* Bit depth: 8-bit values are kept; other integer types are scaled by their maximum
  (16-bit: ``v / 65535 * 255``); float images are taken as [0, 1] when their maximum is at most
  1, else clipped to [0, 255].
* Channels, to ``channels=3``: gray is repeated, gray+alpha drops alpha and is repeated,
  RGBA drops alpha, more than 4 bands keep the first three. To ``channels=1``: gray is kept,
  gray+alpha drops alpha, three or more bands become the ITU-R 601 luma of the first three
  (0.299 R + 0.587 G + 0.114 B).
* Size: every image is resized (bilinear, antialiased) to ``size x size``, aspect ratio not kept.
* Multi-band TIFF: the samples axis ``S`` that ``tifffile`` reports is moved last whether the
  file is contiguous (``YXS``) or planar (``SYX``); without one, a ``[bands, H, W]`` stack of at
  most 16 pages whose last axis is longer than 16 is read as bands-first.
* Float images: NaN becomes 0 and +-inf is clipped (NaN is a common no-data value).
* Files whose extension is not an image extension (``.DS_Store``, ``Thumbs.db``, ``notes.txt``)
  and hidden files (``._x.jpg``) are ignored; a file with an image extension that cannot be
  decoded (empty, truncated, not an image, unreadable, a broken link) is an error, or a logged
  skip when ``data.skip_bad_files`` allows it. TensorFlow's decoders reject truncated JPEG,
  PNG, GIF and BMP files (JPEG even when only the end-of-image marker is missing), so no extra
  check is needed.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff")
TIFF_EXTENSIONS = (".tif", ".tiff")


class DataError(ValueError):
    """Data that cannot be used; the message names the file or folder."""


def is_image_file(path: Path) -> bool:
    """An image by its name: not hidden, an image extension. A broken link or an unreadable file
    with such a name counts, so that decoding reports it instead of it vanishing silently."""
    return (not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
            and not path.is_dir())


def to_float255(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) * (255.0 / np.iinfo(arr.dtype).max)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32) * 255.0
    arr = arr.astype(np.float32)
    arr = np.where(np.isnan(arr), np.float32(0), arr)
    finite = arr[np.isfinite(arr)]
    finite_max = float(finite.max()) if finite.size else 0.0
    return np.clip(arr * 255.0 if finite_max <= 1.0 else arr, 0.0, 255.0)


def to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """Brings an [H, W] or [H, W, C] float array to [H, W, channels] by the module's rule."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    c = arr.shape[-1]
    if channels == 3:
        if c <= 2:
            return np.repeat(arr[:, :, :1], 3, axis=-1)
        return arr[:, :, :3]
    if c <= 2:
        return arr[:, :, :1]
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    return (arr[:, :, :3] @ luma)[:, :, None]


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        series = tif.series[0]
        arr, axes = series.asarray(), series.axes
    if all(a in axes for a in "YXS") and arr.ndim == len(axes):
        # samples (bands) last, contiguous (YXS) or planar (SYX); first page of any other axis
        arr = np.moveaxis(arr, [axes.index(a) for a in "YXS"], [-3, -2, -1])
        arr = arr.reshape((-1,) + arr.shape[-3:])[0]
    else:
        arr = np.squeeze(arr)
        if arr.ndim == 3 and arr.shape[0] <= 16 and arr.shape[-1] > 16:
            arr = np.moveaxis(arr, 0, -1)  # a stack of band pages (bands, H, W) -> (H, W, bands)
    if arr.ndim not in (2, 3):
        raise ValueError(f"unsupported TIFF array shape {arr.shape} (axes {axes})")
    return arr


def _read_other(data: bytes) -> np.ndarray:
    import tensorflow as tf

    return tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False).numpy()


def _reason(e: Exception) -> str:
    """The first line of a decoder error without TensorFlow's op and device decorations."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    msg = re.sub(r"\{\{[^}]*\}\}\s*", "", msg)  # {{function_node __wrapped__DecodeImage...}}
    msg = re.sub(r"\s*\[Op:\w+\]", "", msg)    # [Op:DecodeImage]
    return msg.strip() or type(e).__name__


def decode_image(path: str | Path, size: int, channels: int) -> np.ndarray:
    """Decodes one file to a uint8 array of shape [size, size, channels].

    Raises:
        DataError: the file is empty, truncated or not decodable; the message names it.
    """
    path = Path(path)
    try:
        if path.is_symlink() and not path.exists():
            raise ValueError(f"broken link to {path.readlink()}")
        if path.stat().st_size == 0:
            raise ValueError("empty file (0 bytes)")
        if path.suffix.lower() in TIFF_EXTENSIONS:
            raw = _read_tiff(path)
        else:
            raw = _read_other(path.read_bytes())
        arr = to_channels(to_float255(raw), channels)
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"image has no pixels, shape {raw.shape}")
    except DataError:
        raise
    except Exception as e:  # decoder errors come in many types; each names this file
        raise DataError(f"{path}: cannot decode image ({_reason(e)})") from None
    if arr.shape[:2] != (size, size):
        import tensorflow as tf

        arr = tf.image.resize(arr, (size, size), method="bilinear", antialias=True).numpy()
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
