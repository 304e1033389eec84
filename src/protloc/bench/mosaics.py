"""Real fields tiled into mosaics: per-cell truth for real cells (``protloc.bench.cells_real``).

Real HPA data carries one label set per field, not per cell. Tiling fields with different labels
into one picture makes a field whose cells differ, with a known truth for each cell: the labels of
the field it comes from. A cell that reaches within ``margin`` px of a seam is left out (it may be
cut by the seam, or merged with a cell of the next tile by the segmentation).

- ``list_fields``: the labelled fields of a data folder, their labels mapped onto the model's classes
  (``protloc.labels``: e.g. the built-in ``kaggle28-to-hpa13``); fields whose labels map to nothing
  are not used; only fields of the most common size and pixel size are tiled (a mosaic has one
  pixel size, and every tile keeps its own).
- ``arrange_mosaics``: the seeded arrangement (a JSON-able list: which fields, in which order, on
  which grid, in which half), so that any figure can be rebuilt from it.
- ``build_mosaic`` / ``tile_labels``: the picture and a label image of tiles side by side.
- ``cell_tiles``: each cell's tile, or -1 for a cell on a seam.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from protloc.errors import ProtlocError

HALVES = ("selection", "report")


@dataclass(frozen=True)
class Field:
    id: str
    labels: tuple[str, ...]  # the model's classes, mapped from the data's labels
    pixel_size_um: float | None
    shape: tuple[int, int]


def list_fields(data, classes, mapping: str | None = "kaggle28-to-hpa13"):
    """(data-set index, usable fields, {id: why not used}) of a labelled data folder.

    The folder is scanned, not opened through its saved index, so nothing is written into it."""
    from protloc.data.index import scan_dataset
    from protloc.evaluation.external import resolve_mapping
    from protloc.labels import LabelSet

    index = scan_dataset(data)
    model_set = LabelSet(name="model", classes=tuple(classes))
    found = resolve_mapping(index.label_set, model_set, mapping if index.label_set.classes != tuple(classes) else None)
    candidates, skipped = [], {}
    for entry in index.samples:
        if entry.labels is None:
            skipped[entry.id] = "no labels"
            continue
        targets = found.map_indices(entry.labels) if found is not None else tuple(sorted(set(entry.labels)))
        if not targets:
            skipped[entry.id] = "its labels map to none of the model's classes"
            continue
        size = index.pixel_size(entry)
        candidates.append(Field(entry.id, tuple(classes[t] for t in targets), size.um, (entry.height, entry.width)))
    if not candidates:
        raise ProtlocError(f"{data}: no labelled field whose labels reach the model's classes")
    common = Counter((f.shape, f.pixel_size_um) for f in candidates).most_common(1)[0][0]
    fields = []
    for f in candidates:
        if (f.shape, f.pixel_size_um) == common:
            fields.append(f)
        else:
            skipped[f.id] = f"{f.shape[0]}x{f.shape[1]} at {f.pixel_size_um} µm/px, not the common {common}"
    return index, fields, skipped


def arrange_mosaics(fields: list[Field], count: int, seed: int = 0, grids=(2, 3), tries: int = 1000) -> list[dict]:
    """``count`` mosaics, the grids taken in turn, each of fields drawn without repeats whose label
    sets differ pairwise; seeded. Half of them (seeded) are the ``selection`` half, the rest ``report``."""
    rng = np.random.default_rng(seed)
    mosaics = []
    for number in range(count):
        grid = grids[number % len(grids)]
        for _ in range(tries):
            chosen, seen = [], set()
            for k in rng.permutation(len(fields)):
                if fields[k].labels not in seen:
                    chosen.append(fields[k])
                    seen.add(fields[k].labels)
                if len(chosen) == grid * grid:
                    break
            if len(chosen) == grid * grid:
                break
        else:
            raise ProtlocError(f"fewer than {grid * grid} different label sets among {len(fields)} fields: "
                               f"no {grid}x{grid} mosaic")
        mosaics.append({"id": f"mosaic-{number:03d}", "grid": grid, "tiles": [f.id for f in chosen],
                        "labels": [list(f.labels) for f in chosen]})
    order = rng.permutation(count)
    for rank, k in enumerate(order):
        mosaics[k]["half"] = HALVES[0] if rank < count // 2 else HALVES[1]
    return mosaics


def build_mosaic(tiles: list[np.ndarray], grid: int) -> np.ndarray:
    """Tiles [C, h, w] (row by row) side by side: [C, grid*h, grid*w]."""
    if len(tiles) != grid * grid or len({t.shape for t in tiles}) != 1:
        raise ProtlocError(f"a {grid}x{grid} mosaic needs {grid * grid} tiles of one size")
    rows = [np.concatenate(tiles[r * grid : (r + 1) * grid], axis=-1) for r in range(grid)]
    return np.ascontiguousarray(np.concatenate(rows, axis=-2))


def tile_labels(masks: list[np.ndarray], grid: int) -> np.ndarray:
    """Label images of the tiles side by side, ids made distinct (each tile's ids after the last's)."""
    shifted, offset = [], 0
    for mask in masks:
        mask = np.asarray(mask).astype(np.int32)
        shifted.append(np.where(mask > 0, mask + offset, 0).astype(np.int32))
        offset += int(mask.max(initial=0))
    return build_mosaic([m[None] for m in shifted], grid)[0]


def cell_tiles(cells: np.ndarray, cell_ids: np.ndarray, boxes, grid: int, margin: int = 4) -> np.ndarray:
    """Each cell's tile index (row by row) or -1 when its bounding box comes within ``margin`` px of
    a seam (or crosses one). The mosaic's outer edge is no seam: cells there keep their tile."""
    height, width = cells.shape
    tile_h, tile_w = height // grid, width // grid
    tiles = np.full(len(cell_ids), -1, np.int64)
    for k, cell_id in enumerate(cell_ids):
        box = boxes[int(cell_id) - 1]
        y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
        row, column = y0 // tile_h, x0 // tile_w
        if (y0 - row * tile_h < margin and row > 0) or (x0 - column * tile_w < margin and column > 0):
            continue
        if ((row + 1) * tile_h - y1 < margin and row < grid - 1) or ((column + 1) * tile_w - x1 < margin
                                                                     and column < grid - 1):
            continue
        tiles[k] = row * grid + column
    return tiles
