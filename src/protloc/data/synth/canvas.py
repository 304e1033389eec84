"""Drawing primitives: points and polylines splatted onto a canvas, then blurred."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

if TYPE_CHECKING:
    from protloc.data.synth.field import Field


class Canvas:
    """Accumulates weighted points per blur width; ``render`` blurs each group once.

    Weights are scaled so that an isolated dot (``kind='dot'``) or a line of points ``spacing`` px
    apart (``kind='line'``) has a peak of about its weight after blurring. A few points are stamped
    with a Gaussian kernel; many are splatted and the whole image blurred, whichever is cheaper.
    """

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.groups: dict[float, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}

    def add(self, ys, xs, weights, sigma: float, kind: str, spacing: float = 1.0) -> None:
        ys, xs = np.asarray(ys).ravel(), np.asarray(xs).ravel()
        weights = np.broadcast_to(np.asarray(weights, dtype=np.float64), ys.shape).ravel()
        iy, ix = np.rint(ys).astype(np.int64), np.rint(xs).astype(np.int64)
        ok = (iy >= 0) & (iy < self.height) & (ix >= 0) & (ix < self.width)
        norm = 2 * math.pi * sigma**2 if kind == "dot" else math.sqrt(2 * math.pi) * sigma * spacing
        self.groups.setdefault(sigma, []).append((iy[ok], ix[ok], weights[ok] * norm))

    def render(self) -> np.ndarray:
        size = self.height * self.width
        out = np.zeros(size, dtype=np.float64)
        blurred = np.zeros((self.height, self.width), dtype=np.float32)
        for sigma, parts in self.groups.items():
            iy = np.concatenate([p[0] for p in parts])
            ix = np.concatenate([p[1] for p in parts])
            w = np.concatenate([p[2] for p in parts])
            if not len(iy):
                continue
            radius = int(math.ceil(3.0 * sigma))
            if len(iy) * (2 * radius + 1) * 4 < size:
                out += self._stamp(iy, ix, w, sigma, radius)
            else:
                img = np.bincount(iy * self.width + ix, weights=w, minlength=size).astype(np.float32)
                blurred += ndi.gaussian_filter(img.reshape(self.height, self.width), sigma, truncate=3.0)
        return blurred + out.reshape(self.height, self.width).astype(np.float32)

    def _stamp(self, iy, ix, w, sigma: float, radius: int) -> np.ndarray:
        offsets = np.arange(-radius, radius + 1)
        kernel = np.exp(-(offsets**2) / (2 * sigma**2))
        kernel /= kernel.sum()
        dy = np.repeat(offsets, len(offsets))
        dx = np.tile(offsets, len(offsets))
        k2 = np.outer(kernel, kernel).ravel()
        yy = iy[:, None] + dy[None, :]
        xx = ix[:, None] + dx[None, :]
        ok = (yy >= 0) & (yy < self.height) & (xx >= 0) & (xx < self.width)
        return np.bincount((yy * self.width + xx)[ok], weights=(w[:, None] * k2[None, :])[ok],
                           minlength=self.height * self.width)


def polylines(start: np.ndarray, angle0: np.ndarray, steps: int, turn_rate: np.ndarray,
              wiggle: float, rng: np.random.Generator, step: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Points of N curved lines: constant curvature ``turn_rate`` (rad/px) plus a random walk."""
    n = len(start)
    turns = np.broadcast_to(np.asarray(turn_rate, dtype=np.float64)[:, None] * step, (n, steps)).copy()
    if wiggle > 0:
        turns += rng.normal(0.0, wiggle * math.sqrt(step), (n, steps))
    angle = angle0[:, None] + np.cumsum(turns, axis=1)
    ys = start[:, 0:1] + np.cumsum(np.sin(angle) * step, axis=1)
    xs = start[:, 1:2] + np.cumsum(np.cos(angle) * step, axis=1)
    return ys, xs


def random_points_in_cells(rng: np.random.Generator, field: Field, counts: np.ndarray,
                            r_min: np.ndarray, r_max: np.ndarray, power: float = 1.0):
    """Random points around each nucleus centre at distances in [r_min, r_max] (per cell).

    ``power`` > 1 concentrates the points towards r_min (perinuclear). Returns ys, xs, cell index.
    """
    cells = np.repeat(np.arange(field.n), counts)
    t = rng.random(len(cells)) ** power
    # area-uniform for power 1: sqrt interpolation between the squared radii
    r = np.sqrt(r_min[cells] ** 2 + t * (r_max[cells] ** 2 - r_min[cells] ** 2))
    phi = rng.uniform(0, 2 * math.pi, len(cells))
    ys = field.nuc_centre[cells, 0] + r * np.sin(phi)
    xs = field.nuc_centre[cells, 1] + r * np.cos(phi)
    return ys, xs, cells

