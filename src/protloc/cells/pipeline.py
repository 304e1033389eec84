"""One image to its cells, many images to the per-cell table, the AnnData file and the pictures.

``analyse_image`` is the library call the CLI (``protloc cells``) and any other front end use:
segmentation (or the user's masks), then every cell's embedding and probabilities.
``analyse_entry`` is one listed input to its part (read, analyse, label images and picture): the
single-process loop and a Dask worker's shard (``protloc.distributed``) both call it.
``run_cells`` walks the inputs of a command line and writes

- the per-cell table (``.csv`` or ``.parquet``): image id, cell id, centroid (y, x, px of the
  input), area and nucleus area (px of the input), border flag, expression (the cell's protein
  signal relative to the field's strongest cell), signal_to_noise (the same signal in units of the
  slide background's noise, the same scale in every field: "no signal" below 1), one probability
  column per class (``scoring``: by default ``protloc.cells.scoring.DEFAULT_SCORING``), the
  predicted classes (";"-joined, per-class thresholds of the model) and the top class (empty for a
  cell gated to 0: no signal);
- ``<out stem>.h5ad``: AnnData with obs = that table and X = the embeddings (SubCell's convention);
- ``<out stem>-masks/<id>_cellmask.png`` and ``_nucleimask.png``: the label images (the ``--masks``
  layout, so they can be corrected and fed back);
- with ``maps``: ``<id>_cells.png``, outlines coloured by each cell's top class;
- with ``embeddings``: ``<out stem>.images.h5ad``, one row per image (image-level embedding).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protloc.errors import DataError, ProtlocError

@dataclass
class ImageCells:
    image_id: str
    cells: np.ndarray
    nuclei: np.ndarray | None
    predictions: object  # features.CellPredictions
    border: np.ndarray
    centroids: np.ndarray  # [n, 2] (y, x)
    areas: np.ndarray
    nucleus_areas: np.ndarray  # NaN where no nucleus mask exists

    def scores(self, classes, scoring: str | None = None) -> np.ndarray:
        """Per-cell answers [n, classes] (``protloc.cells.scoring``; default ``DEFAULT_SCORING``)."""
        return self.predictions.scores(classes, scoring)


@dataclass
class CellsResult:
    images: int = 0
    cells: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    no_cells: list[str] = field(default_factory=list)
    already_done: int = 0  # images whose part a killed run had finished (``protloc.cells.outputs``)
    errors_file: Path | None = None  # the skipped images and why (id, reason)


def require_cells_extra() -> None:
    missing = []
    for module, package in (("skimage", "scikit-image"), ("anndata", "anndata")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ProtlocError(f"single-cell analysis needs {', '.join(missing)}: pip install 'protloc[cells]'")


def cell_geometry(cells: np.ndarray, nuclei: np.ndarray | None, cell_ids: np.ndarray, boxes: list | None = None):
    """Centroids [n, 2] (y, x), areas and nucleus areas (NaN without a nucleus mask) of the cells,
    from one vectorised pass over the pixels (a loop over 65,535 cells took minutes). ``boxes``:
    not needed any more (accepted for the callers that pass them)."""
    from protloc.cells.pixels import cell_pixels

    n = len(cell_ids)
    areas = np.zeros(n, np.int64)
    sums = np.zeros((n, 2))
    inside_nuclei = np.zeros(n)
    for ys, xs, k in cell_pixels(cells, cell_ids):
        areas += np.bincount(k, minlength=n)
        sums[:, 0] += np.bincount(k, weights=ys, minlength=n)
        sums[:, 1] += np.bincount(k, weights=xs, minlength=n)
        if nuclei is not None:
            # A nucleus belongs to the cell its pixels lie in (its own id in protloc's and most tools' masks).
            inside_nuclei += np.bincount(k, weights=nuclei[ys, xs] != 0, minlength=n)
    centroids = sums / np.maximum(areas, 1)[:, None]
    nucleus_areas = inside_nuclei if nuclei is not None else np.full(n, np.nan)
    return centroids, areas, nucleus_areas


def analyse_image(predictor, image: np.ndarray, image_id: str = "image", *, cells: np.ndarray | None = None,
                  nuclei: np.ndarray | None = None, nucleus_diameter: float | None = None,
                  pixel_size_um: float | None = None, segment_beside=None) -> ImageCells:
    """Cells of one canonical sample [4, H, W]: segmented here unless ``cells`` (a label image) is given.

    ``pixel_size_um``: the image's µm per pixel; the network then sees it at the model's pixel size
    (``predict_cells``). Masks, centroids and areas stay on the input's pixel grid.
    ``ImageCells.scores(classes)`` gives the default per-cell answer.
    ``segment_beside``: an executor (``concurrent.futures``) that segments while this thread makes
    GapNet-PL's forward pass, which does not need the cells (the web worker: the two use two cores).
    The result is the same."""
    from protloc.cells.features import image_pass, is_gapnet, predict_cells
    from protloc.cells.segmentation import border_cells, segment

    made = None
    if cells is None and segment_beside is not None and is_gapnet(predictor.network):
        pending = segment_beside.submit(segment, image, nucleus_diameter)
        try:
            made = image_pass(predictor, image, pixel_size_um)
        finally:
            segmentation = pending.result()  # (a failed pass is raised after the segmentation is over)
        cells, nuclei = segmentation.cells, segmentation.nuclei
    elif cells is None:
        segmentation = segment(image, nucleus_diameter=nucleus_diameter)
        cells, nuclei = segmentation.cells, segmentation.nuclei
    elif cells.shape != image.shape[1:]:
        raise DataError(f"cell mask is {cells.shape[0]}x{cells.shape[1]} but the image is {image.shape[1]}x{image.shape[2]}")
    predictions = predict_cells(predictor, image, cells, pixel_size_um=pixel_size_um, made=made)
    ids = predictions.cell_ids
    flags = border_cells(cells)
    border = flags[ids - 1] if len(ids) else np.zeros(0, dtype=bool)
    centroids, areas, nucleus_areas = cell_geometry(cells, nuclei, ids, predictions.boxes)
    return ImageCells(image_id, cells, nuclei, predictions, border, centroids, areas, nucleus_areas)


def cell_probabilities(result: ImageCells, image_prior: bool = False, classes=None,
                       scoring: str | None = None) -> np.ndarray:
    """The table's probabilities: ``scoring`` (``protloc.cells.scoring``), else the geometric mean
    with ``image_prior`` (the older flag), else the default combination."""
    if scoring is None:
        from protloc.cells.scoring import DEFAULT_SCORING

        scoring = "geometric-mean" if image_prior else DEFAULT_SCORING
    return result.predictions.scores(classes, scoring)


def cell_rows(result: ImageCells, predictor, image_prior: bool = False, scoring: str | None = None) -> list[dict]:
    """The table rows of one image's cells."""
    rows = []
    preds = result.predictions
    scores = cell_probabilities(result, image_prior, predictor.classes, scoring)
    expression = preds.expression if preds.expression is not None else np.full(len(preds.cell_ids), np.nan)
    snr = getattr(preds, "signal_to_noise", None)
    snr = snr if snr is not None else np.full(len(preds.cell_ids), np.nan)
    for k, cell_id in enumerate(preds.cell_ids):
        probs = scores[k]
        row = {
            "image_id": result.image_id, "cell_id": int(cell_id),
            "centroid_y": round(float(result.centroids[k, 0]), 2), "centroid_x": round(float(result.centroids[k, 1]), 2),
            "area": int(result.areas[k]), "nucleus_area": float(result.nucleus_areas[k]),
            "border": bool(result.border[k]), "expression": round(float(expression[k]), 4),
            "signal_to_noise": round(float(snr[k]), 3),
        }
        row.update({cls: float(p) for cls, p in zip(predictor.classes, probs)})
        row["predicted"] = ";".join(predictor.predicted(probs))
        # a cell gated to 0 in every class shows no protein signal: no top class (not the first class)
        row["top_class"] = predictor.classes[int(np.argmax(probs))] if np.max(probs, initial=0.0) > 0 else ""
        rows.append(row)
    return rows


def _top_above_threshold(probs: np.ndarray, predictor) -> str | None:
    above = probs >= predictor.thresholds
    if not above.any():
        return None
    return predictor.classes[int(np.argmax(np.where(above, probs, -1.0)))]


def _pixel_size(size, predictor, said: dict) -> float | None:
    """The input's µm per pixel (``--pixel-size``, its metadata or layout, as read with the sample),
    said once per run as ``protloc predict`` says it (``protloc.data.pixel_size``)."""
    from protloc.data.pixel_size import describe, warn_unknown

    if not said.get("described") and (size.known or predictor.pixel_size_um is None):
        print(describe(size, predictor.pixel_size_um), file=sys.stderr)
        said["described"] = True
    if not size.known and not said.get("warned"):
        warn_unknown(predictor.pixel_size_um)
        said["warned"] = True
    return size.um


def run_cells(inputs, model, out, *, masks_dir=None, maps_dir=None, embeddings: bool = False,
              image_prior: bool = False, nucleus_diameter: float | None = None, device: str = "cpu",
              input_format: str | None = None, scoring: str | None = None, pixel_size: float | None = None,
              reader_options: dict | None = None, progress: bool = False, precision: str = "fp32",
              max_pixels: int | None = None) -> CellsResult:
    """Segment (or read the masks of) every input image, predict its cells and write the outputs.

    ``masks_dir``: a folder of ``<id>_cellmask`` images or an OME-Zarr store with NGFF labels
    (``protloc.cells.masks.open_masks``). ``scoring``: the table's per-cell answer
    (``protloc.cells.scoring.SCORINGS``; default ``DEFAULT_SCORING``, ``image_prior`` = ``geometric-mean``).
    ``pixel_size``: µm per pixel of the inputs (default: stated by their files or layout).
    ``precision``: of GapNet-PL's pass (``protloc.inference.precision``; int8 has no feature maps).
    ``max_pixels``: the readers' pixel limit (None: protloc.data.limits.DEFAULT_MAX_PIXELS)."""
    from protloc.cells.masks import open_masks
    from protloc.cells.outputs import CellParts, output_paths, remove_stale_pictures, write_outputs
    from protloc.cells.scoring import DEFAULT_SCORING, check_scoring
    from protloc.data.formats import discover
    from protloc.data.pixel_size import check_pixel_size
    from protloc.inference.predictor import load_model

    require_cells_extra()
    scoring = check_scoring(scoring or ("geometric-mean" if image_prior else DEFAULT_SCORING))
    if pixel_size is not None:
        check_pixel_size(pixel_size)
    paths = output_paths(out)
    masks = open_masks(masks_dir) if masks_dir is not None else None
    from protloc.inference.precision import resolve_precision

    ran_at = resolve_precision(precision, device, maps=True).precision  # int8 refused before any work
    predictor = load_model(model, device=device, precision=precision)
    entries = discover(inputs, format=input_format, reader_options=reader_options)
    predictor.fields = len(entries)  # a long run compiles GapNet-PL's SELU
    paths["table"].parent.mkdir(parents=True, exist_ok=True)
    run_options = {"model": str(model), "network": predictor.name, "scoring": scoring, "masks": str(masks_dir),
                   "nucleus_diameter": nucleus_diameter, "pixel_size": pixel_size, "format": input_format,
                   "reader": reader_options or {}, "precision": ran_at}
    parts = CellParts(paths["table"], run_options)
    try:
        result = _analyse_all(entries, predictor, parts, paths, masks, maps_dir, scoring, nucleus_diameter,
                              pixel_size, progress, max_pixels)
    except BaseException:
        parts.close()
        raise
    try:
        write_outputs(result, predictor, paths, scoring, ran_at, embeddings)
    finally:
        parts.close()
    parts.remove()  # complete: the finished images' parts are in the outputs now
    remove_stale_pictures(paths, maps_dir)
    result.rows = result.image_rows = result.cell_embeddings = result.image_embeddings = []
    return result


def new_result() -> CellsResult:
    """An empty result that ``add_part`` fills, image by image, in input order."""
    result = CellsResult()
    result.rows, result.cell_embeddings, result.image_rows, result.image_embeddings = [], [], [], []
    result.method = None
    return result


def add_part(result: CellsResult, image_id: str, part: dict) -> None:
    """One finished image's part (``analyse_entry``'s, or read back from a parts folder) into the result."""
    image_row = dict(part["image_row"])
    result.method = image_row.pop("method", None) or result.method
    result.images += 1
    result.cells += len(part["rows"])
    if not len(part["rows"]):
        result.no_cells.append(image_id)
    result.rows.append(part["rows"])
    result.cell_embeddings.append(part["embeddings"])
    result.image_rows.append(image_row)
    result.image_embeddings.append(part["image_embedding"])


def analyse_entry(entry, predictor, *, masks=None, masks_out: Path | None = None, maps_dir=None,
                  scoring: str | None = None, nucleus_diameter: float | None = None,
                  pixel_size: float | None = None, said: dict | None = None,
                  max_pixels: int | None = None) -> tuple[dict | str, object, Path | None]:
    """One listed input to its part: ``(part, pixel size, overlay)``, or ``(reason, None, None)`` when it
    is skipped (unreadable, a mask that does not fit). The part holds the table rows (a DataFrame), the
    cells' embeddings, the image-level row and embedding; the label images (into ``masks_out``, without
    ``masks``) and the overlay (into ``maps_dir``) are written before it is returned, so a saved part
    means every file of the image is there. ``said``: the pixel-size line is printed once per run."""
    import pandas as pd

    from protloc.cells.outputs import cell_columns
    from protloc.data.label_images import write_label_image
    from protloc.data.formats import read
    from protloc.visualization import class_overlay, save_png

    try:
        sample = read(entry, max_pixels=max_pixels, pixel_size=pixel_size)
        image = sample.image
    except ProtlocError as exc:
        return str(exc), None, None
    except Exception as exc:  # a decoder's own exception type: report it, keep going
        return f"{type(exc).__name__}: {exc}", None, None
    try:
        cells = nuclei = None
        if masks is not None:
            cells, nuclei = masks.read(entry, image.shape[1:])
        analysed = analyse_image(predictor, image, entry.id, cells=cells, nuclei=nuclei,
                                 nucleus_diameter=nucleus_diameter,
                                 pixel_size_um=_pixel_size(sample.pixel_size, predictor, {} if said is None else said))
    except DataError as exc:
        return str(exc), None, None
    preds = analysed.predictions
    image_row = {"image_id": entry.id, "cells": len(preds.cell_ids),
                 **{c: float(p) for c, p in zip(predictor.classes, preds.image_probabilities)},
                 "predicted": ";".join(predictor.predicted(preds.image_probabilities)),
                 "method": preds.method}
    part = {"rows": pd.DataFrame(cell_rows(analysed, predictor, scoring=scoring),
                                 columns=cell_columns(predictor.classes)),
            "embeddings": preds.embeddings, "image_row": image_row, "image_embedding": preds.image_embedding}
    if masks is None:
        write_label_image(Path(masks_out) / f"{entry.id}_cellmask.png", analysed.cells)
        write_label_image(Path(masks_out) / f"{entry.id}_nucleimask.png", analysed.nuclei)
    overlay = None
    if maps_dir is not None:
        scores = analysed.scores(predictor.classes, scoring)
        by_id = dict(zip(preds.cell_ids.tolist(), [_top_above_threshold(p, predictor) for p in scores]))
        colours = [by_id.get(i) for i in range(1, int(analysed.cells.max(initial=0)) + 1)]
        picture = class_overlay(image, analysed.cells, analysed.nuclei, colours, predictor.classes)
        overlay = save_png(Path(maps_dir) / f"{entry.id}_cells.png", picture)
    return part, sample.pixel_size, overlay


def _analyse_all(entries, predictor, parts, paths, masks, maps_dir, scoring, nucleus_diameter, pixel_size,
                 progress, max_pixels=None) -> CellsResult:
    """Every image's cells: a finished image's part read back, the others analysed and saved as parts."""
    from tqdm.auto import tqdm

    result = new_result()
    said: dict = {}
    for entry in tqdm(entries, desc="cells", unit="image", disable=not progress):
        part = parts.load(entry.id)
        if part is None:
            part, _, overlay = analyse_entry(entry, predictor, masks=masks, masks_out=paths["masks"],
                                             maps_dir=maps_dir, scoring=scoring, nucleus_diameter=nucleus_diameter,
                                             pixel_size=pixel_size, said=said,
                                             max_pixels=max_pixels)
            if isinstance(part, str):
                result.failures.append((entry.id, part))
                continue
            if overlay is not None:
                result.files.append(overlay)
            parts.save(entry.id, **part)
        else:
            result.already_done += 1
        add_part(result, entry.id, part)
    return result


def report(result: CellsResult, out) -> None:
    from protloc.cells.outputs import output_paths

    print(f"{result.cells} cell(s) in {result.images} image(s), {result.already_done} already done -> {out}")
    paths = output_paths(out)
    others = [paths["h5ad"]] + ([paths["masks"]] if paths["masks"].is_dir() else [])
    others += [p for p in result.files if p.suffix == ".h5ad" and p != paths["h5ad"]]
    overlays = {p.parent for p in result.files if p.name.endswith("_cells.png")}
    print("also: " + ", ".join(str(p) for p in others + sorted(overlays)))
    for image_id in result.no_cells:
        print(f"  {image_id}: no cells found", file=sys.stderr)
