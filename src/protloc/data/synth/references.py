"""The reference channels drawn for every field: nuclei with nucleoli, microtubules, ER."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protloc.data.synth.canvas import Canvas, polylines
from protloc.data.synth.field import Field


@dataclass
class References:
    nucleus: np.ndarray
    microtubules: np.ndarray  # the network, peak ~1
    er: np.ndarray  # the reticular ER, peak ~1
    nucleoli: np.ndarray  # nucleoli blobs, peak ~1


def draw_nucleoli(rng: np.random.Generator, field: Field) -> np.ndarray:
    # nucleoli dissolve in mitosis
    counts = np.where(field.mitotic, 0, rng.integers(2, 6, field.n))
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
    start = field.mtoc[cells].copy()
    angle0 = rng.uniform(0, 2 * math.pi, len(cells))
    # mitosis: a spindle, half the fibres from each pole, aimed at the chromosome plate
    spindle = field.mitotic[cells]
    other_pole = rng.random(len(cells)) < 0.5
    flip = spindle & other_pole
    start[flip] = 2 * field.nuc_centre[cells[flip]] - field.mtoc[cells[flip]]
    towards = field.golgi_angle[cells] + np.where(flip, 0.0, math.pi)
    angle0 = np.where(spindle, towards + rng.normal(0, 0.45, len(cells)), angle0)
    ys, xs = polylines(start, angle0, steps, rng.normal(0, 0.006, len(cells)), 0.025, rng, step=spacing)
    cells_pts = np.broadcast_to(cells[:, None], ys.shape)
    ys, xs, cells_pts = ys.ravel(), xs.ravel(), cells_pts.ravel()
    ok = field.keep(ys, xs, cells_pts)
    # over the nucleus the network is out of focus and faint
    in_nucleus = (field.dn_at(ys, xs) < 0) & ~field.mitotic[cells_pts]
    weight = np.where(in_nucleus, 0.25, 1.0) * rng.uniform(0.6, 1.0, len(ys))
    canvas = Canvas(field.height, field.width)
    canvas.add(ys[ok], xs[ok], weight[ok] * 0.55, 0.6, "line", spacing)
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
    # condensed chromosomes stain brighter than an interphase nucleus
    brightness = field.per_cell(rng.uniform(0.7, 1.0, field.n) * np.where(field.mitotic, 1.6, 1.0))
    nucleus = field.nucleus * brightness * (0.8 + 0.12 * field.texture) * (1.0 - 0.55 * np.minimum(nucleoli, 1.0))
    return References(nucleus=nucleus, microtubules=draw_microtubules(rng, field), er=draw_er(rng, field),
                      nucleoli=nucleoli)

