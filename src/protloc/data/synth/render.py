"""A whole field: cell layout, reference channels, the protein in its compartments, the camera.

Like real HTI data the labels are noisy with respect to the image: some cells do not express the
protein, expression varies from cell to cell, in a multi-label field a cell may show only some of
the field's compartments, a few cells are in mitosis, and illumination, brightness and camera noise
(Poisson + Gaussian) vary between fields. ``render_field`` returns, beside the image, what each
cell shows (the per-cell truth).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from protloc.data.synth.compartments import COMPARTMENT_DRAWERS
from protloc.data.synth.field import make_field
from protloc.data.synth.references import draw_references
from protloc.errors import ProtlocError
from protloc.labels import HPA13, LabelSet

MIN_SIZE = 32
MAX_SIZE = 16384
# Chance that a cell of a field expresses the protein, drawn per field from this range.
EXPRESSION_PROB = (0.55, 1.0)
# Chance that an expressing cell of a multi-label field shows a given one of the field's compartments
# (every compartment is shown by at least one cell, every expressing cell shows at least one).
SHOW_PROB = 0.85
# Photons at a channel's brightest structure: dim to bright stainings (the dimmest still above the
# read noise, as an HTI screen's acquisition settings would ensure).
MIN_PEAK_PHOTONS = 300.0
MAX_PEAK_PHOTONS = 2500.0


@dataclass(frozen=True)
class CellTruth:
    """What one cell of a field shows; ``cell_id`` is its value in the field's cell mask."""

    cell_id: int
    classes: tuple[str, ...]  # the compartments its protein is drawn in (empty: not expressing)
    expressing: bool
    mitotic: bool
    touches_border: bool
    area_px: int


@dataclass
class RenderedField:
    image: np.ndarray  # uint16 [4, H, W] in CHANNELS order
    cell_mask: np.ndarray  # uint16/uint32 [H, W]: 0 background, 1..N the cells in the image
    nuclei_mask: np.ndarray  # same dtype: each nucleus carries its cell's id
    cells: list[CellTruth]



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


def check_field_size(height: int, width: int) -> None:
    """ProtlocError unless a synthetic field's height and width are whole numbers in [MIN_SIZE, MAX_SIZE]."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or not MIN_SIZE <= value <= MAX_SIZE:
            raise ProtlocError(f"image {name} must be an integer from {MIN_SIZE} to {MAX_SIZE} px, got {value!r}")


def _class_names(labels: Sequence[int | str], label_set: LabelSet) -> list[str]:
    names = [label_set.classes[c] if isinstance(c, (int, np.integer)) else label_set.classes[label_set.index(c)]
             for c in labels]
    unknown = [name for name in names if name not in COMPARTMENT_DRAWERS]
    if unknown:
        raise ProtlocError(f"no synthetic morphology for class {unknown[0]!r}")
    return list(dict.fromkeys(names))


def _who_shows_what(rng: np.random.Generator, area: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: whether it expresses, and [classes, n] which of the field's compartments it shows."""
    n = len(area)
    visible = area > 0
    expresses = rng.random(n) < rng.uniform(*EXPRESSION_PROB)
    if not (expresses & visible).any():  # at least one cell in the image shows the protein
        expresses[rng.choice(n, p=area / area.sum())] = True
    shows = rng.random((classes, n)) < SHOW_PROB if classes > 1 else np.ones((1, n), dtype=bool)
    candidates = np.flatnonzero(expresses & visible)
    for k in range(classes):
        if not (shows[k] & expresses & visible).any():
            shows[k, rng.choice(candidates)] = True
    for cell in np.flatnonzero(~shows.any(axis=0)):
        shows[rng.integers(classes), cell] = True
    return expresses, shows & expresses


def _label_images(field) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell and nuclei masks numbered 1..N over the cells present in the image; the area of each cell."""
    area = np.bincount(field.owner.ravel() + 1, minlength=field.n + 1)[1:]
    lut = np.zeros(field.n + 1, dtype=np.int64)
    present = np.flatnonzero(area > 0)
    lut[present + 1] = np.arange(1, len(present) + 1)
    dtype = np.uint16 if len(present) <= np.iinfo(np.uint16).max else np.uint32
    cell_mask = lut[field.owner + 1].astype(dtype)
    nuclei_mask = np.where(field.nucleus > 0.5, cell_mask, 0).astype(dtype)
    return cell_mask, nuclei_mask, area


def render_field(rng: np.random.Generator | int, labels: Sequence[int | str], height: int,
                 width: int | None = None, label_set: LabelSet = HPA13) -> RenderedField:
    """Render one field with its per-cell truth; the image is uint16 [4, H, W] in ``CHANNELS`` order.

    ``labels`` are class indices or names of ``label_set``; the protein is drawn in those compartments.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    width = height if width is None else width
    check_field_size(height, width)
    names = _class_names(labels, label_set)

    field = make_field(rng, height, width)
    refs = draw_references(rng, field)
    cell_mask, nuclei_mask, area = _label_images(field)

    expresses, shows = _who_shows_what(rng, area, len(names))
    level = np.where(expresses, rng.lognormal(0.0, 0.35, field.n), 0.0)
    protein = np.zeros((height, width), dtype=np.float32)
    for k, name in enumerate(names):
        protein += rng.uniform(0.55, 1.0) * COMPARTMENT_DRAWERS[name](rng, field, refs, level * shows[k])
    protein += 0.03 * field.cell  # unspecific staining

    illumination = _illumination(rng, height, width)
    image = np.empty((4, height, width), dtype=np.uint16)
    for channel, signal in enumerate((refs.nucleus, refs.microtubules, refs.er, protein)):
        peak = float(np.exp(rng.uniform(np.log(MIN_PEAK_PHOTONS), np.log(MAX_PEAK_PHOTONS))))
        image[channel] = _camera(rng, signal, illumination, peak, background=peak * rng.uniform(0.01, 0.05))

    border = np.zeros(field.n + 1, dtype=bool)
    for edge in (field.owner[0], field.owner[-1], field.owner[:, 0], field.owner[:, -1]):
        border[edge + 1] = True
    cells = []
    for i in np.flatnonzero(area > 0):
        cells.append(CellTruth(
            cell_id=len(cells) + 1, classes=tuple(name for k, name in enumerate(names) if shows[k, i]),
            expressing=bool(expresses[i]), mitotic=bool(field.mitotic[i]), touches_border=bool(border[i + 1]),
            area_px=int(area[i])))
    return RenderedField(image, cell_mask, nuclei_mask, cells)


def render_sample(rng: np.random.Generator | int, labels: Sequence[int | str], height: int,
                  width: int | None = None, label_set: LabelSet = HPA13) -> np.ndarray:
    """Render one field: uint16 [4, H, W] in ``CHANNELS`` order (nucleus, microtubules, ER, protein)."""
    return render_field(rng, labels, height, width, label_set).image
