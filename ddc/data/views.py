"""The eight views of a square image (the dihedral group D4) and the augmentations built on them.

View ``v`` (0..7) of an image is ``np.rot90`` by ``v % 4`` quarter turns (counter-clockwise, in
the H, W plane), then, for ``v >= 4``, a left-right flip. View 0 is the image itself. Overhead
scenes have no "up", so all eight are equally plausible pictures of the same scene.

``data.augment`` names which views training draws from:

* ``false``: none (view 0 only);
* ``true`` or ``"flips"``: a left-right flip and an up-down flip, each with probability 1/2 (the
  four views 0, 4, 6, 2 = none, left-right, up-down, both);
* ``"d4"``: one of the eight views, uniformly.

Mode "train" applies the drawn view to the uint8 batch in the input pipeline; mode "features"
extracts the frozen part's output for each of these views once and the pipeline picks the drawn
view's features: the same draw, so the two modes train the same model on the same inputs.
"""

from __future__ import annotations

import numpy as np

D4 = tuple(range(8))
# position = flip left-right + 2 * flip up-down (the order of BatchSampler.flips' two columns)
FLIP_VIEWS = (0, 4, 6, 2)
AUGMENTS = (False, True, "flips", "d4")


def augment_mode(value) -> str | None:
    """``data.augment`` as None, ``"flips"`` or ``"d4"`` (``true`` is ``"flips"``)."""
    if value is False or value is None:
        return None
    if value is True or value == "flips":
        return "flips"
    if value == "d4":
        return "d4"
    raise ValueError(f"data.augment: expected true or false, \"flips\" or \"d4\", got {value!r}")


def augment_views(value) -> tuple:
    """The views training draws from under ``data.augment = value``, in draw-position order."""
    return {None: (0,), "flips": FLIP_VIEWS, "d4": D4}[augment_mode(value)]


def d4_view(x: np.ndarray, v: int) -> np.ndarray:
    """View ``v`` of images ``x [..., H, W, C]`` (square H = W)."""
    x = np.rot90(x, int(v) % 4, axes=(-3, -2))
    return np.flip(x, axis=-2) if v >= 4 else x


def apply_views(x: np.ndarray, views: np.ndarray) -> np.ndarray:
    """Image ``i`` of the batch ``x [B, H, W, C]`` in its view ``views[i]``."""
    views = np.asarray(views)
    if not views.any():
        return x
    out = np.array(x)
    for v in np.unique(views):
        if v:
            sel = views == v
            out[sel] = d4_view(x[sel], v)
    return out


class ViewedImages:
    """Images ``[N, H, W, C]`` seen in view ``v``, transformed slice by slice when read (as
    ``ddc.data.pipeline.eval_batches`` reads them): test-time augmentation in mode "train"
    without eight copies of the data."""

    def __init__(self, images: np.ndarray, v: int):
        self.images, self.v = images, int(v)
        self.shape, self.dtype = images.shape, images.dtype

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx):
        return np.ascontiguousarray(d4_view(np.asarray(self.images[idx]), self.v))
