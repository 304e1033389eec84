"""Nuclei and whole cells from the reference channels (the classic CellProfiler recipe, scikit-image).

1. Nuclei: the nucleus channel is smoothed, thresholded by Otsu's method with hysteresis (dim
   nuclei kept down to halfway to the background where part of them passes; holes filled, specks
   removed), and touching nuclei are split by a watershed on the distance transform seeded by its
   local maxima (at least about half a nucleus apart).
2. Cells: a seeded watershed from the nuclei over the smoothed microtubule + ER signal (each channel
   scaled by its own upper percentile, so neither dominates), restricted to the foreground where
   that signal exceeds Otsu's threshold of its logarithm; a cell always keeps its own nucleus.

Sizes are relative to the nuclei: the median nucleus diameter is estimated from a first coarse
threshold, and the work runs on a copy downsampled so that a nucleus is about ``WORK_DIAMETER`` px
across (a 2048² HPA field with ~150 px nuclei runs at a quarter of its size); the labels come back
at full resolution by nearest-neighbour upsampling. No pixel size has to be guessed, which is why
the scale is read from the image rather than assumed.
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


def estimate_nucleus_diameter(nucleus: np.ndarray) -> float:
    """Median diameter (px) of the connected bright objects of the nucleus channel, from a coarse pass.

    Runs on a copy about 512 px across; 0 when nothing stands out of the background.
    """
    factor = max(1, int(max(nucleus.shape) // 512))
    coarse = ndi.gaussian_filter(_downsample(nucleus, factor), 1.0)
    threshold = _otsu(coarse)
    mask = coarse > threshold
    labels, n = ndi.label(mask)
    if n == 0:
        return 0.0
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas >= 4]  # single-pixel specks say nothing about the size of nuclei
    if areas.size == 0:
        return 0.0
    # The largest objects first: clumps of touching nuclei overstate it less than specks understate it.
    median_area = float(np.median(areas[areas >= 0.25 * np.median(areas)]))
    return float(2.0 * np.sqrt(median_area / np.pi) * factor)


def segment_nuclei(nucleus: np.ndarray, diameter: float) -> np.ndarray:
    """Nuclei label image (int32) of a nucleus plane at working resolution, nuclei ``diameter`` px wide."""
    from skimage.feature import peak_local_max
    from skimage.filters import apply_hysteresis_threshold
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    smooth = ndi.gaussian_filter(nucleus, max(1.0, diameter / 16.0))
    high = _otsu(smooth)
    if not np.isfinite(high):
        return np.zeros(nucleus.shape, dtype=np.int32)
    # Hysteresis: dim nuclei (out of focus, weakly stained) are kept down to halfway between the
    # background and Otsu's threshold, when part of them passes Otsu's threshold.
    background = float(np.median(smooth[smooth <= high]))
    mask = apply_hysteresis_threshold(smooth, background + 0.5 * (high - background), high)
    mask = ndi.binary_fill_holes(mask)
    min_area = max(4, int(MIN_NUCLEUS_FRACTION * np.pi * (diameter / 2.0) ** 2))
    mask = remove_small_objects(mask, max_size=min_area - 1) if _has_max_size() else remove_small_objects(
        mask, min_size=min_area)
    if not mask.any():
        return np.zeros(nucleus.shape, dtype=np.int32)
    # Touching nuclei: one seed per maximum of the smoothed distance transform, at least ~0.45
    # diameters apart (two nuclei closer than that would overlap by more than half).
    distance = ndi.gaussian_filter(ndi.distance_transform_edt(mask), max(1.0, diameter / 16.0))
    components, _ = ndi.label(mask)
    peaks = peak_local_max(distance, min_distance=max(2, int(0.45 * diameter)), labels=components,
                           exclude_border=False)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # A component without a peak (flat distance) still gets one seed.
    unseeded = np.setdiff1d(np.unique(components[mask]), np.unique(components[markers > 0]))
    for offset, component in enumerate(unseeded, start=len(peaks) + 1):
        ys, xs = np.nonzero(components == component)
        markers[ys[len(ys) // 2], xs[len(xs) // 2]] = offset
    nuclei = watershed(-distance, markers, mask=mask)
    return nuclei.astype(np.int32)


def _has_max_size() -> bool:
    """scikit-image >= 0.26 renamed remove_small_objects' ``min_size`` (removes < min_size) to
    ``max_size`` (removes <= max_size)."""
    import inspect

    from skimage.morphology import remove_small_objects

    return "max_size" in inspect.signature(remove_small_objects).parameters


def grow_cells(nuclei: np.ndarray, microtubules: np.ndarray, er: np.ndarray, diameter: float) -> np.ndarray:
    """Whole cells (int32, the ids of their nuclei) by a seeded watershed over the cytoplasm signal."""
    from skimage.segmentation import watershed

    sigma = max(1.0, diameter / 12.0)
    cytoplasm = ndi.gaussian_filter(_scaled(microtubules) + _scaled(er), sigma)
    # Otsu on the log: the cytoplasm's brightness spans an order of magnitude between cells, and a
    # linear threshold would cut dim cells down to their brightest part.
    logged = np.log1p(50.0 * cytoplasm)
    foreground = (logged > _otsu(logged)) | (nuclei > 0)
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
