"""Crops and covering patches as in the paper.

Training sees one random crop per sample per epoch; evaluation covers the whole image with evenly
spaced patches of the crop size that overlap where the image is not a multiple of it (the authors'
step ``patch - (patch*n - size)/(n - 1)`` with ``n = ceil(size/patch)``). Images smaller than the
crop are zero-padded, never rejected. (Each crop or patch is then normalised per channel by
``protloc.inference.normalization``.) Functions take numpy arrays [C, H, W]; ``random_crop`` and
``extract_patches`` also take torch tensors and return the same kind.
"""

from __future__ import annotations

import math

import numpy as np


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def pad_to(image, height: int, width: int):
    """Zero-pad [C, H, W] at the bottom and right to at least height x width."""
    h, w = image.shape[-2:]
    if h >= height and w >= width:
        return image
    shape = tuple(image.shape[:-2]) + (max(h, height), max(w, width))
    if _is_torch(image):
        out = image.new_zeros(shape)
    else:
        out = np.zeros(shape, dtype=image.dtype)
    out[..., :h, :w] = image
    return out


def random_crop(image, size: int, rng: np.random.Generator):
    """A random size x size crop of [C, H, W] (uniform position); smaller images are zero-padded first."""
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    image = pad_to(image, size, size)
    h, w = image.shape[-2:]
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return image[..., y : y + size, x : x + size]


def patch_starts(length: int, patch: int) -> list[int]:
    """Start offsets of evenly spaced patches covering [0, length); the last ends at the border.

    n = ceil(length / patch); step = patch - (patch*n - length)/(n - 1); starts = round(i * step).
    length <= patch gives [0] (the image is padded to the patch).
    """
    if patch <= 0 or length <= 0:
        raise ValueError(f"length and patch must be positive, got {length} and {patch}")
    n = math.ceil(length / patch)
    if n <= 1:
        return [0]
    step = patch - (patch * n - length) / (n - 1)
    starts = [int(round(i * step)) for i in range(n)]
    starts[-1] = length - patch  # exact despite float rounding
    return starts


def patch_grid(height: int, width: int, patch: int) -> list[tuple[int, int]]:
    """(y, x) top-left corners of the patches covering a height x width image, row by row."""
    return [(y, x) for y in patch_starts(height, patch) for x in patch_starts(width, patch)]


def extract_patches(image, patch: int):
    """All patches of [C, H, W] as [N, C, patch, patch] in ``patch_grid`` order (zero-padded if small)."""
    h, w = image.shape[-2:]
    grid = patch_grid(h, w, patch)
    image = pad_to(image, patch, patch)
    crops = [image[..., y : y + patch, x : x + patch] for y, x in grid]
    if _is_torch(image):
        import torch

        return torch.stack(crops)
    return np.stack(crops)
