"""Synthetic HTI fields: the embedded default data set.

Each sample is a field of several cells in four channels (nucleus, microtubules, ER, protein). The
three reference channels always show the cells' nuclei (textured ellipses with dark nucleoli), a
microtubule network radiating from the centrosome beside the nucleus, and a reticular ER that is
densest around the nucleus. The protein channel shows the compartments named by the sample's labels,
each with its own morphology (see ``COMPARTMENT_DRAWERS``). Like real HTI data the labels are
noisy with respect to the image: some cells do not express the protein, expression varies from cell
to cell, and illumination, brightness and camera noise (Poisson + Gaussian) vary between samples.

Determinism: sample ``i`` of a data set with seed ``K`` is drawn from its own generator seeded with
``(K, i)`` -- labels first, then the image -- so the bytes do not depend on the number of workers or
on which samples were generated before. TIFFs are written without date or software tags.

Geometry is in pixels and independent of the image size (a cell is about 90 px across), so a larger
image holds more cells rather than larger ones.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL
from protloc.errors import ProtlocError
from protloc.labels import HPA13, LabelSet

ID_PREFIX = "synth-"
MIN_SIZE = 32
MAX_SIZE = 16384
MAX_SAMPLES = 10_000_000

# Relative class frequencies, unbalanced like the paper's Appendix Figure 6: nucleus, cytosol,
# nucleoli, plasma membrane and vesicles are common; nuclear membrane, intermediate filaments,
# centrosome, microtubules and actin filaments are rare. Kept "slightly unbalanced" (largest/smallest
# about 3.5) so that every class has enough positives in a data set of a few hundred samples.
CLASS_WEIGHTS: dict[str, float] = {
    "Actin filaments": 4.5,
    "Centrosome": 5.0,
    "Cytosol": 13.0,
    "Endoplasmic reticulum": 6.0,
    "Golgi apparatus": 7.0,
    "Intermediate filaments": 5.0,
    "Microtubules": 4.5,
    "Mitochondria": 7.0,
    "Nuclear membrane": 4.5,
    "Nucleoli": 10.0,
    "Nucleus": 16.0,
    "Plasma membrane": 9.0,
    "Vesicles": 9.0,
}
# Number of classes per sample: about half the samples are multi-label (as in the paper).
LABEL_COUNT_PROBS = (0.50, 0.33, 0.13, 0.04)

# A protein packed into a small compartment is brighter per pixel than the same protein spread over the
# cytosol or the nucleoplasm: puncta (centrosome, Golgi) are drawn this many times brighter than a
# diffuse stain's plateau, which keeps a dot visible when it co-occurs with a diffuse class.
DIFFUSE_LEVEL = 0.5
PUNCTA_LEVEL = 2.0

CELL_RADIUS = 44.0  # mean cell radius in pixels
EXPRESSION_PROB = 0.8
# Photons at a channel's brightest structure: dim to bright stainings (the dimmest still above the
# read noise, as an HTI screen's acquisition settings would ensure).
MIN_PEAK_PHOTONS = 300.0
MAX_PEAK_PHOTONS = 2500.0  # chance that a cell of a field expresses the protein


# ----------------------------------------------------------------------------------------------------
# labels


def sample_labels(rng: np.random.Generator, label_set: LabelSet = HPA13) -> tuple[int, ...]:
    """Draw a sorted tuple of class indices: 1 to 4 classes, weighted by ``CLASS_WEIGHTS``."""
    weights = np.array([CLASS_WEIGHTS[name] for name in label_set.classes], dtype=np.float64)
    count = 1 + int(rng.choice(len(LABEL_COUNT_PROBS), p=LABEL_COUNT_PROBS))
    chosen = rng.choice(len(weights), size=count, replace=False, p=weights / weights.sum())
    return tuple(sorted(int(c) for c in chosen))


# ----------------------------------------------------------------------------------------------------
# the cell layout of a field


@dataclass
class Field:
    """Per-pixel geometry of a field of cells and the per-cell parameters it was drawn from."""

    height: int
    width: int
    owner: np.ndarray  # int32 [H, W], cell index or -1 for background
    dn: np.ndarray  # float32 [H, W], signed distance (px, approx.) to the owner's nuclear envelope
    rc: np.ndarray  # float32 [H, W], normalised distance from the owner's centre (1 = cell edge)
    centre: np.ndarray  # [n, 2] cell centres (y, x)
    nuc_centre: np.ndarray  # [n, 2] nucleus centres
    nuc_axes: np.ndarray  # [n, 2] nucleus semi-axes (px)
    nuc_angle: np.ndarray  # [n] nucleus orientation
    cell_radius: np.ndarray  # [n] mean cell radius (px)
    mtoc: np.ndarray  # [n, 2] centrosome position, beside the nucleus, towards the Golgi side
    golgi_angle: np.ndarray  # [n] direction of the Golgi side
    texture: np.ndarray  # float32 [H, W] fine smooth noise (1.8 px), zero mean, unit variance

    @property
    def n(self) -> int:
        return len(self.centre)

    @cached_property
    def cell(self) -> np.ndarray:
        return (self.owner >= 0).astype(np.float32)

    @cached_property
    def nucleus(self) -> np.ndarray:
        """Soft nucleus mask (about 1.2 px edge)."""
        return np.clip(0.5 - self.dn / np.float32(1.2), 0.0, 1.0) * self.cell

    @cached_property
    def cytoplasm(self) -> np.ndarray:
        return self.cell * (1.0 - self.nucleus)

    def per_cell(self, values: np.ndarray, background: float = 0.0) -> np.ndarray:
        """Broadcast one value per cell to the pixels each cell owns."""
        table = np.concatenate([[background], np.asarray(values, dtype=np.float32)]).astype(np.float32)
        return table[self.owner + 1]

    def keep(self, ys: np.ndarray, xs: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """Which points lie in the image and in their own cell."""
        iy = np.rint(ys).astype(np.int64)
        ix = np.rint(xs).astype(np.int64)
        inside = (iy >= 0) & (iy < self.height) & (ix >= 0) & (ix < self.width)
        ok = np.zeros(len(ys), dtype=bool)
        ok[inside] = self.owner[iy[inside], ix[inside]] == cells[inside]
        return ok

    def dn_at(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        iy = np.clip(np.rint(ys).astype(np.int64), 0, self.height - 1)
        ix = np.clip(np.rint(xs).astype(np.int64), 0, self.width - 1)
        return self.dn[iy, ix]


def smooth_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Gaussian random field with correlation length ``scale`` px, zero mean and unit variance."""
    if scale <= 3.0:
        field = ndi.gaussian_filter(rng.standard_normal((height, width), dtype=np.float32), scale, truncate=3.0)
    else:
        # smooth noise on a coarse lattice (spacing scale/2), interpolated linearly onto the pixel grid:
        # much faster than blurring a full-size image with a wide kernel
        step = scale / 2.0
        coarse = rng.standard_normal((int(height / step) + 3, int(width / step) + 3), dtype=np.float32)
        coarse = ndi.gaussian_filter(coarse, 1.5, truncate=3.0, mode="wrap")
        field = _interpolate_axis(_interpolate_axis(coarse, height, step, 0), width, step, 1)
    std = float(field.std())
    return ((field - field.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def _interpolate_axis(values: np.ndarray, n: int, step: float, axis: int) -> np.ndarray:
    """Linear interpolation of lattice ``values`` (spacing ``step`` px) onto ``n`` pixels along ``axis``."""
    pos = np.arange(n, dtype=np.float32) / np.float32(step)
    low = pos.astype(np.int64)
    frac = pos - low
    shape = [1, 1]
    shape[axis] = n
    frac = frac.reshape(shape)
    return np.take(values, low, axis=axis) * (1 - frac) + np.take(values, low + 1, axis=axis) * frac


def _place_centres(rng: np.random.Generator, height: int, width: int, radius: float) -> np.ndarray:
    """Cell centres by dart throwing with a minimum distance; cells may be cut by the border."""
    margin = 0.35 * radius
    target = max(1, int(round(height * width / (math.pi * radius**2) * rng.uniform(0.8, 1.1))))
    candidates = np.column_stack([
        rng.uniform(-margin, height + margin, 30 * target),
        rng.uniform(-margin, width + margin, 30 * target),
    ])
    min_dist = 1.3 * radius
    accepted: list[np.ndarray] = []
    for point in candidates:
        if accepted and np.min(np.hypot(*(np.asarray(accepted) - point).T)) < min_dist:
            continue
        accepted.append(point)
        if len(accepted) >= target:
            break
    if not accepted or all(not (0 <= p[0] < height and 0 <= p[1] < width) for p in accepted):
        accepted.append(np.array([height / 2 + rng.uniform(-0.1, 0.1) * height, width / 2]))
    return np.asarray(accepted, dtype=np.float64)


def make_field(rng: np.random.Generator, height: int, width: int) -> Field:
    """Lay out the cells of a field: a power-diagram of irregular elliptical cells, each with a nucleus."""
    scale = rng.uniform(0.85, 1.15)
    mean_radius = CELL_RADIUS * scale
    centre = _place_centres(rng, height, width, mean_radius)
    n = len(centre)
    cell_radius = mean_radius * rng.uniform(0.85, 1.15, n)
    cell_aspect = rng.uniform(1.0, 1.35, n)
    cell_angle = rng.uniform(0, math.pi, n)
    nuc_major = cell_radius * rng.uniform(0.38, 0.48, n)
    nuc_axes = np.column_stack([nuc_major, nuc_major / rng.uniform(1.0, 1.4, n)])
    nuc_angle = rng.uniform(0, math.pi, n)
    offset_angle = rng.uniform(0, 2 * math.pi, n)
    offset = cell_radius * rng.uniform(0.0, 0.12, n)
    nuc_centre = centre + np.column_stack([np.sin(offset_angle), np.cos(offset_angle)]) * offset[:, None]
    golgi_angle = rng.uniform(0, 2 * math.pi, n)
    # the centrosome sits just outside the nuclear envelope on the Golgi side
    mtoc_dist = _ellipse_radius(nuc_axes, nuc_angle, golgi_angle) + rng.uniform(3.5, 6.0, n)
    mtoc = nuc_centre + np.column_stack([np.sin(golgi_angle), np.cos(golgi_angle)]) * mtoc_dist[:, None]

    shape_noise = smooth_noise(rng, height, width, 14.0)
    owner = np.full((height, width), -1, dtype=np.int32)
    score = np.ones((height, width), dtype=np.float32)  # pixels stay background unless a cell scores < 1
    rc_map = np.full((height, width), 2.0, dtype=np.float32)
    dn_map = np.full((height, width), 99.0, dtype=np.float32)
    for i in range(n):
        reach = cell_radius[i] * cell_aspect[i] * 1.35
        y0, y1 = max(0, int(centre[i, 0] - reach)), min(height, int(centre[i, 0] + reach) + 1)
        x0, x1 = max(0, int(centre[i, 1] - reach)), min(width, int(centre[i, 1] + reach) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        xs = np.arange(x0, x1, dtype=np.float32)[None, :]
        # cell: rotated ellipse of area ~ pi r^2, its edge made irregular by the smooth noise
        dy, dx = ys - centre[i, 0], xs - centre[i, 1]
        c, s = math.cos(cell_angle[i]), math.sin(cell_angle[i])
        u, v = dx * c + dy * s, -dx * s + dy * c
        a, b = cell_radius[i] * math.sqrt(cell_aspect[i]), cell_radius[i] / math.sqrt(cell_aspect[i])
        rc = np.sqrt((u / a) ** 2 + (v / b) ** 2) * (1.0 + 0.13 * shape_noise[y0:y1, x0:x1])
        # nucleus: rotated ellipse; dn ~ signed distance to its envelope in px
        dy, dx = ys - nuc_centre[i, 0], xs - nuc_centre[i, 1]
        c, s = math.cos(nuc_angle[i]), math.sin(nuc_angle[i])
        u, v = dx * c + dy * s, -dx * s + dy * c
        na, nb = nuc_axes[i]
        rn = np.sqrt((u / na) ** 2 + (v / nb) ** 2)
        dn = (rn - 1.0) * (0.5 * (na + nb))
        # a cell always owns its own nucleus
        cell_score = np.where(dn < 2.0, rc * 0.3, rc)
        win = cell_score < score[y0:y1, x0:x1]
        score[y0:y1, x0:x1][win] = cell_score[win]
        owner[y0:y1, x0:x1][win] = i
        rc_map[y0:y1, x0:x1][win] = rc[win]
        dn_map[y0:y1, x0:x1][win] = dn[win]
    texture = smooth_noise(rng, height, width, 1.8)
    return Field(height, width, owner, dn_map, rc_map, centre, nuc_centre, nuc_axes, nuc_angle,
                 cell_radius, mtoc, golgi_angle, texture)


def _ellipse_radius(axes: np.ndarray, angle: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Distance from an ellipse's centre to its edge in ``direction`` (image angle, y = sin)."""
    rel = direction - angle
    a, b = axes[:, 0], axes[:, 1]
    return a * b / np.sqrt((b * np.cos(rel)) ** 2 + (a * np.sin(rel)) ** 2)


# ----------------------------------------------------------------------------------------------------
# drawing primitives: points and polylines splatted onto a canvas, then blurred


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


def _random_points_in_cells(rng: np.random.Generator, field: Field, counts: np.ndarray,
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


# ----------------------------------------------------------------------------------------------------
# reference structures (drawn for every sample)


@dataclass
class References:
    nucleus: np.ndarray
    microtubules: np.ndarray  # the network, peak ~1
    er: np.ndarray  # the reticular ER, peak ~1
    nucleoli: np.ndarray  # nucleoli blobs, peak ~1


def draw_nucleoli(rng: np.random.Generator, field: Field) -> np.ndarray:
    counts = rng.integers(2, 6, field.n)
    cells = np.repeat(np.arange(field.n), counts)
    r = rng.uniform(0.0, 0.6, len(cells)) * field.nuc_axes[cells, 1]
    phi = rng.uniform(0, 2 * math.pi, len(cells))
    ys = field.nuc_centre[cells, 0] + r * np.sin(phi)
    xs = field.nuc_centre[cells, 1] + r * np.cos(phi)
    canvas = Canvas(field.height, field.width)
    ok = field.keep(ys, xs, cells)
    canvas.add(ys[ok], xs[ok], rng.uniform(0.8, 1.0, ok.sum()), 3.0, "dot")
    return np.clip(canvas.render(), 0, 1.2) * field.nucleus


def draw_microtubules(rng: np.random.Generator, field: Field) -> np.ndarray:
    """Nearly straight filaments radiating from the centrosome to the cell edge."""
    counts = rng.integers(28, 44, field.n)
    cells = np.repeat(np.arange(field.n), counts)
    spacing = 1.5
    steps = int(2.2 * field.cell_radius.max() / spacing)
    start = field.mtoc[cells]
    angle0 = rng.uniform(0, 2 * math.pi, len(cells))
    ys, xs = polylines(start, angle0, steps, rng.normal(0, 0.006, len(cells)), 0.025, rng, step=spacing)
    cells_pts = np.broadcast_to(cells[:, None], ys.shape)
    ys, xs, cells_pts = ys.ravel(), xs.ravel(), cells_pts.ravel()
    ok = field.keep(ys, xs, cells_pts)
    # over the nucleus the network is out of focus and faint
    weight = np.where(field.dn_at(ys, xs) < 0, 0.25, 1.0) * rng.uniform(0.6, 1.0, len(ys))
    canvas = Canvas(field.height, field.width)
    canvas.add(ys[ok], xs[ok], weight[ok] * 0.55, 0.8, "line", spacing)
    network = canvas.render()
    cytoplasm = field.cytoplasm
    return np.clip(network + 0.12 * cytoplasm, 0, 1.5)


def draw_er(rng: np.random.Generator, field: Field) -> np.ndarray:
    """A reticular network (zero crossings of a smooth random field), densest around the nucleus."""
    # the field's texture turned round: a fresh-looking pattern without drawing another noise image
    net = np.exp(-((field.texture[::-1, ::-1] / 0.35) ** 2))
    cytoplasm = field.cytoplasm
    perinuclear = np.clip(1.15 - field.rc, 0.15, 1.0) * np.exp(-np.maximum(field.dn, 0) / 35.0)
    envelope = np.exp(-((field.dn / 1.6) ** 2)) * field.cell
    return (0.25 + 0.85 * net) * cytoplasm * perinuclear + 0.6 * envelope


def draw_references(rng: np.random.Generator, field: Field) -> References:
    nucleoli = draw_nucleoli(rng, field)
    brightness = field.per_cell(rng.uniform(0.7, 1.0, field.n))
    nucleus = field.nucleus * brightness * (0.8 + 0.12 * field.texture) * (1.0 - 0.55 * np.minimum(nucleoli, 1.0))
    return References(nucleus=nucleus, microtubules=draw_microtubules(rng, field), er=draw_er(rng, field),
                      nucleoli=nucleoli)


# ----------------------------------------------------------------------------------------------------
# protein compartments: each returns a map with peak ~1; ``expr`` is the per-cell expression level


Drawer = Callable[[np.random.Generator, Field, References, np.ndarray], np.ndarray]


def _nucleus(rng, field, refs, expr):
    return field.nucleus * (DIFFUSE_LEVEL + 0.06 * field.texture) * (1.0 - 0.3 * np.minimum(refs.nucleoli, 1.0)) * field.per_cell(expr)


def _nucleoli(rng, field, refs, expr):
    return np.minimum(refs.nucleoli, 1.0) * field.per_cell(expr)


def _nuclear_membrane(rng, field, refs, expr):
    return np.exp(-((field.dn / 1.8) ** 2)) * field.cell * field.per_cell(expr)


def _cytosol(rng, field, refs, expr):
    cytoplasm = field.cytoplasm
    return cytoplasm * (DIFFUSE_LEVEL + 0.05 * field.texture) * field.per_cell(expr)


def _plasma_membrane(rng, field, refs, expr):
    owner = field.owner
    edge = np.zeros(owner.shape, dtype=bool)
    vertical = owner[1:, :] != owner[:-1, :]
    horizontal = owner[:, 1:] != owner[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    # each membrane pixel glows as bright as the brighter of its cells (a non-expressing cell has none)
    level = field.per_cell(expr)
    level = np.maximum(level, ndi.maximum_filter(level, size=3)) * edge
    return np.minimum(ndi.gaussian_filter(level, 1.0, truncate=3.0) * 2.2, 1.0)


def _cell_expr(cells: np.ndarray, expr: np.ndarray) -> np.ndarray:
    return expr[cells]


def _mitochondria(rng, field, refs, expr):
    """Short tubules (6-16 px), many, concentrated around the nucleus."""
    counts = rng.integers(45, 80, field.n)
    r_min = field.nuc_axes.mean(1) + 2.0
    ys0, xs0, cells = _random_points_in_cells(rng, field, counts, r_min, field.cell_radius * 1.05, power=1.5)
    steps = 16
    length = rng.uniform(6.0, 16.0, len(cells))
    ys, xs = polylines(np.column_stack([ys0, xs0]), rng.uniform(0, 2 * math.pi, len(cells)), steps,
                       rng.normal(0, 0.12, len(cells)), 0.08, rng)
    within = np.arange(steps)[None, :] < length[:, None]
    cells_pts = np.broadcast_to(cells[:, None], ys.shape)[within]
    ys, xs = ys[within], xs[within]
    ok = field.keep(ys, xs, cells_pts) & (field.dn_at(ys, xs) > 0.5)
    canvas = Canvas(field.height, field.width)
    canvas.add(ys[ok], xs[ok], 0.8 * expr[cells_pts[ok]], 0.9, "line")
    return np.minimum(canvas.render(), 1.2)


def _actin_filaments(rng, field, refs, expr):
    """Stress fibres: long straight parallel lines across each cell, plus a faint cortical rim."""
    counts = rng.integers(7, 14, field.n)
    cells = np.repeat(np.arange(field.n), counts)
    theta = rng.uniform(0, math.pi, field.n)[cells] + rng.normal(0, 0.07, len(cells))
    across = rng.uniform(-1.0, 1.0, len(cells)) * field.cell_radius[cells]
    half = 1.3 * field.cell_radius.max()
    # start at one end of a chord through the cell centre, offset sideways by `across`
    normal = np.column_stack([np.cos(theta), -np.sin(theta)])
    direction = np.column_stack([np.sin(theta), np.cos(theta)])
    start = field.centre[cells] + normal * across[:, None] - direction * half
    steps = int(2 * half)
    ys, xs = polylines(start, theta, steps, np.zeros(len(cells)), 0.0, rng)
    cells_pts = np.broadcast_to(cells[:, None], ys.shape).ravel()
    ys, xs = ys.ravel(), xs.ravel()
    ok = field.keep(ys, xs, cells_pts) & (field.rc[np.clip(np.rint(ys).astype(int), 0, field.height - 1),
                                                        np.clip(np.rint(xs).astype(int), 0, field.width - 1)] < 0.97)
    weight = np.repeat(rng.uniform(0.5, 1.0, len(cells)), steps)
    canvas = Canvas(field.height, field.width)
    canvas.add(ys[ok], xs[ok], 0.75 * weight[ok] * expr[cells_pts[ok]], 0.8, "line")
    cortex = np.exp(-(((field.rc - 0.95) / 0.04) ** 2)) * field.cell * 0.25 * field.per_cell(expr)
    return np.minimum(canvas.render() + cortex, 1.2)


def _microtubules(rng, field, refs, expr):
    return refs.microtubules * field.per_cell(expr)


def _intermediate_filaments(rng, field, refs, expr):
    """Long wavy fibres that wind around the nucleus: a curved cage, unlike the radial microtubules."""
    counts = rng.integers(12, 20, field.n)
    r_min = field.nuc_axes.mean(1) + 3.0
    ys0, xs0, cells = _random_points_in_cells(rng, field, counts, r_min, field.cell_radius * 0.8, power=1.3)
    # start roughly tangential to the nucleus, and bend the same way round it
    phi = np.arctan2(ys0 - field.nuc_centre[cells, 0], xs0 - field.nuc_centre[cells, 1])
    sense = rng.choice([-1.0, 1.0], len(cells))
    angle0 = phi + sense * math.pi / 2 + rng.normal(0, 0.35, len(cells))
    dist = np.hypot(ys0 - field.nuc_centre[cells, 0], xs0 - field.nuc_centre[cells, 1])
    steps = int(1.8 * field.cell_radius.max())
    ys, xs = polylines(np.column_stack([ys0, xs0]), angle0, steps, sense / np.maximum(dist, 10.0) * 0.8,
                       0.09, rng)
    cells_pts = np.broadcast_to(cells[:, None], ys.shape).ravel()
    ys, xs = ys.ravel(), xs.ravel()
    ok = field.keep(ys, xs, cells_pts) & (field.dn_at(ys, xs) > 0.0)
    canvas = Canvas(field.height, field.width)
    canvas.add(ys[ok], xs[ok], 0.6 * expr[cells_pts[ok]], 1.0, "line")
    return np.minimum(canvas.render(), 1.2)


def _centrosome(rng, field, refs, expr):
    """One or two bright dots at the centrosome, beside the nucleus."""
    two = rng.random(field.n) < 0.5
    ys, xs, ws = [field.mtoc[:, 0]], [field.mtoc[:, 1]], [expr]
    # the second centriole sits beside the first, along the nuclear envelope
    tangent = np.column_stack([np.cos(field.golgi_angle), -np.sin(field.golgi_angle)])
    jitter = tangent * rng.choice([-1.0, 1.0], (field.n, 1)) * rng.uniform(3.0, 4.5, (field.n, 1))
    ys.append(field.mtoc[two, 0] + jitter[two, 0])
    xs.append(field.mtoc[two, 1] + jitter[two, 1])
    ws.append(expr[two])
    canvas = Canvas(field.height, field.width)
    # centrioles are the brightest and tightest puncta of all
    canvas.add(np.concatenate(ys), np.concatenate(xs), 1.5 * PUNCTA_LEVEL * np.concatenate(ws), 1.6, "dot")
    return np.minimum(canvas.render(), 1.8 * PUNCTA_LEVEL)


def _golgi(rng, field, refs, expr):
    """A cluster of blobs hugging the nucleus on one side (the Golgi side, as the centrosome)."""
    counts = rng.integers(10, 20, field.n)
    cells = np.repeat(np.arange(field.n), counts)
    phi = field.golgi_angle[cells] + rng.normal(0, 0.35, len(cells))
    edge = _ellipse_radius(field.nuc_axes[cells], field.nuc_angle[cells], phi)
    r = edge + rng.uniform(1.0, 11.0, len(cells))
    ys = field.nuc_centre[cells, 0] + r * np.sin(phi)
    xs = field.nuc_centre[cells, 1] + r * np.cos(phi)
    ok = field.keep(ys, xs, cells)
    canvas = Canvas(field.height, field.width)
    canvas.add(ys[ok], xs[ok], 0.5 * PUNCTA_LEVEL * rng.uniform(0.6, 1.0, ok.sum()) * expr[cells[ok]], 2.0, "dot")
    return np.minimum(canvas.render(), 1.2 * PUNCTA_LEVEL)


def _er(rng, field, refs, expr):
    return refs.er * field.per_cell(expr)


def _vesicles(rng, field, refs, expr):
    """Many small dots scattered over the cytoplasm."""
    counts = rng.integers(60, 120, field.n)
    r_min = field.nuc_axes.mean(1) + 1.0
    ys, xs, cells = _random_points_in_cells(rng, field, counts, r_min, field.cell_radius * 1.1)
    ok = field.keep(ys, xs, cells)
    canvas = Canvas(field.height, field.width)
    canvas.add(ys[ok], xs[ok], 0.75 * PUNCTA_LEVEL * rng.uniform(0.5, 1.0, ok.sum()) * expr[cells[ok]], 1.3, "dot")
    return np.minimum(canvas.render(), 0.9 * PUNCTA_LEVEL)


COMPARTMENT_DRAWERS: dict[str, Drawer] = {
    "Actin filaments": _actin_filaments,
    "Centrosome": _centrosome,
    "Cytosol": _cytosol,
    "Endoplasmic reticulum": _er,
    "Golgi apparatus": _golgi,
    "Intermediate filaments": _intermediate_filaments,
    "Microtubules": _microtubules,
    "Mitochondria": _mitochondria,
    "Nuclear membrane": _nuclear_membrane,
    "Nucleoli": _nucleoli,
    "Nucleus": _nucleus,
    "Plasma membrane": _plasma_membrane,
    "Vesicles": _vesicles,
}


# ----------------------------------------------------------------------------------------------------
# a whole sample


def _illumination(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Uneven illumination: a tilted plane times a vignette, between about 0.55 and 1."""
    ys = (np.arange(height, dtype=np.float32)[:, None] - height / 2) / max(height, width)
    xs = (np.arange(width, dtype=np.float32)[None, :] - width / 2) / max(height, width)
    cy, cx = rng.uniform(-0.3, 0.3, 2)
    vignette = 1.0 - rng.uniform(0.0, 0.8) * ((ys - cy) ** 2 + (xs - cx) ** 2)
    gy, gx = rng.uniform(-0.3, 0.3, 2)
    return np.clip(vignette * (1.0 + gy * ys + gx * xs), 0.4, 1.2).astype(np.float32)


def _camera(rng: np.random.Generator, signal: np.ndarray, illumination: np.ndarray, peak_photons: float,
            background: float) -> np.ndarray:
    """Photon counts with shot noise and read noise, as 16-bit camera values.

    Poisson noise is drawn in its Gaussian approximation (variance = mean), which is accurate at these
    counts (tens to thousands of photons) and several times faster than ``rng.poisson``.
    """
    photons = signal * np.float32(peak_photons)
    photons += np.float32(background)
    photons *= illumination
    read_noise = rng.uniform(2.0, 6.0)
    sigma = np.sqrt(photons + np.float32(read_noise**2))
    sigma *= rng.standard_normal(photons.shape, dtype=np.float32)
    photons += sigma
    gain = np.float32(rng.uniform(1.5, 4.0))
    photons *= gain
    photons += np.float32(100.0)  # camera offset keeps the noise floor above zero
    np.clip(photons, 0, 65535, out=photons)
    return np.rint(photons, out=photons).astype(np.uint16)


def render_sample(rng: np.random.Generator | int, labels: Sequence[int | str], height: int,
                  width: int | None = None, label_set: LabelSet = HPA13) -> np.ndarray:
    """Render one field: uint16 [4, H, W] in ``CHANNELS`` order (nucleus, microtubules, ER, protein).

    ``labels`` are class indices or names of ``label_set``; the protein is drawn in those compartments.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    width = height if width is None else width
    _check_size(height, width)
    names = [label_set.classes[c] if isinstance(c, (int, np.integer)) else label_set.classes[label_set.index(c)]
             for c in labels]
    unknown = [name for name in names if name not in COMPARTMENT_DRAWERS]
    if unknown:
        raise ProtlocError(f"no synthetic morphology for class {unknown[0]!r}")

    field = make_field(rng, height, width)
    refs = draw_references(rng, field)

    # which cells express the protein, and how strongly (at least one cell does, when any is visible)
    expresses = rng.random(field.n) < EXPRESSION_PROB
    if not expresses.any():
        expresses[rng.integers(field.n)] = True
    expr = np.where(expresses, rng.lognormal(0.0, 0.3, field.n), 0.0)
    protein = np.zeros((height, width), dtype=np.float32)
    for name in dict.fromkeys(names):
        protein += rng.uniform(0.55, 1.0) * COMPARTMENT_DRAWERS[name](rng, field, refs, expr)
    protein += 0.03 * field.cell  # unspecific staining

    illumination = _illumination(rng, height, width)
    out = np.empty((4, height, width), dtype=np.uint16)
    for channel, signal in enumerate((refs.nucleus, refs.microtubules, refs.er, protein)):
        peak = float(np.exp(rng.uniform(np.log(MIN_PEAK_PHOTONS), np.log(MAX_PEAK_PHOTONS))))
        out[channel] = _camera(rng, signal, illumination, peak, background=peak * rng.uniform(0.01, 0.05))
    return out


# ----------------------------------------------------------------------------------------------------
# data set


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of a data set with ``seed``: independent of all others."""
    return np.random.default_rng([int(seed), int(index)])


def sample_id(index: int, samples: int) -> str:
    return f"{ID_PREFIX}{index:0{max(5, len(str(samples - 1)))}d}"


def draw_sample(seed: int, index: int, height: int, width: int,
                label_set: LabelSet = HPA13) -> tuple[tuple[int, ...], np.ndarray]:
    """Labels and image of sample ``index``: the same for the same (seed, index, size)."""
    rng = sample_rng(seed, index)
    labels = sample_labels(rng, label_set)
    return labels, render_sample(rng, labels, height, width, label_set)


def write_tiff(path: Path, image: np.ndarray) -> None:
    """A plain, reproducible 16-bit grayscale TIFF (no date, software or description tags)."""
    import tifffile

    tifffile.imwrite(path, image, photometric="minisblack", metadata=None, software=False, datetime=None)


def _write_sample(task: tuple[str, int, int, int, int, str]) -> tuple[int, str]:
    out, seed, index, height, width, sid = task
    labels, image = draw_sample(seed, index, height, width)
    for channel, plane in zip(CHANNELS, image):
        write_tiff(Path(out) / f"{sid}_{COLOUR_OF_CHANNEL[channel]}.tif", plane)
    return index, ";".join(HPA13.names(labels))


def _check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or not MIN_SIZE <= value <= MAX_SIZE:
            raise ProtlocError(f"image {name} must be an integer from {MIN_SIZE} to {MAX_SIZE} px, got {value!r}")


def generate_dataset(out: str | os.PathLike, samples: int, size: int = 512, seed: int = 0, *,
                     height: int | None = None, width: int | None = None, workers: int | None = None,
                     overwrite: bool = False, progress: bool | None = None) -> Path:
    """Write a synthetic data set in the ``channels`` layout: ``<id>_<colour>.tif`` and ``labels.csv``.

    ``height``/``width`` override ``size`` for non-square images. ``workers`` processes render in
    parallel (default: the CPUs this process may use); the output does not depend on their number. A non-empty ``out`` is refused unless ``overwrite``, which
    removes the TIFFs and labels of an earlier synthetic set there first.
    """
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or not 1 <= samples <= MAX_SAMPLES:
        raise ProtlocError(f"--samples must be a whole number from 1 to {MAX_SAMPLES}, got {samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ProtlocError(f"--seed must be a non-negative whole number, got {seed!r}")
    height = size if height is None else height
    width = size if width is None else width
    _check_size(height, width)
    workers = default_workers() if workers is None else workers
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ProtlocError(f"--workers must be at least 1, got {workers!r}")

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ProtlocError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ProtlocError(f"{out} is not empty; choose a new folder or pass --overwrite")
        _remove_previous(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProtlocError(f"cannot create {out}: {exc.strerror or exc}") from None

    tasks = [(str(out), int(seed), i, int(height), int(width), sample_id(i, samples)) for i in range(samples)]
    labels: dict[int, str] = {}
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=samples, desc="synth", unit="sample", disable=not show, file=sys.stderr)
    try:
        if workers == 1 or samples == 1:
            for task in tasks:
                index, text = _write_sample(task)
                labels[index] = text
                bar.update()
        else:
            import multiprocessing

            # fork: no re-import of the caller's __main__ (works from scripts without a main guard)
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
            with multiprocessing.get_context(method).Pool(min(workers, samples)) as pool:
                chunk = max(1, min(16, samples // (8 * workers)))
                for index, text in pool.imap_unordered(_write_sample, tasks, chunksize=chunk):
                    labels[index] = text
                    bar.update()
    finally:
        bar.close()

    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "labels"])
        for index, task in enumerate(tasks):
            writer.writerow([task[5], labels[index]])
    return out


def default_workers() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, available)


def _remove_previous(out: Path) -> None:
    """Remove an earlier synthetic set's files; refuse to touch a folder holding anything else."""
    ours = [p for p in out.iterdir() if p.name == "labels.csv" or (p.name.startswith(ID_PREFIX) and p.suffix == ".tif")]
    others = [p for p in out.iterdir() if p not in ours]
    if others:
        raise ProtlocError(f"{out} holds files that are not a synthetic data set (e.g. {others[0].name}); "
                           "choose another folder")
    for path in ours:
        path.unlink()
