"""Nuclei and whole cells from the reference channels (the classic CellProfiler recipe, scikit-image).

1. Nuclei: the nucleus channel is smoothed and thresholded twice: above the background (Otsu's
   threshold of its logarithm, so dim nuclei count as well as bright ones) and above a fraction of
   the brightest signal within half a nucleus (each nucleus ends at its own edge, whatever its
   brightness); holes filled, specks removed. Touching nuclei are split by a watershed on the
   distance transform, seeded by its h-maxima (one seed per maximum that rises a little above the
   saddle to its neighbour), computed after the dim seams between nuclei are cut out.
2. Cells: a seeded watershed from the nuclei over the smoothed microtubule + ER signal (each channel
   scaled by its own upper percentile, so neither dominates), restricted to the foreground where
   that signal exceeds Otsu's threshold of its logarithm and a fraction of the brightest cytoplasm
   nearby (no spill into faint haze); a cell always keeps its own nucleus.

Sizes are relative to the nuclei: the median nucleus diameter is estimated from a first coarse
threshold, and the work runs on a copy downsampled so that a nucleus is about ``WORK_DIAMETER`` px
across (a 2048² HPA field with ~230 px nuclei runs at a seventh of its size); the labels come back
at full resolution by nearest-neighbour upsampling. No pixel size has to be guessed, which is why
the scale is read from the image rather than assumed. Method and measured figures:
docs/segmentation.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from protloc.errors import ProtlocError

# Nucleus diameter (px) the segmentation works at; coarser loses thin cytoplasm, finer costs time.
WORK_DIAMETER = 32.0
# Smallest object kept, as a fraction of the median nucleus area.
MIN_NUCLEUS_FRACTION = 0.15
# A nucleus ends where its signal falls below this fraction of the brightest within HALF_WINDOW
# diameters (its own centre, not the field's brightest nucleus).
EDGE_FRACTION = 0.3
HALF_WINDOW = 0.5
# Seams between touching nuclei: darker than GAP_FRACTION of the brightest within SEAM_WINDOW diameters.
GAP_FRACTION = 0.5
SEAM_WINDOW = 0.33
# A seed (one nucleus) is a distance-transform maximum at least this many diameters above its saddle.
SEED_DEPTH = 0.04
# A cell's foreground also needs this fraction of the brightest cytoplasm within CELL_WINDOW
# diameters: faint haze beside a dim cell is not part of it (a thin process of a bright one still is).
CELL_EDGE_FRACTION = 0.15
CELL_WINDOW = 2.0
# The values: chosen by looking at overlays of four Kaggle fields and the 2048² field, then by the
# matched nuclei on those (docs/segmentation.md; python -m protloc.bench.segmentation).


@dataclass
class Segmentation:
    """Label images (int32 [H, W], 0 = background, cells 1..n) and per-cell flags."""

    cells: np.ndarray
    nuclei: np.ndarray
    nucleus_diameter: float = 0.0  # estimated median nucleus diameter in full-resolution px
    scale: int = 1  # downsampling factor the segmentation ran at

    @property
    def count(self) -> int:
        return int(self.cells.max()) if self.cells.size else 0

    def border(self) -> np.ndarray:
        """bool [n]: whether cell i+1 touches the image border (flagged, never dropped)."""
        return border_cells(self.cells)


def border_cells(cells: np.ndarray) -> np.ndarray:
    n = int(cells.max()) if cells.size else 0
    flags = np.zeros(n + 1, dtype=bool)
    edge = np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]])
    flags[np.unique(edge)] = True
    return flags[1:]


def _downsample(plane: np.ndarray, factor: int) -> np.ndarray:
    """Block mean by ``factor`` (edges padded by reflection so every pixel counts)."""
    if factor == 1:
        return plane.astype(np.float32, copy=False)
    height, width = plane.shape
    pad_h, pad_w = -height % factor, -width % factor
    if pad_h or pad_w:
        plane = np.pad(plane, ((0, pad_h), (0, pad_w)), mode="reflect" if min(height, width) > 1 else "edge")
    h, w = plane.shape
    # Rows first, then columns, each as strided adds in order (numpy sums so few terms in that same
    # order, so the values are those of ``.sum``; a reduction over a short axis is several times
    # slower). From 8 terms on numpy sums columns pairwise: that reduction is kept there.
    plane = plane.astype(np.float32, copy=False)  # .sum(dtype=float32) converts each term first, too
    rows = plane[0::factor].copy()
    for k in range(1, factor):
        rows += plane[k::factor]
    if factor < 8:
        block = rows[:, 0::factor].copy()
        for k in range(1, factor):
            block += rows[:, k::factor]
    else:
        block = rows.reshape(h // factor, w // factor, factor).sum(axis=2)
    block *= np.float32(1.0 / (factor * factor))
    return block


def _upsample(labels: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    if factor == 1:
        return labels
    return np.repeat(np.repeat(labels, factor, axis=0), factor, axis=1)[: shape[0], : shape[1]]


def _scaled(plane: np.ndarray) -> np.ndarray:
    """Robustly scaled to ~[0, 1]: offset at the 1st percentile, divided by the 99.5th."""
    low, high = np.percentile(plane[:: 4, :: 4], (1.0, 99.5))
    return np.clip((plane - low) / max(float(high - low), 1e-6), 0.0, None).astype(np.float32)


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    if float(values.max()) <= float(values.min()):
        return float("inf")  # a flat image has no foreground
    return float(threshold_otsu(values))


def _log_otsu(values: np.ndarray) -> float:
    """Otsu's threshold of the logarithm: nuclei (or cells) whose brightness spans an order of
    magnitude all stand out of the background, where a linear Otsu splits bright ones from dim ones."""
    scale = max(float(np.percentile(values[::2, ::2], 99.9)), 1e-6)
    logged = np.log1p(np.maximum(values, 0.0) * np.float32(100.0 / scale))
    return float(np.expm1(_otsu(logged)) * scale / 100.0)


def estimate_nucleus_diameter(nucleus: np.ndarray) -> float:
    """Median diameter (px) of the nuclei in the nucleus channel, from a coarse pass.

    Runs on a copy about 512 px across; 0 when nothing stands out of the background. The objects are
    those above Otsu's threshold of the logarithm (dim nuclei count too), holes filled; only convex
    ones away from the image's edge (solidity > 0.85: not clumps of touching nuclei; not cut) are
    measured, and specks (under a fifth of the area-weighted median, itself hardly moved by specks)
    are left out of the median. A second pass cuts each object at its own edge as ``segment_nuclei``
    does (the first pass's objects carry the blur halo of bright nuclei) and measures again.
    """
    factor = max(1, int(max(nucleus.shape) // 512))
    coarse = ndi.gaussian_filter(_downsample(nucleus, factor), 2.0)
    threshold = _log_otsu(coarse)
    if not np.isfinite(threshold):
        return 0.0
    labels, n = ndi.label(fill_holes(coarse > threshold))
    if n == 0:
        return 0.0
    from skimage.measure import regionprops_table
    from skimage.segmentation import clear_border

    inside = clear_border(labels)
    labels = inside if inside.any() else labels  # a field of cut nuclei only: measure them anyway
    props = regionprops_table(labels, properties=("label", "area", "solidity"))
    usable = np.zeros(n + 1, dtype=bool)
    usable[props["label"][(props["area"] >= 16) & (props["solidity"] > 0.85)]] = True
    if not usable.any():
        usable[props["label"][props["area"] >= 4]] = True  # single-pixel specks say nothing
    diameter = _median_diameter(np.bincount(labels.ravel(), minlength=n + 1)[usable])
    if diameter > 0:
        # The same objects cut at their own edges (the first pass carries bright nuclei's blur halo).
        window = max(3, int(HALF_WINDOW * diameter) | 1)
        edged = usable[labels] & (coarse > EDGE_FRACTION * ndi.maximum_filter(coarse, size=window))
        areas = np.bincount(labels[edged], minlength=n + 1)[usable]
        diameter = _median_diameter(areas[areas >= 4]) or diameter
    return diameter * factor


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes(mask)``, the same pixels, from one labelling of the background: a hole is
    a background component (4-connected, binary_fill_holes' default structure) that does not touch
    the image's edge. SciPy's version dilates from the edge until nothing changes, several times
    slower (a fifth of a 1024² upload's segmentation, three calls)."""
    background, count = ndi.label(~np.asarray(mask, dtype=bool))
    if count == 0:
        return mask.astype(bool, copy=True)
    open_ = np.zeros(count + 1, dtype=bool)
    open_[np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])] = True
    open_[0] = False
    return ~open_[background]


def _median_diameter(areas: np.ndarray) -> float:
    """Diameter of the median area, leaving out specks under a fifth of the area-weighted median."""
    if areas.size == 0:
        return 0.0
    areas = np.sort(areas).astype(np.float64)
    cumulative = np.cumsum(areas)
    weighted_median = areas[np.searchsorted(cumulative, cumulative[-1] / 2.0)]
    median_area = float(np.median(areas[areas >= 0.2 * weighted_median]))
    return float(2.0 * np.sqrt(median_area / np.pi))


def segment_nuclei(nucleus: np.ndarray, diameter: float) -> np.ndarray:
    """Nuclei label image (int32) of a nucleus plane at working resolution, nuclei ``diameter`` px wide."""
    from skimage.segmentation import watershed

    smooth = ndi.gaussian_filter(nucleus, max(1.0, diameter / 16.0))
    low = _log_otsu(smooth)
    if not np.isfinite(low):
        return np.zeros(nucleus.shape, dtype=np.int32)
    # Foreground: above the background (Otsu of the log, so dim nuclei count) and above a fraction
    # of the brightest signal within half a nucleus, so each nucleus is cut at its own edge whatever
    # its brightness (a bright nucleus's blur halo is not a nucleus; a dim one is still kept).
    window = max(3, int(HALF_WINDOW * diameter) | 1)
    mask = (smooth > low) & (smooth > EDGE_FRACTION * ndi.maximum_filter(smooth, size=window))
    mask = fill_holes(mask)
    min_area = max(4, int(MIN_NUCLEUS_FRACTION * np.pi * (diameter / 2.0) ** 2))
    mask = remove_small(mask, min_area)
    if not mask.any():
        return np.zeros(nucleus.shape, dtype=np.int32)
    # Touching nuclei: the dim seam between them (below GAP_FRACTION of the brightest signal within a
    # third of a nucleus, on a lightly smoothed copy) is cut out first; holes that closes (dark
    # nucleoli) are filled back, seams open to the background stay cut. One seed per maximum of the
    # smoothed distance transform of what remains that rises at least SEED_DEPTH diameters above the
    # saddle to its neighbour (h-maxima: an elongated nucleus has a long flat ridge, not two peaks).
    fine = ndi.gaussian_filter(nucleus, max(1.0, diameter / 24.0))
    seam_window = max(3, int(SEAM_WINDOW * diameter) | 1)
    inner = fill_holes(mask & (fine > GAP_FRACTION * ndi.maximum_filter(fine, size=seam_window)))
    distance = ndi.gaussian_filter(ndi.distance_transform_edt(inner), max(1.0, diameter / 16.0))
    markers, count = ndi.label(_seeds(distance, inner, SEED_DEPTH * diameter, np.pi * (diameter / 2.0) ** 2))
    nuclei = watershed(-distance, markers, mask=mask)
    # A piece without a seed (cut off by a seam, too thin for a maximum) is a nucleus of its own.
    rest, extra = ndi.label(mask & (nuclei == 0))
    if extra:
        nuclei = np.where(rest > 0, rest + count, nuclei)
    return nuclei.astype(np.int32)


def _seeds(distance: np.ndarray, inner: np.ndarray, depth: float, nucleus_area: float) -> np.ndarray:
    """bool: the h-maxima of ``distance`` of depth ``depth``, component by component of ``inner``
    (h-maxima sorts every pixel it is given: the background and lone nuclei need none of that work).
    A component smaller than half a typical nucleus is one seed whatever its shape, if it is deep enough
    (a sliver cut off by a seam has no maximum of that depth and joins its neighbour)."""
    from skimage.morphology import h_maxima

    components, _ = ndi.label(inner)
    seeds = np.zeros(inner.shape, dtype=bool)
    sizes = np.bincount(components.ravel())
    for index, box in enumerate(ndi.find_objects(components), start=1):
        if box is None:
            continue
        own = components[box] == index
        # the component's highest point (ndi.maximum's value; it sorts every pixel of the image to find it)
        if distance[box][own].max() < depth:
            continue
        if sizes[index] < 0.5 * nucleus_area:
            seeds[box] |= own
        else:
            seeds[box] |= h_maxima(np.where(own, distance[box], 0.0), depth).astype(bool) & own
    return seeds


def remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """``mask`` without connected objects under ``min_area`` px; an object cut by the image's edge
    is kept down to a quarter of that (a nucleus mostly outside the field still has its cell)."""
    labels, count = ndi.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    minimum = np.full(count + 1, float(min_area))
    minimum[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = min_area / 4.0
    keep = sizes >= minimum
    keep[0] = False
    return keep[labels]


def grow_cells(nuclei: np.ndarray, microtubules: np.ndarray, er: np.ndarray, diameter: float) -> np.ndarray:
    """Whole cells (int32, the ids of their nuclei) by a seeded watershed over the cytoplasm signal."""
    from skimage.segmentation import watershed

    sigma = max(1.0, diameter / 12.0)
    cytoplasm = ndi.gaussian_filter(_scaled(microtubules) + _scaled(er), sigma)
    # Otsu on the log: the cytoplasm's brightness spans an order of magnitude between cells, and a
    # linear threshold would cut dim cells down to their brightest part.
    logged = np.log1p(50.0 * cytoplasm)
    foreground = logged > _otsu(logged)
    if CELL_EDGE_FRACTION:
        window = max(3, int(CELL_WINDOW * diameter) | 1)
        foreground &= cytoplasm > CELL_EDGE_FRACTION * ndi.maximum_filter(cytoplasm, size=window)
    foreground |= nuclei > 0
    # Dark pockets inside a cell (vacuoles, dim patches) smaller than a nucleus belong to the cell.
    foreground = _fill_small_holes(foreground, int(np.pi * (diameter / 2.0) ** 2))
    # The seeded watershed floods the inverted signal, so borders between cells follow the dim
    # gaps between them; a little compactness keeps a bright cell from swallowing its dim neighbour.
    cells = watershed(-cytoplasm, markers=nuclei, mask=foreground, compactness=0.001)
    cells[nuclei > 0] = nuclei[nuclei > 0]
    return cells.astype(np.int32)


def _fill_small_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    holes, count = ndi.label(~mask)
    if count == 0:
        return mask
    sizes = np.bincount(holes.ravel())
    small = sizes <= max_area
    small[0] = False
    # a hole touching the image edge is open background, not a hole
    small[np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))] = False
    return mask | small[holes]


def _relabel_sequential(cells: np.ndarray, nuclei: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids 1..n without gaps in both images (a nucleus keeps its cell's id; none without a cell)."""
    ids = np.unique(cells)
    ids = ids[ids > 0]
    lookup = np.zeros(int(max(cells.max(), nuclei.max())) + 1, dtype=np.int32)
    lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    nuclei = np.where(cells == nuclei, lookup[nuclei], 0).astype(np.int32)
    return lookup[cells], nuclei


def segment(image: np.ndarray, nucleus_diameter: float | None = None) -> Segmentation:
    """Nuclei and cells of a canonical sample [4, H, W] (nucleus, microtubules, ER, protein).

    ``nucleus_diameter`` in px overrides the estimate. An image without anything that stands out in
    the nucleus channel gives a segmentation of zero cells (not an error: callers report it).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] < 3:
        raise ProtlocError(f"expected a sample [4, height, width], got shape {list(image.shape)}")
    shape = image.shape[1:]
    diameter = float(nucleus_diameter) if nucleus_diameter else estimate_nucleus_diameter(image[0])
    if nucleus_diameter is not None and nucleus_diameter <= 0:
        raise ProtlocError(f"nucleus diameter must be positive, got {nucleus_diameter}")
    empty = np.zeros(shape, dtype=np.int32)
    if diameter <= 0:
        return Segmentation(empty, empty.copy(), 0.0, 1)
    factor = max(1, int(diameter // WORK_DIAMETER))
    work_diameter = diameter / factor
    nucleus, microtubules, er = (_downsample(image[c], factor) for c in range(3))
    nuclei = segment_nuclei(nucleus, work_diameter)
    if not nuclei.any():
        return Segmentation(empty, empty.copy(), diameter, factor)
    cells = grow_cells(nuclei, microtubules, er, work_diameter)
    cells, nuclei = _relabel_sequential(cells, nuclei)
    return Segmentation(_upsample(cells, factor, shape), _upsample(nuclei, factor, shape), diameter, factor)
