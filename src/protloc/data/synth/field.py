"""The cell layout of a field: where each cell, its nucleus and its centrosome are, pixel by pixel."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage as ndi

# The generator draws at this pixel size: a cell is about 90 px (45 µm) across and its nucleus about
# 38 px (19 µm) long, as in HPA's fields of U-2 OS or A-431 cells, and fine structures (filaments,
# puncta) are about one pixel wide, as a confocal image's are at this sampling. HPA's confocal
# originals are about 0.08 µm/px, Kaggle's 512² PNGs of them 0.32 µm/px. Geometry is in pixels and does not
# depend on the image size: a larger image holds more cells rather than larger ones.
PIXEL_SIZE_UM = 0.5
CELL_RADIUS = 44.0  # mean cell radius in pixels
# Chance that a cell is in mitosis (rounded up, chromosomes condensed into a plate, a spindle).
MITOTIC_PROB = 0.05


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
    mitotic: np.ndarray  # bool [n]: the cell is in mitosis (its "nucleus" is the chromosome plate)

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


def _place_centres(rng: np.random.Generator, height: int, width: int, radius: float,
                   density: float) -> np.ndarray:
    """Cell centres by dart throwing with a minimum distance; cells may be cut by the border.

    ``density`` is the fraction of a confluent field's cell count (1: cells touch their neighbours).
    """
    margin = 0.35 * radius
    target = max(1, int(round(height * width / (math.pi * radius**2) * density)))
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
    """Lay out the cells of a field: a power-diagram of irregular elongated cells, each with a nucleus.

    Fields range from sparse to confluent; cells are elongated to different degrees, their edges
    lobed at two scales; a few are in mitosis: rounded and smaller, the chromosomes condensed into a
    bright plate with a spindle pole (the centrosome) on either side.
    """
    scale = rng.uniform(0.85, 1.15)
    mean_radius = CELL_RADIUS * scale
    centre = _place_centres(rng, height, width, mean_radius, density=rng.uniform(0.45, 1.1))
    n = len(centre)
    mitotic = rng.random(n) < MITOTIC_PROB
    cell_radius = mean_radius * rng.uniform(0.8, 1.2, n) * np.where(mitotic, 0.6, 1.0)
    cell_aspect = np.where(mitotic, rng.uniform(1.0, 1.15, n), 1.0 + rng.gamma(2.0, 0.25, n))
    cell_angle = rng.uniform(0, math.pi, n)
    nuc_major = cell_radius * np.where(mitotic, rng.uniform(0.55, 0.7, n), rng.uniform(0.38, 0.48, n))
    nuc_ratio = np.where(mitotic, rng.uniform(2.8, 4.0, n), rng.uniform(1.0, 1.5, n))
    nuc_axes = np.column_stack([nuc_major, nuc_major / nuc_ratio])
    # the nucleus lies along the cell's long axis, as in spread cultured cells
    nuc_angle = cell_angle + rng.normal(0, 0.3, n)
    offset_angle = rng.uniform(0, 2 * math.pi, n)
    offset = cell_radius * np.where(mitotic, 0.0, rng.uniform(0.0, 0.2, n))
    nuc_centre = centre + np.column_stack([np.sin(offset_angle), np.cos(offset_angle)]) * offset[:, None]
    golgi_angle = rng.uniform(0, 2 * math.pi, n)
    # a mitotic cell's spindle poles sit either side of the plate, along its short axis
    golgi_angle = np.where(mitotic, nuc_angle + math.pi / 2, golgi_angle)
    # the centrosome sits just outside the nuclear envelope on the Golgi side
    mtoc_dist = ellipse_radius(nuc_axes, nuc_angle, golgi_angle) + np.where(
        mitotic, cell_radius * 0.45, rng.uniform(3.5, 6.0, n))
    mtoc = nuc_centre + np.column_stack([np.sin(golgi_angle), np.cos(golgi_angle)]) * mtoc_dist[:, None]

    shape_noise = smooth_noise(rng, height, width, 14.0)
    lobes = smooth_noise(rng, height, width, 40.0)
    owner = np.full((height, width), -1, dtype=np.int32)
    score = np.ones((height, width), dtype=np.float32)  # pixels stay background unless a cell scores < 1
    rc_map = np.full((height, width), 2.0, dtype=np.float32)
    dn_map = np.full((height, width), 99.0, dtype=np.float32)
    for i in range(n):
        reach = cell_radius[i] * math.sqrt(cell_aspect[i]) * 1.6
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
        roughness = 0.03 if mitotic[i] else 0.12
        rc = np.sqrt((u / a) ** 2 + (v / b) ** 2) * (
            1.0 + roughness * shape_noise[y0:y1, x0:x1] + 1.5 * roughness * lobes[y0:y1, x0:x1])
        # nucleus: rotated ellipse; dn ~ signed distance to its envelope in px
        dy, dx = ys - nuc_centre[i, 0], xs - nuc_centre[i, 1]
        c, s = math.cos(nuc_angle[i]), math.sin(nuc_angle[i])
        u, v = dx * c + dy * s, -dx * s + dy * c
        na, nb = nuc_axes[i]
        rn = np.sqrt((u / na) ** 2 + (v / nb) ** 2)
        dn = (rn - 1.0) * (0.5 * (na + nb)) if not mitotic[i] else (rn - 1.0) * nb
        # a cell always owns its own nucleus
        cell_score = np.where(dn < 2.0, rc * 0.3, rc)
        win = cell_score < score[y0:y1, x0:x1]
        score[y0:y1, x0:x1][win] = cell_score[win]
        owner[y0:y1, x0:x1][win] = i
        rc_map[y0:y1, x0:x1][win] = rc[win]
        dn_map[y0:y1, x0:x1][win] = dn[win]
    _drop_fragments(owner, rc_map, dn_map, nuc_centre)
    texture = smooth_noise(rng, height, width, 1.8)
    return Field(height, width, owner, dn_map, rc_map, centre, nuc_centre, nuc_axes, nuc_angle,
                 cell_radius, mtoc, golgi_angle, texture, mitotic)


def _drop_fragments(owner: np.ndarray, rc_map: np.ndarray, dn_map: np.ndarray, nuc_centre: np.ndarray) -> None:
    """Keep one connected piece per cell (the one holding its nucleus, else the largest) and fill its
    holes: the lobed edges can cut off islands and enclose gaps, which no real cell has."""
    for i, box in enumerate(ndi.find_objects(owner + 1)):  # label i + 1 is cell i
        if box is None:
            continue
        mine = owner[box] == i
        holes = ndi.binary_fill_holes(mine) & (owner[box] < 0)
        owner[box][holes] = i
        rc_map[box][holes] = 0.95
        dn_map[box][holes] = 20.0
        pieces, count = ndi.label(mine | holes)
        if count <= 1:
            continue
        cy, cx = int(round(nuc_centre[i, 0])) - box[0].start, int(round(nuc_centre[i, 1])) - box[1].start
        inside = 0 <= cy < pieces.shape[0] and 0 <= cx < pieces.shape[1]
        keep = pieces[cy, cx] if inside and pieces[cy, cx] > 0 else 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
        drop = (pieces > 0) & (pieces != keep)
        owner[box][drop] = -1
        rc_map[box][drop] = 2.0
        dn_map[box][drop] = 99.0


def ellipse_radius(axes: np.ndarray, angle: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Distance from an ellipse's centre to its edge in ``direction`` (image angle, y = sin)."""
    rel = direction - angle
    a, b = axes[:, 0], axes[:, 1]
    return a * b / np.sqrt((b * np.cos(rel)) ** 2 + (a * np.sin(rel)) ** 2)

