"""Synthetic shape domains for the no-download demo and for tests.

Two domains share five shape classes (circle, square, triangle, plus, ring), drawn at random
positions, sizes and rotations with anti-aliased edges:

* ``shapes-plain``: light grey shapes on a dark, nearly uniform background, like MNIST digits
  (the labelled source).
* ``shapes-small``: the same light shapes on dark backgrounds at 0.65 times the size, the way
  MNIST digits sit in a smaller box of their frame than USPS digits do (the demo's unlabelled
  target). A network trained on the source alone drops to about half its accuracy there; DDC
  recovers part of it (see the README's demo numbers).
* ``shapes-textured``: the same kind of shapes as seen by another "camera": cream shapes on an
  olive, mildly textured field, so a colour cast, a brighter background, half the contrast and
  more noise. A harder shift: on it the demo's DDC beat lambda = 0 on one seed of three.

The images are a fixed function of the domain name (each domain has its own seed), not of the
run's seed, so every run on every machine sees the same data. Images come class-interleaved
(circle, square, ..., circle, ...), so a smaller ``max_per_class`` gives a prefix of the images
a larger one gives.
"""

from __future__ import annotations

import zlib

import numpy as np

CLASSES = ("circle", "square", "triangle", "plus", "ring")
DOMAINS = ("shapes-plain", "shapes-textured", "shapes-small")
DEFAULT_PER_CLASS = 200
_SUPERSAMPLE = 3  # mask resolution factor for anti-aliased edges


def _mask(kind: str, size: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Coverage in [0, 1], float32 [size, size], of one randomly placed shape (radius 0.2 to
    0.32 of the image side, times ``scale``)."""
    n = size * _SUPERSAMPLE
    yy, xx = (np.mgrid[0:n, 0:n].astype(np.float32) + 0.5) / n
    r = scale * rng.uniform(0.2, 0.32)
    cx, cy = rng.uniform(r + 0.05, 0.95 - r, size=2)
    angle = rng.uniform(0, np.pi)
    dx, dy = xx - cx, yy - cy
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    if kind == "circle":
        inside = dx ** 2 + dy ** 2 <= r ** 2
    elif kind == "ring":
        d = np.sqrt(dx ** 2 + dy ** 2)
        inside = (d <= r) & (d >= 0.55 * r)
    elif kind == "square":
        inside = (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    elif kind == "plus":
        w = 0.3 * r
        inside = ((np.abs(u) <= r) & (np.abs(v) <= w)) | ((np.abs(v) <= r) & (np.abs(u) <= w))
    else:  # triangle: intersection of three half-planes at 120 degrees
        inside = np.ones_like(u, bool)
        for k in range(3):
            a = angle + k * 2 * np.pi / 3
            inside &= (np.cos(a) * dx + np.sin(a) * dy) <= 0.5 * r
    s = _SUPERSAMPLE
    return inside.reshape(size, s, size, s).mean(axis=(1, 3), dtype=np.float32)


def _upsample(coarse: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a [c, c, 3] grid to [size, size, 3]."""
    cells = coarse.shape[0]
    idx = np.linspace(0, cells - 1, size)
    i0 = np.floor(idx).astype(int)
    i1 = np.minimum(i0 + 1, cells - 1)
    w = (idx - i0).astype(np.float32)
    rows = coarse[i0] * (1 - w[:, None, None]) + coarse[i1] * w[:, None, None]
    return rows[:, i0] * (1 - w[None, :, None]) + rows[:, i1] * w[None, :, None]


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A zero-mean colour texture, float32 [size, size, 3], peak-to-peak range 0.5 to 1:
    two octaves of smooth noise (a coarse 3x3 and a fine size/4 grid)."""
    coarse = _upsample(rng.random((3, 3, 3), np.float32), size)
    fine = _upsample(rng.random((size // 4 + 1, size // 4 + 1, 3), np.float32), size)
    tex = 2.0 * coarse + fine
    tex = (tex - tex.mean(axis=(0, 1))) / max(float(tex.max() - tex.min()), 1e-6)
    return tex * rng.uniform(0.5, 1.0)


# The target "camera": an olive field, cream shapes, lower contrast, more sensor noise.
_FIELD_RGB = np.array([75.0, 90.0, 55.0], np.float32)
_SHAPE_TINT = np.array([1.0, 0.8, 0.55], np.float32)
_CONTRAST = (70.0, 110.0)   # shape minus background, before the tint (source: 140 to 255)
_NOISE = 10.0               # per-pixel, per-channel noise (source: 6, grey)
_SMALL = 0.65               # shapes-small: shape size relative to shapes-plain


def render(domain: str, kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One float32 [size, size, 3] image in [0, 255] of shape ``kind`` in ``domain``."""
    m = _mask(kind, size, rng, _SMALL if domain == "shapes-small" else 1.0)[:, :, None]
    if domain in ("shapes-plain", "shapes-small"):
        bg = rng.uniform(0, 40)
        fg = rng.uniform(180, 255)
        img = bg + (fg - bg) * m + rng.normal(0, 6, (size, size, 1)).astype(np.float32)
        img = np.repeat(img, 3, axis=-1)
    else:
        bg = _FIELD_RGB + rng.uniform(-15, 15) + 64.0 * _texture(size, rng)
        contrast = rng.uniform(*_CONTRAST)
        img = bg + contrast * _SHAPE_TINT * m + rng.normal(0, _NOISE, (size, size, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.float32)


def domain_seed(name: str) -> int:
    """The fixed seed of a synthetic domain (a checksum of its name)."""
    return zlib.crc32(name.encode())


def make_arrays(name: str, size: int, channels: int, per_class: int = DEFAULT_PER_CLASS):
    """Images uint8 [per_class * 5, size, size, channels] and labels int32, class-interleaved.

    Raises:
        ValueError: an unknown domain name.
    """
    from ddc.data.images import to_channels

    if name not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {name!r} (known: {', '.join(DOMAINS)})")
    rng = np.random.default_rng(domain_seed(name))
    images = np.empty((per_class * len(CLASSES), size, size, channels), np.uint8)
    labels = np.tile(np.arange(len(CLASSES), dtype=np.int32), per_class)
    for i, label in enumerate(labels):
        img = to_channels(render(name, CLASSES[label], size, rng), channels)
        images[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return images, labels


def make_domain(name: str, key: str, size: int, channels: int, *, max_per_class: int | None = None):
    """Builds a synthetic :class:`~ddc.data.domains.Domain` (200 images a class by default).

    Raises:
        DataError: an unknown domain name (the message names ``key``.synthetic).
    """
    from ddc.data.domains import Domain
    from ddc.data.images import DataError

    if name not in DOMAINS:
        raise DataError(f"{key}.synthetic: unknown synthetic domain {name!r} "
                        f"(known: {', '.join(DOMAINS)})")
    images, labels = make_arrays(name, size, channels, max_per_class or DEFAULT_PER_CLASS)
    paths = [f"synthetic:{name}#{i}" for i in range(len(images))]
    return Domain(key, images, labels, list(CLASSES), paths)
