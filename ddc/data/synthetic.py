"""Synthetic shape domains for the no-download demo and for tests.

Two domains share five shape classes (circle, square, triangle, plus, ring) at random
positions, sizes and rotations:

* ``shapes-plain``: light shapes on a dark, nearly uniform background (the labelled source).
* ``shapes-textured``: shapes of random colour on random-colour, smoothly textured backgrounds,
  sometimes darker than their background (the unlabelled target), in the spirit of MNIST-M.

The images are a fixed function of the domain name (own seed), not of the run's seed, so every
run and every machine sees the same data.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("circle", "square", "triangle", "plus", "ring")
DOMAINS = ("shapes-plain", "shapes-textured")


def _mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    r = rng.uniform(0.2, 0.32)
    cx, cy = rng.uniform(r + 0.05, 0.95 - r, size=2)
    angle = rng.uniform(0, np.pi)
    dx, dy = xx - cx, yy - cy
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    if kind == "circle":
        return dx ** 2 + dy ** 2 <= r ** 2
    if kind == "ring":
        d = np.sqrt(dx ** 2 + dy ** 2)
        return (d <= r) & (d >= 0.55 * r)
    if kind == "square":
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if kind == "plus":
        w = 0.3 * r
        return ((np.abs(u) <= r) & (np.abs(v) <= w)) | ((np.abs(v) <= r) & (np.abs(u) <= w))
    # triangle: intersection of three half-planes at 120 degrees
    inside = np.ones_like(u, bool)
    for k in range(3):
        a = angle + k * 2 * np.pi / 3
        inside &= (np.cos(a) * dx + np.sin(a) * dy) <= 0.5 * r
    return inside


def _smooth_noise(size: int, rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    coarse = rng.random((cells, cells, 3)).astype(np.float32)
    idx = np.linspace(0, cells - 1, size)
    i0 = np.floor(idx).astype(int)
    i1 = np.minimum(i0 + 1, cells - 1)
    w = (idx - i0)[:, None]
    rows = coarse[i0] * (1 - w[:, :, None]) + coarse[i1] * w[:, :, None]
    return rows[:, i0] * (1 - w[None, :, :]) + rows[:, i1] * w[None, :, :]


def render(domain: str, kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One float32 [size, size, 3] image in [0, 255]."""
    m = _mask(kind, size, rng)[:, :, None]
    if domain == "shapes-plain":
        fg = rng.uniform(180, 255)
        bg = rng.uniform(0, 40)
        img = np.where(m, fg, bg) + rng.normal(0, 6, (size, size, 1))
        img = np.repeat(img, 3, axis=-1)
    else:
        bg = _smooth_noise(size, rng) * 255.0
        fg = rng.uniform(0, 255, size=3)
        img = np.where(m, 0.7 * fg + 0.3 * bg, bg) + rng.normal(0, 10, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.float32)


def make_domain(name: str, key: str, size: int, channels: int, *, max_per_class: int | None = None):
    """Builds a synthetic :class:`~ddc.data.domains.Domain` (200 images a class by default)."""
    from ddc.data.domains import Domain
    from ddc.data.images import DataError, to_channels

    if name not in DOMAINS:
        raise DataError(f"{key}.synthetic: unknown synthetic domain {name!r} "
                        f"(known: {', '.join(DOMAINS)})")
    per_class = max_per_class or 200
    rng = np.random.default_rng(DOMAINS.index(name) + 1234)
    images, labels = [], []
    for i in range(per_class):
        for label, kind in enumerate(CLASSES):
            img = to_channels(render(name, kind, size, rng), channels)
            images.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
            labels.append(label)
    paths = [f"synthetic:{name}#{i}" for i in range(len(images))]
    return Domain(key, np.stack(images), np.asarray(labels, np.int32), list(CLASSES), paths)
