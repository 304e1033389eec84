"""Per-cell sums over a label image, vectorised: work grows with the pixels, whatever the number of
cells (a Python loop over the cells of a 65,535-cell mask took minutes)."""

from __future__ import annotations

import numpy as np

# Largest (cells x grid cells of a band) tallied with bincount (its int64 counts: 32 MB at most).
BINCOUNT_LIMIT = 1 << 22


def cell_pixels(labels: np.ndarray, cell_ids: np.ndarray, band: int = 512):
    """(y, x, k) of the pixels that belong to one of ``cell_ids``, ``k`` the cell's index in
    ``cell_ids``, a band of ``band`` rows at a time (memory bounded whatever the image's size)."""
    cell_ids = np.asarray(cell_ids, dtype=np.int64)
    if not len(cell_ids):
        return
    order = np.argsort(cell_ids, kind="stable")
    ordered = cell_ids[order]
    for y0 in range(0, labels.shape[0], band):
        part = labels[y0 : y0 + band]
        ys, xs = np.nonzero(part)
        ids = part[ys, xs]
        at = np.minimum(np.searchsorted(ordered, ids), len(ordered) - 1)
        keep = ordered[at] == ids
        yield ys[keep] + y0, xs[keep], order[at[keep]]


def coverage_matrix(labels: np.ndarray, cell_ids: np.ndarray, stride: int):
    """The fraction of each grid cell (``stride`` px square, clipped at the image edge) each cell
    covers, as a sparse matrix [cells, grid cells] (row-major grid), from one vectorised pass over
    the labels: the cost grows with the pixels, not with pixels times cells."""
    from scipy import sparse

    height, width = labels.shape
    gh, gw = -(-height // stride), -(-width // stride)
    band = max(1, 512 // stride) * stride
    keys, counts = [], []
    for ys, xs, cells in cell_pixels(labels, cell_ids, band=band):
        if not len(ys):
            continue
        # Keys within the band's own grid rows (cell, grid cell), counted by bincount where that range
        # is small: the same sorted keys and counts as np.unique, without sorting every pixel (the
        # sort was half of a 1024² upload's per-cell step). Many cells: np.unique as before.
        top = (int(ys[0]) // band) * (band // stride)  # the band's first grid row (bands hold whole grid rows)
        local = (ys // stride - top) * gw + xs // stride
        span = (band // stride) * gw
        if len(cell_ids) * span <= BINCOUNT_LIMIT:
            tally = np.bincount(cells * span + local, minlength=len(cell_ids) * span)
            local_key = np.flatnonzero(tally)
            count = tally[local_key]
        else:
            local_key, count = np.unique(cells * span + local, return_counts=True)
        cell, within = np.divmod(local_key, span)
        keys.append(cell * (gh * gw) + top * gw + within)
        counts.append(count)
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    count = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    cell, grid = np.divmod(key, gh * gw)
    heights = np.minimum(stride, height - np.arange(gh) * stride)
    widths = np.minimum(stride, width - np.arange(gw) * stride)
    areas = np.outer(heights, widths).reshape(-1)
    return sparse.csr_matrix(((count / areas[grid]).astype(np.float32), (cell, grid)), shape=(len(cell_ids), gh * gw))
