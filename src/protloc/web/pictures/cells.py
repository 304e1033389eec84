"""A submission's cells on the platform: computed by the worker with the library call
(``protloc.cells.pipeline.analyse_image``) right after the probabilities, stored with them, served
by the API (``/cells``, paginated) and drawn on the result page.

Stored per submission: a ``CellResult`` row (one entry per cell: id, centroid, area, border flag,
per-class probabilities, predicted classes, top class and an outline polygon for the page) and the
label image with the submission's pictures in the store (``cellmask.png``; downloads name it
``<sample>_cellmask.png``, the ``--masks`` layout of ``protloc cells``).
When no cells can be given (no cells found, a network without GapNet-PL's head, scikit-image not
installed, the segmentation failed) the row says why in ``note`` and the submission is done anyway:
cells never cost a submission its probabilities.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from protloc.cells.extra import missing_extra
from protloc.web.storage import db

log = logging.getLogger("protloc.web.cells")
OFF_NOTE = ("no cells for this submission: its worker ran with --no-cells (or it was predicted before "
            "the platform computed cells)")
PENDING_NOTE = "cells come with the probabilities: the submission is not done yet"
# Outline polygons are traced on a grid of this many display pixels.
OUTLINE_GRID = 2
SORT_KEYS = ("cell_id", "area", "border", "centroid_x", "centroid_y", "top_class", "top_probability")
# How a submission's image-level probabilities were computed (``Result.probabilities_from``; NULL: an
# older row, always patches). With cells on and a GapNet-PL model they come from the pass the cells need.
WHOLE_IMAGE, PATCHES = "whole-image", "patches"
PROBABILITIES_FROM = {
    WHOLE_IMAGE: "whole image, one pass of the network (the cells come from the same pass)",
    PATCHES: "covering patches of the training crop size, their sigmoid outputs averaged (as `protloc predict`)",
}


def labels_path(store, submission_id: str) -> Path | None:
    """The stored label image of a submission (16-bit PNG; 32-bit TIFF past 65535 cells), or None.
    It lies with the submission's pictures (``UploadStore.render_dir``), so any store keeps it."""
    folder = store.render_dir(submission_id)
    for suffix in (".png", ".tif"):
        path = folder / f"cellmask{suffix}"
        if path.is_file():
            return path
    return None


def save_labels(store, submission_id: str, labels: np.ndarray) -> Path:
    """The submission's label image (written atomically by the one writer: a reader never sees half a file)."""
    from protloc.data.label_images import write_label_image

    return write_label_image(store.render_dir(submission_id) / "cellmask.png", labels)


def load_labels(store, submission_id: str) -> np.ndarray | None:
    from protloc.cells.masks import read_label_image

    path = labels_path(store, submission_id)
    return read_label_image(path) if path is not None else None


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """A closed polygon without its vertices that lie on a straight line between their neighbours
    (a traced pixel edge is mostly such runs); vectorised, unlike Douglas-Peucker in skimage."""
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    turning = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9
    return points[turning] if turning.sum() >= 3 else points


def outlines(labels: np.ndarray, cell_ids, factor: int) -> dict[int, list[list[int]]]:
    """Each cell's outline as a polygon [[x, y], ...] in full-resolution pixels, traced on the label
    image taken every ``factor`` pixels (the page uses them to find and highlight a cell, the picture
    shows the exact outline: a coarse grid is enough and keeps this cheap)."""
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    small = labels[factor // 2 :: factor, factor // 2 :: factor]
    boxes = ndi.find_objects(small)
    polygons: dict[int, list[list[int]]] = {}
    for cell_id in cell_ids:
        box = boxes[cell_id - 1] if cell_id - 1 < len(boxes) else None
        if box is None:  # smaller than the grid: the page draws a dot at its centroid instead
            continue
        crop = np.pad(small[box] == cell_id, 1)
        contours = find_contours(crop.astype(np.float32), 0.5)
        if not contours:
            continue
        contour = _drop_collinear(max(contours, key=len)[:-1])  # closed: the last point repeats the first
        y0, x0 = box[0].start - 1, box[1].start - 1  # the padding
        corners = np.rint((contour[:, ::-1] + (x0 + 0.5, y0 + 0.5)) * factor).astype(np.int64)
        polygons[int(cell_id)] = corners.tolist()  # [[x, y], ...]
    return polygons


class CellsStage:
    """The worker's cell step; ``enabled=False`` is ``--no-cells`` (no row is written at all)."""

    def __init__(self, store, enabled: bool = True, segmenters: int = 1) -> None:
        self.store = store
        self.enabled = enabled
        self.missing = missing_extra() if enabled else None
        if self.missing:
            log.warning("cells are off: %s", self.missing)
        # Segmentation runs here while the worker's lane makes the forward pass (one per lane).
        self._segmenters = segmenters
        self._beside: ThreadPoolExecutor | None = None
        self._beside_lock = threading.Lock()

    def segment_beside(self) -> ThreadPoolExecutor:
        with self._beside_lock:
            if self._beside is None:
                self._beside = ThreadPoolExecutor(self._segmenters, thread_name_prefix="protloc-segmentation")
            return self._beside

    def close(self) -> None:
        with self._beside_lock:
            if self._beside is not None:
                self._beside.shutdown(wait=False, cancel_futures=True)
                self._beside = None

    def one_pass(self, predictor) -> bool:
        """Whether this stage gives the submission's probabilities too: cells on and a GapNet-PL, whose
        whole-image pass yields the image's probabilities and every cell's (``predict_cells``)."""
        from protloc.cells.features import is_gapnet

        return self.enabled and not self.missing and is_gapnet(predictor.network)

    def probabilities_from(self, predictor) -> str:
        return WHOLE_IMAGE if self.one_pass(predictor) else PATCHES

    def compute_with_probabilities(self, predictor, submission_id: str, image: np.ndarray,
                                   pixel_size_um: float | None = None) -> tuple[np.ndarray, db.CellResult]:
        """(image probabilities, cells) from one whole-image pass (``one_pass`` models only): the
        probabilities are ``predict_cells``' ``image_probabilities``, as ``protloc cells`` gives them.
        If the segmentation fails, the cells say why and the probabilities come from a plain
        whole-image pass (the same answer; a pass made beside the failed segmentation is not kept);
        a failing network raises."""
        probabilities, record = self._analyse(predictor, submission_id, image, pixel_size_um)
        if probabilities is None:
            probabilities = predictor.inferer(whole_image=True)(image, pixel_size_um)
        return probabilities, record

    def compute(self, predictor, submission_id: str, image: np.ndarray,
                pixel_size_um: float | None = None) -> db.CellResult | None:
        """The submission's cells as a row to store with its result (never raises for one image).
        ``pixel_size_um``: the sample's, as its probabilities used it (the network sees the cells at
        the model's pixel size; masks and geometry stay on the upload's pixel grid)."""
        if not self.enabled:
            return None
        if self.missing:
            return db.CellResult(submission_id=submission_id, count=0, cells=[], note=self.missing)
        from protloc.cells.features import is_gapnet

        if not is_gapnet(predictor.network):
            return db.CellResult(submission_id=submission_id, count=0, cells=[],
                                 note=f"per-cell predictions on the platform need a GapNet-PL model "
                                      f"(this one is {predictor.model_name}); `protloc cells` does the others")
        return self._analyse(predictor, submission_id, image, pixel_size_um)[1]

    def _analyse(self, predictor, submission_id: str, image: np.ndarray,
                 pixel_size_um: float | None) -> tuple[np.ndarray | None, db.CellResult]:
        """(the image's probabilities from the cells' pass, or None if it did not run; the cells)."""
        started = time.monotonic()
        probabilities = None
        try:
            from protloc.cells.pipeline import analyse_image, cell_rows
            from protloc.visualization import display_factor

            analysed = analyse_image(predictor, image, submission_id, pixel_size_um=pixel_size_um,
                                     segment_beside=self.segment_beside())
            probabilities = np.asarray(analysed.predictions.image_probabilities, np.float32)
            rows = cell_rows(analysed, predictor)
            polygons = outlines(analysed.cells, [r["cell_id"] for r in rows],
                                OUTLINE_GRID * display_factor(*analysed.cells.shape, full=False))
            save_labels(self.store, submission_id, analysed.cells)
        except Exception as exc:  # this image's cells only: the probabilities are stored regardless
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("%s: cells failed: %s", submission_id, reason, exc_info=not isinstance(exc, ValueError))
            return probabilities, db.CellResult(submission_id=submission_id, count=0, cells=[],
                                                note=f"cell segmentation failed: {reason}",
                                                seconds=time.monotonic() - started)
        classes = list(predictor.classes)
        cells = [{
            "cell_id": r["cell_id"], "centroid_y": r["centroid_y"], "centroid_x": r["centroid_x"], "area": r["area"],
            "border": r["border"], "probabilities": [round(r[c], 6) for c in classes],
            "predicted": [c for c in r["predicted"].split(";") if c], "top_class": r["top_class"],
            "outline": polygons.get(r["cell_id"], []),
        } for r in rows]
        return probabilities, db.CellResult(submission_id=submission_id, count=len(cells), cells=cells,
                                            note=None if cells else "no cells found in this image",
                                            seconds=time.monotonic() - started)


# -- reading them back ---------------------------------------------------------------------------


def cell_view(cell: dict, classes: list[str], outline: bool = True) -> dict:
    """One stored cell as the API shows it: probabilities by class name, the top class's probability."""
    probabilities = dict(zip(classes, cell["probabilities"]))
    view = {key: cell[key] for key in ("cell_id", "centroid_y", "centroid_x", "area", "border", "predicted", "top_class")}
    view["top_probability"] = probabilities.get(cell["top_class"], 0.0)
    view["probabilities"] = probabilities
    if outline:
        view["outline"] = cell.get("outline", [])
    return view


def summary(result: db.Result | None, status: str, base: str) -> dict:
    """What a submission's JSON says of its cells: how many, why none, where they are (from its
    result's ``cells_count`` and ``cells_note``: listing or polling never reads the cells)."""
    computed = status == db.DONE and result is not None and result.cells_count is not None
    if status != db.DONE or result is None:
        count, note = 0, PENDING_NOTE
    elif result.cells_count is None:
        count, note = 0, OFF_NOTE
    else:
        count, note = result.cells_count, result.cells_note
    links = {"cells": f"{base}/cells", "mask": f"{base}/cells/mask"}
    if count:
        links["overlay"] = f"{base}/images/cells.png"
    return {"count": count, "computed": computed, "note": note, "links": links}


def answering_precision(predictor, method: str | None) -> str:
    """The precision a submission's probabilities come from: the whole-image pass of the cells runs
    the predictor's precision resolved for feature maps, the covering patches its image-level one."""
    from protloc.inference.precision import resolve_precision

    return resolve_precision(getattr(predictor, "precision", "fp32"), getattr(predictor, "device", "cpu"),
                             maps=method == WHOLE_IMAGE).precision


def probabilities_view(method: str | None) -> dict:
    """How a submission's (or a model's) image probabilities are computed, as the API and page say it."""
    method = method or PATCHES
    return {"method": method, "description": PROBABILITIES_FROM[method]}


def sort_cells(cells: list[dict], sort: str, classes: list[str]) -> list[dict]:
    """``sort`` is a key of SORT_KEYS or a class name (its probability), ``-`` first for descending."""
    from protloc.web.errors import UploadError

    descending = sort.startswith("-")
    key = sort.lstrip("-")
    if key in classes:
        index = classes.index(key)
        return sorted(cells, key=lambda c: c["probabilities"][index], reverse=descending)
    if key not in SORT_KEYS:
        raise UploadError(422, f"cannot sort cells by {key[:60]!r}: use {', '.join(SORT_KEYS)} or a class name, "
                               "with '-' first for descending")
    if key == "top_probability":
        def value(c):
            return c["probabilities"][classes.index(c["top_class"])] if c["top_class"] in classes else 0.0
    else:
        def value(c):
            return c[key]
    return sorted(cells, key=value, reverse=descending)


def colour_classes(cells: list[dict], classes: list[str]) -> dict[int, str | None]:
    """The class each cell's outline is drawn in: its most probable predicted class (None: no class
    over its threshold), the colouring of ``protloc cells --maps``."""
    chosen = {}
    for cell in cells:
        predicted = [c for c in cell["predicted"] if c in classes]
        chosen[cell["cell_id"]] = max(predicted, key=lambda c: cell["probabilities"][classes.index(c)]) if predicted else None
    return chosen


def render_overlay(image: np.ndarray, labels: np.ndarray, record: db.CellResult, classes: list[str],
                   factor: int, path: Path) -> None:
    """The cell outlines over the composite at display size, coloured by class (the page gives the
    legend: drawn into a small picture it would hide the cells)."""
    from protloc.visualization import NO_CLASS, class_colours, outline_overlay, save_png, shrink

    small = shrink(image, factor).astype(np.float32, copy=False)
    grid = labels[factor // 2 :: factor, factor // 2 :: factor][: small.shape[1], : small.shape[2]]
    by_id = colour_classes(record.cells, classes)
    colour_of = class_colours(classes)
    colours = [colour_of.get(by_id.get(i), NO_CLASS) for i in range(1, int(grid.max(initial=0)) + 1)]
    save_png(path, outline_overlay(small, grid, None, colours, thickness=max(1, round(max(grid.shape) / 500))))
