"""How good are the cells: segmentation against true masks, per-cell mAP against per-cell labels.

- ``match_cells``: true and found cells paired where their IoU exceeds a threshold (0.5: a pairing is
  then unique, since two cells cannot both overlap one cell by more than half its union).
- ``per_cell_map``: the HPA single-cell challenge's metric: average precision of each class over all
  cells, the mean over the classes that have positive cells.
- ``evaluate_folder``: a synthetic data set written by ``protloc synth`` with its per-cell truth
  (``masks/<id>_cellmask.png`` and ``cells.csv`` with each cell's ``labels``, as ``protloc synth``
  writes them) -> per-cell mAP
  on the true masks and on protloc's own segmentation, against the weak baseline that gives every
  cell its image's probabilities, plus segmentation quality.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protloc.errors import ProtlocError


@dataclass
class Matching:
    true_ids: np.ndarray  # matched pairs: true cell id ...
    found_ids: np.ndarray  # ... and the found cell id
    ious: np.ndarray
    true_count: int
    found_count: int


def match_cells(truth: np.ndarray, found: np.ndarray, threshold: float = 0.5) -> Matching:
    """Pairs of (true, found) cells with IoU > ``threshold`` (>= 0.5 keeps pairs unique)."""
    if truth.shape != found.shape:
        raise ProtlocError(f"masks of different sizes: {truth.shape} and {found.shape}")
    if threshold < 0.5:
        raise ProtlocError("an IoU threshold below 0.5 does not pair cells uniquely")
    t_ids = np.unique(truth[truth > 0])
    f_ids = np.unique(found[found > 0])
    if not len(t_ids) or not len(f_ids):
        empty = np.zeros(0, np.int64)
        return Matching(empty, empty, np.zeros(0), len(t_ids), len(f_ids))
    t_index = np.zeros(int(truth.max()) + 1, np.int64)
    t_index[t_ids] = np.arange(1, len(t_ids) + 1)
    f_index = np.zeros(int(found.max()) + 1, np.int64)
    f_index[f_ids] = np.arange(1, len(f_ids) + 1)
    t, f = t_index[truth].ravel(), f_index[found].ravel()
    joint = np.bincount(t * (len(f_ids) + 1) + f, minlength=(len(t_ids) + 1) * (len(f_ids) + 1))
    joint = joint.reshape(len(t_ids) + 1, len(f_ids) + 1)
    inter = joint[1:, 1:].astype(np.float64)
    union = joint[1:, :].sum(1)[:, None] + joint[:, 1:].sum(0)[None, :] - inter
    iou = inter / np.maximum(union, 1)
    ti, fi = np.nonzero(iou > threshold)
    return Matching(t_ids[ti], f_ids[fi], iou[ti, fi], len(t_ids), len(f_ids))


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(truth, scores))


def per_cell_map(truth: np.ndarray, scores: np.ndarray, classes: list[str]) -> tuple[float, dict[str, float]]:
    """Mean over classes with at least one positive cell of the per-class AP over cells."""
    per_class = {}
    for k, name in enumerate(classes):
        if truth[:, k].any():
            per_class[name] = average_precision(truth[:, k], scores[:, k])
    if not per_class:
        raise ProtlocError("no cell carries any label: per-cell mAP is undefined")
    return float(np.mean(list(per_class.values()))), per_class


def _within_image_auc(truth: np.ndarray, scores: np.ndarray, image_of: np.ndarray) -> float:
    """Mean ROC AUC, over (image, class) pairs with both labelled and unlabelled cells, of the cells'
    scores: can the cells of one field be told apart? (The image baseline scores 0.5 by construction.)"""
    from sklearn.metrics import roc_auc_score

    values = []
    for image in np.unique(image_of):
        rows = image_of == image
        for k in range(truth.shape[1]):
            labels = truth[rows, k]
            if labels.any() and not labels.all():
                values.append(roc_auc_score(labels, scores[rows, k]))
    return float(np.mean(values)) if values else float("nan")


def read_cell_truth(path: Path, classes: list[str]) -> dict[tuple[str, int], np.ndarray]:
    """``cells.csv`` of a synthetic data set -> {(image id, cell id): 0/1 vector over ``classes``}."""
    index = {name: k for k, name in enumerate(classes)}
    truth = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            vector = np.zeros(len(classes), np.int8)
            for name in filter(None, (row.get("labels") or "").split(";")):
                if name not in index:
                    raise ProtlocError(f"{path.name}: unknown class {name!r}")
                vector[index[name]] = 1
            truth[(row["image_id"], int(row["cell_id"]))] = vector
    return truth


@dataclass
class CellsEvaluation:
    images: int = 0
    true_cells: int = 0
    found_cells: int = 0
    matched_cells: int = 0
    mean_iou: float = float("nan")
    map_true_masks: float = float("nan")
    map_true_masks_baseline: float = float("nan")
    map_true_masks_combined: float = float("nan")
    map_segmented: float = float("nan")
    map_segmented_baseline: float = float("nan")
    map_segmented_combined: float = float("nan")
    within_image_auc: float = float("nan")
    per_class: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [
            f"images {self.images}: {self.true_cells} cells drawn, {self.found_cells} found, "
            f"{self.matched_cells} matched at IoU > 0.5 (mean IoU of matched {self.mean_iou:.3f})",
            "per-cell mAP            cells   image baseline   sqrt(cell x image)",
            f"  true masks            {self.map_true_masks:.3f}   {self.map_true_masks_baseline:.3f}            "
            f"{self.map_true_masks_combined:.3f}",
            f"  own segmentation      {self.map_segmented:.3f}   {self.map_segmented_baseline:.3f}            "
            f"{self.map_segmented_combined:.3f}",
            f"within-image ROC AUC of the cells' probabilities, labelled vs unlabelled cells: {self.within_image_auc:.3f}",
        ]


def evaluate_folder(data: str | Path, model, ids: list[str] | None = None, progress: bool = False) -> CellsEvaluation:
    """Per-cell mAP and segmentation quality on a synthetic data set with per-cell truth.

    Own segmentation: a found cell matched to a true cell (IoU > 0.5) takes its labels; an unmatched
    found cell counts as a cell without labels (its confident answers are false positives), and a
    true cell that was not found is missed (it lowers recall through the cells that remain).
    """
    from tqdm.auto import tqdm

    from protloc.cells.features import predict_cells
    from protloc.cells.masks import read_masks
    from protloc.cells.segmentation import segment
    from protloc.data.inputs import discover_inputs, load_entry
    from protloc.inference import load_model

    data = Path(data)
    predictor = model if hasattr(model, "network") else load_model(model)
    truth_file = data / "cells.csv"
    if not truth_file.is_file() or not (data / "masks").is_dir():
        raise ProtlocError(f"{data} has no per-cell truth (cells.csv and masks/): generate it with 'protloc synth'")
    truth = read_cell_truth(truth_file, predictor.classes)
    entries = [e for e in discover_inputs([data]) if ids is None or e.id in set(ids)]
    if not entries:
        raise ProtlocError(f"no images of the requested ids in {data}")
    result = CellsEvaluation()
    true_rows, cell_scores, base_scores = [], [], []
    seg_rows, seg_scores, seg_base = [], [], []
    ious, image_of, combined_scores, seg_combined = [], [], [], []
    for entry in tqdm(entries, desc="cells", unit="image", disable=not progress):
        image = load_entry(entry)
        true_cells, _ = read_masks(data / "masks", entry.id, image.shape[1:])
        on_truth = predict_cells(predictor, image, true_cells)
        for k, cell_id in enumerate(on_truth.cell_ids):
            true_rows.append(truth[(entry.id, int(cell_id))])
            cell_scores.append(on_truth.probabilities[k])
            base_scores.append(on_truth.image_probabilities)
            combined_scores.append(on_truth.with_image_prior()[k])
            image_of.append(result.images)
        found = segment(image).cells
        matching = match_cells(true_cells, found)
        ious.extend(matching.ious.tolist())
        result.images += 1
        result.true_cells += matching.true_count
        result.found_cells += matching.found_count
        result.matched_cells += len(matching.ious)
        on_found = predict_cells(predictor, image, found)
        label_of = dict(zip(matching.found_ids.tolist(), matching.true_ids.tolist()))
        for k, cell_id in enumerate(on_found.cell_ids):
            true_id = label_of.get(int(cell_id))
            seg_rows.append(truth[(entry.id, true_id)] if true_id else np.zeros(len(predictor.classes), np.int8))
            seg_scores.append(on_found.probabilities[k])
            seg_base.append(on_found.image_probabilities)
            seg_combined.append(on_found.with_image_prior()[k])
    result.mean_iou = float(np.mean(ious)) if ious else float("nan")
    classes = predictor.classes
    true_rows = np.array(true_rows)
    result.map_true_masks, per_class = per_cell_map(true_rows, np.array(cell_scores), classes)
    result.map_true_masks_baseline, per_class_base = per_cell_map(true_rows, np.array(base_scores), classes)
    result.map_true_masks_combined, per_class_combined = per_cell_map(true_rows, np.array(combined_scores), classes)
    result.per_class = {name: {"cells": per_class[name], "baseline": per_class_base[name],
                               "combined": per_class_combined[name]} for name in per_class}
    result.within_image_auc = _within_image_auc(true_rows, np.array(cell_scores), np.array(image_of))
    if seg_rows:
        seg_rows = np.array(seg_rows)
        result.map_segmented, _ = per_cell_map(seg_rows, np.array(seg_scores), classes)
        result.map_segmented_baseline, _ = per_cell_map(seg_rows, np.array(seg_base), classes)
        result.map_segmented_combined, _ = per_cell_map(seg_rows, np.array(seg_combined), classes)
    return result
