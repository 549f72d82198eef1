"""Generated data sets, made on the spot from a seed (no downloads): images a small network can
learn to classify, for training tests, `ipugraph train` and benchmarks.

shapes: one filled shape per image on a noisy background, the class is the shape's kind
(square, disc, triangle, plus, ring, bar, ...); colour, size and position are random, so the
network must learn form, not a colour or a pixel."""
from __future__ import annotations

import numpy as np

KINDS = ("square", "disc", "triangle", "plus", "ring", "hbar", "vbar", "diamond")


def _mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float):
    dy, dx = yy - cy, xx - cx
    if kind == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if kind == "disc":
        return dy ** 2 + dx ** 2 <= r ** 2
    if kind == "triangle":             # apex up: rows widen downwards
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    if kind == "plus":
        w = max(r / 3, 1.0)
        return ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))
    if kind == "ring":
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    if kind == "hbar":
        return (np.abs(dy) <= max(r / 3, 1.0)) & (np.abs(dx) <= r)
    if kind == "vbar":
        return (np.abs(dx) <= max(r / 3, 1.0)) & (np.abs(dy) <= r)
    if kind == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    raise ValueError(f"unknown shape kind '{kind}'")


def shapes(n: int, image_size: int = 32, num_classes: int = 4, seed: int = 0,
           noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """n images [n, 3, S, S] float32 (about zero mean, unit scale) and labels [n] int64 in
    [0, num_classes): labels are balanced and shuffled."""
    if not 1 <= num_classes <= len(KINDS):
        raise ValueError(f"shapes: num_classes must be in [1, {len(KINDS)}], got {num_classes}")
    if image_size < 8 or n < 1:
        raise ValueError(f"shapes: need n >= 1 and image_size >= 8, got n={n}, "
                         f"image_size={image_size}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    images = rng.normal(0.0, noise, size=(n, 3, image_size, image_size)).astype(np.float32)
    background = rng.uniform(-0.5, 0.5, size=(n, 3, 1, 1)).astype(np.float32)
    images += background
    for i, label in enumerate(labels):
        r = rng.uniform(0.18, 0.32) * image_size
        cy, cx = rng.uniform(r + 1, image_size - r - 1, size=2)
        mask = _mask(KINDS[label], yy, xx, cy, cx, r)
        colour = rng.uniform(-1.0, 1.0, size=3).astype(np.float32)
        # keep the shape visible against its background
        colour += np.sign(colour - background[i, :, 0, 0] + 1e-6) * 0.5
        images[i][:, mask] = colour[:, None] + rng.normal(0, noise, size=(3, int(mask.sum())))
    return images, labels


DATASETS = {"synthetic": shapes, "shapes": shapes}
