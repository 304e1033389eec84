"""The protein channel: one drawer per class, each with its compartment's morphology.

Each drawer returns a map with peak about 1 and takes ``expr``, the per-cell expression level of the
protein in that compartment (0 for a cell that does not show it).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from protloc.data.synth.canvas import Canvas, polylines, random_points_in_cells
from protloc.data.synth.field import Field, ellipse_radius
from protloc.data.synth.references import References

# A protein packed into a small compartment is brighter per pixel than the same protein spread over the
# cytosol or the nucleoplasm: puncta (centrosome, Golgi) are drawn this many times brighter than a
# diffuse stain's plateau, which keeps a dot visible when it co-occurs with a diffuse class.
DIFFUSE_LEVEL = 0.5
PUNCTA_LEVEL = 2.0

Drawer = Callable[[np.random.Generator, Field, References, np.ndarray], np.ndarray]


def _nucleus(rng, field, refs, expr):
    return field.nucleus * (DIFFUSE_LEVEL + 0.06 * field.texture) * (1.0 - 0.3 * np.minimum(refs.nucleoli, 1.0)) * field.per_cell(expr)


def _nucleoli(rng, field, refs, expr):
    return np.minimum(refs.nucleoli, 1.0) * field.per_cell(expr)


def _nuclear_membrane(rng, field, refs, expr):
    """A thin, uneven rim at the nuclear envelope over a faint nucleoplasm."""
    rim = np.exp(-((field.dn / 0.9) ** 2)) * np.clip(1.0 + 0.4 * field.texture[:, ::-1], 0.2, 2.0)
    return (rim + 0.15 * field.nucleus) * field.cell * field.per_cell(expr)


def _cytosol(rng, field, refs, expr):
    cytoplasm = field.cytoplasm
    return cytoplasm * DIFFUSE_LEVEL * np.clip(1.0 + 0.25 * field.texture, 0.0, 2.0) * field.per_cell(expr)


def _outline(field: Field, expr: np.ndarray, gain: float) -> np.ndarray:
    """A thin continuous line along each cell's outline, junctions between neighbours included; each
    outline pixel is as bright as the brighter of its cells (a non-expressing cell has none)."""
    owner = field.owner
    edge = np.zeros(owner.shape, dtype=bool)
    vertical = owner[1:, :] != owner[:-1, :]
    horizontal = owner[:, 1:] != owner[:, :-1]
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    level = field.per_cell(expr)
    level = np.maximum(level, ndi.maximum_filter(level, size=3)) * edge
    return np.minimum(ndi.gaussian_filter(level, 0.8, truncate=3.0) * gain, 1.0)


def _plasma_membrane(rng, field, refs, expr):
    """A thin rim at each cell's outline over a dense, fine granularity of membrane across the cell,
    denser towards its edge (the dorsal membrane seen in a confocal section). Few, bright granules read
    as vesicles to the real-trained network; thousands of faint ones as membrane."""
    counts = rng.integers(4000, 6000, field.n)
    ys, xs, cells = random_points_in_cells(rng, field, counts, field.cell_radius * 0.3, field.cell_radius * 1.3,
                                           power=0.3)
    ok = field.keep(ys, xs, cells)
    canvas = Canvas(field.height, field.width)
    canvas.add(ys[ok], xs[ok], 0.15 * rng.uniform(0.3, 1.0, ok.sum()) * expr[cells[ok]], 0.6, "dot")
    return _outline(field, expr, 0.5) + canvas.render()


def _mitochondria(rng, field, refs, expr):
    """A dense network of thin tubules (4-20 px) over the cytoplasm, densest around the nucleus."""
    counts = rng.integers(140, 240, field.n)
    r_min = field.nuc_axes.mean(1) + 1.0
    ys0, xs0, cells = random_points_in_cells(rng, field, counts, r_min, field.cell_radius * 1.1, power=1.8)
    steps = 20
    length = rng.uniform(4.0, 20.0, len(cells))
    ys, xs = polylines(np.column_stack([ys0, xs0]), rng.uniform(0, 2 * math.pi, len(cells)), steps,
                       rng.normal(0, 0.1, len(cells)), 0.15, rng)
    within = np.arange(steps)[None, :] < length[:, None]
    cells_pts = np.broadcast_to(cells[:, None], ys.shape)[within]
    ys, xs = ys[within], xs[within]
    ok = field.keep(ys, xs, cells_pts) & (field.dn_at(ys, xs) > 0.5)
    weight = np.repeat(rng.uniform(0.4, 1.0, len(cells)), within.sum(1))
    canvas = Canvas(field.height, field.width)
    canvas.add(ys[ok], xs[ok], 0.7 * weight[ok] * expr[cells_pts[ok]], 0.6, "line")
    return np.minimum(canvas.render(), 1.2)


def _actin_filaments(rng, field, refs, expr):
    """A bright cortical rim along the cell outline, and stress fibres (thin bundles, parallel within
    a cell, ending in focal adhesions) with a ruffled cortex over a granular haze. Without the rim
    the real-trained network does not read fibres as actin."""
    counts = rng.integers(6, 16, field.n)
    cells = np.repeat(np.arange(field.n), counts)
    theta = rng.uniform(0, math.pi, field.n)[cells] + rng.normal(0, 0.12, len(cells))
    across = rng.uniform(-1.0, 1.0, len(cells)) * field.cell_radius[cells]
    half = 1.6 * field.cell_radius.max()
    # start at one end of a chord through the cell centre, offset sideways by `across`
    normal = np.column_stack([np.cos(theta), -np.sin(theta)])
    direction = np.column_stack([np.sin(theta), np.cos(theta)])
    start = field.centre[cells] + normal * across[:, None] - direction * half
    steps = int(2 * half)
    ys, xs = polylines(start, theta, steps, np.zeros(len(cells)), 0.004, rng)
    cells_pts = np.broadcast_to(cells[:, None], ys.shape).ravel()
    ys, xs = ys.ravel(), xs.ravel()
    iy = np.clip(np.rint(ys).astype(int), 0, field.height - 1)
    ix = np.clip(np.rint(xs).astype(int), 0, field.width - 1)
    rc = field.rc[iy, ix]
    ok = field.keep(ys, xs, cells_pts) & (rc < 0.97)
    # fibres are brighter towards their ends, where they anchor in focal adhesions
    weight = np.repeat(rng.uniform(0.3, 1.0, len(cells)), steps) * (0.6 + 0.8 * np.clip(rc - 0.6, 0, 1) / 0.4)
    canvas = Canvas(field.height, field.width)
    canvas.add(ys[ok], xs[ok], 1.4 * weight[ok] * expr[cells_pts[ok]], 0.6, "line")
    level = field.per_cell(expr)
    ruffles = np.clip(1.0 + 0.6 * field.texture[::-1], 0.0, 2.5)
    cortex = np.exp(-(((field.rc - 0.93) / 0.05) ** 2)) * field.cell * 0.3 * level * ruffles
    haze = 0.04 * field.cytoplasm * level
    return np.minimum(_outline(field, expr, 1.0) + 0.5 * (canvas.render() + cortex + haze), 1.3)


def _microtubules(rng, field, refs, expr):
    return refs.microtubules * field.per_cell(expr)


def _intermediate_filaments(rng, field, refs, expr):
    """Long wavy fibres that wind around the nucleus: a curved cage, unlike the radial microtubules."""
    counts = rng.integers(12, 20, field.n)
    r_min = field.nuc_axes.mean(1) + 3.0
    ys0, xs0, cells = random_points_in_cells(rng, field, counts, r_min, field.cell_radius * 0.8, power=1.3)
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
    canvas.add(ys[ok], xs[ok], 0.6 * expr[cells_pts[ok]], 0.7, "line")
    return np.minimum(canvas.render(), 1.2)


def _centrosome(rng, field, refs, expr):
    """One or two bright dots at the centrosome, beside the nucleus."""
    two = rng.random(field.n) < 0.5
    ys, xs, ws = [field.mtoc[:, 0]], [field.mtoc[:, 1]], [expr]
    # the second centriole sits beside the first, along the nuclear envelope
    tangent = np.column_stack([np.cos(field.golgi_angle), -np.sin(field.golgi_angle)])
    jitter = tangent * rng.choice([-1.0, 1.0], (field.n, 1)) * rng.uniform(3.0, 4.5, (field.n, 1))
    # in mitosis the duplicated centrosomes are the two spindle poles
    two |= field.mitotic
    jitter[field.mitotic] = 2 * (field.nuc_centre - field.mtoc)[field.mitotic]
    ys.append(field.mtoc[two, 0] + jitter[two, 0])
    xs.append(field.mtoc[two, 1] + jitter[two, 1])
    ws.append(expr[two])
    canvas = Canvas(field.height, field.width)
    # centrioles are the brightest and tightest puncta of all
    canvas.add(np.concatenate(ys), np.concatenate(xs), 1.5 * PUNCTA_LEVEL * np.concatenate(ws), 1.0, "dot")
    return np.minimum(canvas.render(), 1.8 * PUNCTA_LEVEL)


def _golgi(rng, field, refs, expr):
    """A compact ribbon of small bright elements hugging the nucleus on one side (the centrosome's)."""
    counts = rng.integers(25, 50, field.n)
    cells = np.repeat(np.arange(field.n), counts)
    spread = rng.uniform(0.25, 0.6, field.n)[cells]
    phi = field.golgi_angle[cells] + rng.normal(0, 1.0, len(cells)) * spread
    edge = ellipse_radius(field.nuc_axes[cells], field.nuc_angle[cells], phi)
    r = edge + 1.0 + rng.gamma(2.0, 2.0, len(cells))
    ys = field.nuc_centre[cells, 0] + r * np.sin(phi)
    xs = field.nuc_centre[cells, 1] + r * np.cos(phi)
    ok = field.keep(ys, xs, cells)
    canvas = Canvas(field.height, field.width)
    canvas.add(ys[ok], xs[ok], 0.6 * PUNCTA_LEVEL * rng.uniform(0.4, 1.0, ok.sum()) * expr[cells[ok]], 0.9, "dot")
    haze = 0.06 * field.cytoplasm * field.per_cell(expr)
    return np.minimum(canvas.render(), 1.2 * PUNCTA_LEVEL) + haze


def _er(rng, field, refs, expr):
    return refs.er * field.per_cell(expr)


def _vesicles(rng, field, refs, expr):
    """Many small dots scattered over the cytoplasm."""
    counts = rng.integers(60, 120, field.n)
    r_min = field.nuc_axes.mean(1) + 1.0
    ys, xs, cells = random_points_in_cells(rng, field, counts, r_min, field.cell_radius * 1.1)
    ok = field.keep(ys, xs, cells)
    canvas = Canvas(field.height, field.width)
    canvas.add(ys[ok], xs[ok], 0.75 * PUNCTA_LEVEL * rng.uniform(0.4, 1.0, ok.sum()) * expr[cells[ok]], 0.9, "dot")
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

