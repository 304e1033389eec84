"""One image to its cells, many images to the per-cell table, the AnnData file and the pictures.

``analyse_image`` is the library call the CLI (``protloc cells``) and any other front end use:
segmentation (or the user's masks), then every cell's embedding and probabilities.
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

TABLE_FORMATS = (".csv", ".parquet")


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


def require_cells_extra() -> None:
    missing = []
    for module, package in (("skimage", "scikit-image"), ("anndata", "anndata")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ProtlocError(f"single-cell analysis needs {', '.join(missing)}: pip install 'protloc[cells]'")


def _cell_geometry(cells: np.ndarray, nuclei: np.ndarray | None, cell_ids: np.ndarray, boxes: list | None = None):
    """Centroids [n, 2] (y, x), areas and nucleus areas (NaN without a nucleus mask) of the cells,
    each from its own bounding box (work about the image's size, whatever the number of cells)."""
    from scipy import ndimage as ndi

    centroids = np.zeros((len(cell_ids), 2))
    areas = np.zeros(len(cell_ids), np.int64)
    nucleus_areas = np.full(len(cell_ids), np.nan)
    if boxes is None:
        boxes = ndi.find_objects(cells) if len(cell_ids) else []
    for k, cell_id in enumerate(cell_ids):
        box = boxes[int(cell_id) - 1]
        inside = cells[box] == cell_id
        areas[k] = int(inside.sum())
        rows, columns = inside.sum(axis=1), inside.sum(axis=0)
        centroids[k] = (rows @ np.arange(box[0].start, box[0].stop) / areas[k],
                        columns @ np.arange(box[1].start, box[1].stop) / areas[k])
        if nuclei is not None:
            # A nucleus belongs to the cell its pixels lie in (its own id in protloc's and most tools' masks).
            nucleus_areas[k] = float(np.count_nonzero(nuclei[box][inside]))
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
    centroids, areas, nucleus_areas = _cell_geometry(cells, nuclei, ids, predictions.boxes)
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


def write_table(path: Path, rows: list[dict], columns: list[str]) -> Path:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=columns)
    tmp = path.with_name(path.name + ".partial")
    if path.suffix.lower() == ".parquet":
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(path)  # never a half-written table under the final name
    return path


def write_anndata(path: Path, rows: list[dict], columns: list[str], embeddings: np.ndarray, uns: dict) -> Path:
    import anndata
    import pandas as pd

    obs = pd.DataFrame(rows, columns=columns)
    obs.index = [f"{r['image_id']}:{r['cell_id']}" if "cell_id" in r else str(r["image_id"]) for r in rows]
    for name in ("image_id", "predicted", "top_class"):
        if name in obs:
            obs[name] = obs[name].astype(str)
    adata = anndata.AnnData(X=embeddings.astype(np.float32), obs=obs, uns=uns)
    tmp = path.with_name(path.name + ".partial")
    adata.write_h5ad(tmp)
    tmp.replace(path)
    return path


def output_paths(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    if out.suffix.lower() not in TABLE_FORMATS:
        raise ProtlocError(f"cannot tell the table format of {out.name}: use .csv or .parquet")
    stem = out.with_suffix("")
    return {"table": out, "h5ad": Path(f"{stem}.h5ad"), "masks": Path(f"{stem}-masks"),
            "images": Path(f"{stem}.images.h5ad")}


def _pixel_size(entry, image: np.ndarray, pixel_size: float | None, predictor, said: dict) -> float | None:
    """The input's µm per pixel (``--pixel-size``, its metadata or layout), said once per run as
    ``protloc predict`` says it (``protloc.data.pixel_size``)."""
    from protloc.data.pixel_size import describe, pixel_size_of, warn_unknown

    size = pixel_size_of(entry.sources, *image.shape[-2:], override=pixel_size)
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
              reader_options: dict | None = None, progress: bool = False) -> CellsResult:
    """Segment (or read the masks of) every input image, predict its cells and write the outputs.

    ``masks_dir``: a folder of ``<id>_cellmask`` images or an OME-Zarr store with NGFF labels
    (``protloc.cells.masks.open_masks``). ``scoring``: the table's per-cell answer
    (``protloc.cells.scoring.SCORINGS``; default ``DEFAULT_SCORING``, ``image_prior`` = ``geometric-mean``).
    ``pixel_size``: µm per pixel of the inputs (default: stated by their files or layout)."""
    from tqdm.auto import tqdm

    from protloc.cells.masks import open_masks, write_label_image
    from protloc.cells.overlay import class_overlay, save_png
    from protloc.cells.scoring import DEFAULT_SCORING, DESCRIPTIONS, check_scoring
    from protloc.data.inputs import discover_inputs, load_entry
    from protloc.data.pixel_size import check_pixel_size
    from protloc.inference import load_model

    require_cells_extra()
    scoring = check_scoring(scoring or ("geometric-mean" if image_prior else DEFAULT_SCORING))
    if pixel_size is not None:
        check_pixel_size(pixel_size)
    paths = output_paths(out)
    masks = open_masks(masks_dir) if masks_dir is not None else None
    predictor = load_model(model, device=device)
    entries = discover_inputs(inputs, format=input_format, reader_options=reader_options)
    paths["table"].parent.mkdir(parents=True, exist_ok=True)
    result = CellsResult()
    rows: list[dict] = []
    cell_embeddings: list[np.ndarray] = []
    image_rows: list[dict] = []
    image_embeddings: list[np.ndarray] = []
    method = None
    said: dict = {}
    for entry in tqdm(entries, desc="cells", unit="image", disable=not progress):
        try:
            image = load_entry(entry)
            cells = nuclei = None
            if masks is not None:
                cells, nuclei = masks.read(entry, image.shape[1:])
            analysed = analyse_image(predictor, image, entry.id, cells=cells, nuclei=nuclei,
                                     nucleus_diameter=nucleus_diameter,
                                     pixel_size_um=_pixel_size(entry, image, pixel_size, predictor, said))
        except DataError as exc:
            result.failures.append((entry.id, str(exc)))
            continue
        preds = analysed.predictions
        method = preds.method
        result.images += 1
        result.cells += len(preds.cell_ids)
        if not len(preds.cell_ids):
            result.no_cells.append(entry.id)
        scores = analysed.scores(predictor.classes, scoring)
        rows.extend(cell_rows(analysed, predictor, scoring=scoring))
        cell_embeddings.append(preds.embeddings)
        image_rows.append({"image_id": entry.id, "cells": len(preds.cell_ids),
                           **{c: float(p) for c, p in zip(predictor.classes, preds.image_probabilities)},
                           "predicted": ";".join(predictor.predicted(preds.image_probabilities))})
        image_embeddings.append(preds.image_embedding)
        if masks is None:
            write_label_image(paths["masks"] / f"{entry.id}_cellmask.png", analysed.cells)
            write_label_image(paths["masks"] / f"{entry.id}_nucleimask.png", analysed.nuclei)
        if maps_dir is not None:
            tops = [_top_above_threshold(p, predictor) for p in scores]
            by_id = dict(zip(preds.cell_ids.tolist(), tops))
            colours = [by_id.get(i) for i in range(1, int(analysed.cells.max(initial=0)) + 1)]
            overlay = class_overlay(image, analysed.cells, analysed.nuclei, colours, predictor.classes)
            result.files.append(save_png(Path(maps_dir) / f"{entry.id}_cells.png", overlay))
    if result.images == 0:
        reasons = "; ".join(f"{i}: {r}" for i, r in result.failures[:3])
        raise ProtlocError(f"no image could be analysed ({reasons})")
    columns = ["image_id", "cell_id", "centroid_y", "centroid_x", "area", "nucleus_area", "border", "expression",
               "signal_to_noise",
               *predictor.classes, "predicted", "top_class"]
    dims = cell_embeddings[0].shape[1] if cell_embeddings else 0
    stacked = np.concatenate(cell_embeddings) if rows else np.zeros((0, dims), np.float32)
    uns = {"model": predictor.name, "classes": list(predictor.classes), "method": method,
           "probabilities": DESCRIPTIONS[scoring], "scoring": scoring,
           "embedding": "gapnet-pl masked block averages (224)" if method == "masked-features" else "probabilities",
           "channels": predictor.network_channels}
    result.files.append(write_table(paths["table"], rows, columns))
    result.files.append(write_anndata(paths["h5ad"], rows, columns, stacked, uns))
    if embeddings:
        image_columns = ["image_id", "cells", *predictor.classes, "predicted"]
        result.files.append(write_anndata(paths["images"], image_rows, image_columns, np.stack(image_embeddings), uns))
    return result


def report(result: CellsResult, out) -> None:
    print(f"{result.cells} cell(s) in {result.images} image(s) -> {out}")
    paths = output_paths(out)
    others = [paths["h5ad"]] + ([paths["masks"]] if paths["masks"].is_dir() else [])
    others += [p for p in result.files if p.suffix == ".h5ad" and p != paths["h5ad"]]
    overlays = {p.parent for p in result.files if p.name.endswith("_cells.png")}
    print("also: " + ", ".join(str(p) for p in others + sorted(overlays)))
    for image_id in result.no_cells:
        print(f"  {image_id}: no cells found", file=sys.stderr)
    if result.failures:
        print(f"skipped {len(result.failures)} image(s):", file=sys.stderr)
        for image_id, reason in result.failures[:10]:
            print(f"  {image_id}: {reason}", file=sys.stderr)
