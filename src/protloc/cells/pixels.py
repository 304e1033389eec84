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
    table = index_of_ids(labels, cell_ids)
    if table is not None:  # a lookup of each pixel's cell: no 2-D nonzero, no searchsorted
        width = labels.shape[1]
        for y0 in range(0, labels.shape[0], band):
            part = labels[y0 : y0 + band].ravel()
            flat = np.flatnonzero(part)
            k = table[part[flat]]
            keep = k > 0
            ys, xs = np.divmod(flat[keep], width)
            yield ys + y0, xs, k[keep] - 1
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


def index_of_ids(labels: np.ndarray, cell_ids: np.ndarray) -> np.ndarray | None:
    """A table id -> 1 + the id's index in ``cell_ids`` (0: background or an id not listed), or None
    when the ids are far above the number of pixels (sparse ids up to 2^31: no such table) or
    negative (a table would wrap them round)."""
    cell_ids = np.asarray(cell_ids, dtype=np.int64)
    top = int(labels.max(initial=0))
    if top > 4 * labels.size + 65536 or int(labels.min(initial=0)) < 0 or int(cell_ids.min(initial=0)) < 0:
        return None
    table = np.zeros(max(top, int(cell_ids.max(initial=0))) + 1, dtype=np.int64)
    table[cell_ids] = np.arange(1, len(cell_ids) + 1)
    table[0] = 0
    return table


def coverage_matrix(labels: np.ndarray, cell_ids: np.ndarray, stride: int):
    """The fraction of each grid cell (``stride`` px square, clipped at the image edge) each cell
    covers, as a sparse matrix [cells, grid cells] (row-major grid), from one vectorised pass over
    the labels: the cost grows with the pixels, not with pixels times cells."""
    from scipy import sparse

    height, width = labels.shape
    gh, gw = -(-height // stride), -(-width // stride)
    band = max(1, 512 // stride) * stride
    span = (band // stride) * gw  # grid cells of one band of rows
    table = index_of_ids(labels, cell_ids)
    keys, counts = [], []
    if table is not None and (len(cell_ids) + 1) * span <= BINCOUNT_LIMIT:
        # Every pixel's (cell, grid cell of its band) counted by bincount: the same sorted keys and
        # counts as np.unique over the cells' pixels, without np.nonzero, searchsorted and a sort of
        # every pixel (those were 60% of a 1024² upload's per-cell step).
        grid = (np.arange(band)[:, None] // stride) * gw + np.arange(width)[None, :] // stride
        for y0 in range(0, height, band):
            part = table[labels[y0 : y0 + band]]
            tally = np.bincount((part * span + grid[: part.shape[0]]).ravel(),
                                minlength=(len(cell_ids) + 1) * span)[span:]
            local = np.flatnonzero(tally)
            cell, within = np.divmod(local, span)
            keys.append(cell * (gh * gw) + (y0 // stride) * gw + within)
            counts.append(tally[local])
    else:  # many cells or huge ids
        for ys, xs, cells in cell_pixels(labels, cell_ids, band=band):
            key, count = np.unique(cells * (gh * gw) + (ys // stride) * gw + xs // stride, return_counts=True)
            keys.append(key)
            counts.append(count)
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    count = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    cell, grid = np.divmod(key, gh * gw)
    heights = np.minimum(stride, height - np.arange(gh) * stride)
    widths = np.minimum(stride, width - np.arange(gw) * stride)
    areas = np.outer(heights, widths).reshape(-1)
    return sparse.csr_matrix(((count / areas[grid]).astype(np.float32), (cell, grid)), shape=(len(cell_ids), gh * gw))
