"""One image to its cells, many images to the per-cell table, the AnnData file and the pictures.

``analyse_image`` is the library call the CLI (``protloc cells``) and any other front end use:
segmentation (or the user's masks), then every cell's embedding and probabilities.
``run_cells`` walks the inputs of a command line and writes

- the per-cell table (``.csv`` or ``.parquet``): image id, cell id, centroid (y, x, px), area and
  nucleus area (px), border flag, one probability column per class (the cell's own, or with
  ``image_prior`` the geometric mean of the cell's and its image's), the predicted classes
  (";"-joined, per-class thresholds of the model) and the top class;
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


def _cell_geometry(cells: np.ndarray, nuclei: np.ndarray | None, cell_ids: np.ndarray):
    """Centroids [n, 2] (y, x), areas and nucleus areas (NaN without a nucleus mask) of the cells:
    three weighted counts over the label image (``np.bincount``), whatever the number of cells."""
    if len(cell_ids) == 0:
        return np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0)
    flat = cells.ravel()
    size = int(cell_ids.max()) + 1
    height, width = cells.shape
    areas = np.bincount(flat, minlength=size)
    rows = np.bincount(flat, weights=np.repeat(np.arange(height, dtype=np.float64), width), minlength=size)
    columns = np.bincount(flat, weights=np.tile(np.arange(width, dtype=np.float64), height), minlength=size)
    centroids = np.stack([rows[cell_ids], columns[cell_ids]], axis=1) / areas[cell_ids, None]
    if nuclei is None:
        nucleus_areas = np.full(len(cell_ids), np.nan)
    else:
        # A nucleus belongs to the cell its pixels lie in (its own id in protloc's and most tools' masks).
        nucleus_areas = np.bincount(flat, weights=(nuclei.ravel() > 0), minlength=size)[cell_ids]
    return centroids, areas[cell_ids].astype(np.int64), nucleus_areas.astype(np.float64)


def analyse_image(predictor, image: np.ndarray, image_id: str = "image", *, cells: np.ndarray | None = None,
                  nuclei: np.ndarray | None = None, nucleus_diameter: float | None = None) -> ImageCells:
    """Cells of one canonical sample [4, H, W]: segmented here unless ``cells`` (a label image) is given."""
    from protloc.cells.features import predict_cells
    from protloc.cells.segmentation import border_cells, segment

    if cells is None:
        segmentation = segment(image, nucleus_diameter=nucleus_diameter)
        cells, nuclei = segmentation.cells, segmentation.nuclei
    elif cells.shape != image.shape[1:]:
        raise DataError(f"cell mask is {cells.shape[0]}x{cells.shape[1]} but the image is {image.shape[1]}x{image.shape[2]}")
    predictions = predict_cells(predictor, image, cells)
    ids = predictions.cell_ids
    flags = border_cells(cells)
    border = flags[ids - 1] if len(ids) else np.zeros(0, dtype=bool)
    centroids, areas, nucleus_areas = _cell_geometry(cells, nuclei, ids)
    return ImageCells(image_id, cells, nuclei, predictions, border, centroids, areas, nucleus_areas)


def cell_probabilities(result: ImageCells, image_prior: bool = False) -> np.ndarray:
    preds = result.predictions
    return preds.with_image_prior() if image_prior else preds.probabilities


def cell_rows(result: ImageCells, predictor, image_prior: bool = False) -> list[dict]:
    """The table rows of one image's cells."""
    rows = []
    preds = result.predictions
    scores = cell_probabilities(result, image_prior)
    for k, cell_id in enumerate(preds.cell_ids):
        probs = scores[k]
        row = {
            "image_id": result.image_id, "cell_id": int(cell_id),
            "centroid_y": round(float(result.centroids[k, 0]), 2), "centroid_x": round(float(result.centroids[k, 1]), 2),
            "area": int(result.areas[k]), "nucleus_area": float(result.nucleus_areas[k]),
            "border": bool(result.border[k]),
        }
        row.update({cls: float(p) for cls, p in zip(predictor.classes, probs)})
        row["predicted"] = ";".join(predictor.predicted(probs))
        row["top_class"] = predictor.classes[int(np.argmax(probs))]
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


def run_cells(inputs, model, out, *, masks_dir=None, maps_dir=None, embeddings: bool = False,
              image_prior: bool = False, nucleus_diameter: float | None = None, device: str = "cpu",
              input_format: str | None = None,
              progress: bool = False) -> CellsResult:
    """Segment (or read the masks of) every input image, predict its cells and write the outputs."""
    from tqdm.auto import tqdm

    from protloc.cells.masks import check_masks_folder, read_masks, write_label_image
    from protloc.cells.overlay import class_overlay, save_png
    from protloc.data.inputs import discover_inputs, load_entry
    from protloc.inference import load_model

    require_cells_extra()
    paths = output_paths(out)
    if masks_dir is not None:
        masks_dir = check_masks_folder(masks_dir)
    predictor = load_model(model, device=device)
    entries = discover_inputs(inputs, format=input_format)
    paths["table"].parent.mkdir(parents=True, exist_ok=True)
    result = CellsResult()
    rows: list[dict] = []
    cell_embeddings: list[np.ndarray] = []
    image_rows: list[dict] = []
    image_embeddings: list[np.ndarray] = []
    method = None
    for entry in tqdm(entries, desc="cells", unit="image", disable=not progress):
        try:
            image = load_entry(entry)
            cells = nuclei = None
            if masks_dir is not None:
                cells, nuclei = read_masks(masks_dir, entry.id, image.shape[1:])
            analysed = analyse_image(predictor, image, entry.id, cells=cells, nuclei=nuclei,
                                     nucleus_diameter=nucleus_diameter)
        except DataError as exc:
            result.failures.append((entry.id, str(exc)))
            continue
        preds = analysed.predictions
        method = preds.method
        result.images += 1
        result.cells += len(preds.cell_ids)
        if not len(preds.cell_ids):
            result.no_cells.append(entry.id)
        rows.extend(cell_rows(analysed, predictor, image_prior))
        cell_embeddings.append(preds.embeddings)
        image_rows.append({"image_id": entry.id, "cells": len(preds.cell_ids),
                           **{c: float(p) for c, p in zip(predictor.classes, preds.image_probabilities)},
                           "predicted": ";".join(predictor.predicted(preds.image_probabilities))})
        image_embeddings.append(preds.image_embedding)
        if masks_dir is None:
            write_label_image(paths["masks"] / f"{entry.id}_cellmask.png", analysed.cells)
            write_label_image(paths["masks"] / f"{entry.id}_nucleimask.png", analysed.nuclei)
        if maps_dir is not None:
            tops = [_top_above_threshold(p, predictor) for p in cell_probabilities(analysed, image_prior)]
            by_id = dict(zip(preds.cell_ids.tolist(), tops))
            colours = [by_id.get(i) for i in range(1, int(analysed.cells.max(initial=0)) + 1)]
            overlay = class_overlay(image, analysed.cells, analysed.nuclei, colours, predictor.classes)
            result.files.append(save_png(Path(maps_dir) / f"{entry.id}_cells.png", overlay))
    if result.images == 0:
        reasons = "; ".join(f"{i}: {r}" for i, r in result.failures[:3])
        raise ProtlocError(f"no image could be analysed ({reasons})")
    columns = ["image_id", "cell_id", "centroid_y", "centroid_x", "area", "nucleus_area", "border",
               *predictor.classes, "predicted", "top_class"]
    dims = cell_embeddings[0].shape[1] if cell_embeddings else 0
    stacked = np.concatenate(cell_embeddings) if rows else np.zeros((0, dims), np.float32)
    uns = {"model": predictor.name, "classes": list(predictor.classes), "method": method,
           "probabilities": "geometric mean of the cell's and its image's" if image_prior else "the cell's own",
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
