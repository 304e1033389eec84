"""How good are the cells: segmentation against true masks, per-cell mAP against per-cell labels.

- ``match_cells``: true and found cells paired where their IoU exceeds a threshold (0.5: a pairing is
  then unique, since two cells cannot both overlap one cell by more than half its union).
- ``per_cell_map``: the HPA single-cell challenge's metric: average precision of each class over all
  cells, the mean over the classes that have positive cells.
- ``evaluate_folder``: a synthetic data set written by ``protloc synth`` with its per-cell truth
  (``masks/<id>_cellmask.png`` and ``cells.csv`` with each cell's ``labels``, as ``protloc synth``
  writes them) -> per-cell mAP of each per-cell answer (``protloc.cells.scoring``: the default
  combination, the cell's own, the weak baseline that gives every cell its image's probabilities,
  the geometric mean) on the drawn masks and on protloc's own segmentation, plus segmentation quality.
- ``collect_cells``: the per-cell evidence behind it (``CellRecords``), also for choosing the
  combination's constants on another synthetic set (``protloc.bench.cells --select``).
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
class CellRecords:
    """Per-cell evidence of a data set, one row per cell: truth [n, K], the cell's own and its image's
    probabilities [n, K], expression [n], and the index of its image [n]."""

    truth: list = field(default_factory=list)
    own: list = field(default_factory=list)
    image: list = field(default_factory=list)
    expression: list = field(default_factory=list)
    image_of: list = field(default_factory=list)
    signal_to_noise: list = field(default_factory=list)

    def add(self, predictions, rows: list[np.ndarray], image_index: int) -> None:
        for k in range(len(predictions.cell_ids)):
            self.truth.append(rows[k])
            self.own.append(predictions.probabilities[k])
            self.image.append(predictions.image_probabilities)
            self.expression.append(predictions.expression[k])
            self.image_of.append(image_index)
            snr = getattr(predictions, "signal_to_noise", None)
            self.signal_to_noise.append(np.nan if snr is None else snr[k])

    def arrays(self):
        from types import SimpleNamespace

        return SimpleNamespace(truth=np.array(self.truth), own=np.array(self.own), image=np.array(self.image),
                               expression=np.array(self.expression), image_of=np.array(self.image_of),
                               signal_to_noise=np.array(self.signal_to_noise))

    def scores(self, classes, scoring: str, **combine_options) -> np.ndarray:
        """Per-cell answers by ``scoring``; ``combine_options`` (``expression_full``, ``weights``,
        ``relative``) replace the default answer's constants, as ``protloc.bench.cells --select`` chose them."""
        from protloc.cells.scoring import check_scoring, combine

        a = self.arrays()
        check_scoring(scoring)
        if scoring == "own":
            return a.own
        if scoring == "image":
            return a.image
        if scoring == "geometric-mean":
            return np.sqrt(a.own * a.image)
        return combine_rows(a, classes, combine, **combine_options)


def combine_rows(a, classes, combine, **options) -> np.ndarray:
    """``combine`` per row (each row has its own image's probabilities)."""
    out = np.empty_like(a.own, dtype=np.float32)
    for index in np.unique(a.image_of):
        rows = a.image_of == index
        snr = getattr(a, "signal_to_noise", None)
        snr = None if snr is None or not len(snr) or np.isnan(snr[rows]).any() else snr[rows]
        out[rows] = combine(a.own[rows], a.image[rows][0], a.expression[rows], classes,
                            **{"signal_to_noise": snr, **options})
    return out


@dataclass
class CellsEvaluation:
    images: int = 0
    true_cells: int = 0
    found_cells: int = 0
    matched_cells: int = 0
    mean_iou: float = float("nan")
    map_true_masks: dict = field(default_factory=dict)  # scoring -> per-cell mAP on the drawn masks
    map_segmented: dict = field(default_factory=dict)  # scoring -> per-cell mAP on protloc's segmentation
    within_image_auc: dict = field(default_factory=dict)  # scoring -> within-field ROC AUC
    per_class: dict = field(default_factory=dict)  # class -> scoring -> AP (drawn masks)

    def lines(self) -> list[str]:
        from protloc.cells.scoring import SCORINGS

        lines = [
            f"images {self.images}: {self.true_cells} cells drawn, {self.found_cells} found, "
            f"{self.matched_cells} matched at IoU > 0.5 (mean IoU of matched {self.mean_iou:.3f})",
            "per-cell mAP        " + "".join(f"{name:>16}" for name in SCORINGS),
            "  drawn masks       " + "".join(f"{self.map_true_masks.get(n, float('nan')):16.3f}" for n in SCORINGS),
            "  own segmentation  " + "".join(f"{self.map_segmented.get(n, float('nan')):16.3f}" for n in SCORINGS),
            "within-field AUC    " + "".join(f"{self.within_image_auc.get(n, float('nan')):16.3f}" for n in SCORINGS),
        ]
        return lines


def collect_cells(data: str | Path, model, ids: list[str] | None = None, progress: bool = False,
                  segmented: bool = True):
    """Per-cell evidence of a synthetic data set with per-cell truth: on the drawn masks, and (with
    ``segmented``) on protloc's own segmentation. Own segmentation: a found cell matched to a drawn
    cell (IoU > 0.5) takes its labels; an unmatched found cell counts as a cell without labels (its
    confident answers are false positives); a drawn cell that was not found is missed (it lowers
    recall through the cells that remain). Returns (predictor, drawn CellRecords, segmented
    CellRecords, CellsEvaluation with the segmentation figures)."""
    from tqdm.auto import tqdm

    from protloc.cells.features import predict_cells
    from protloc.cells.masks import read_masks
    from protloc.cells.segmentation import segment
    from protloc.data.formats import discover, read
    from protloc.inference.predictor import load_model

    data = Path(data)
    predictor = model if hasattr(model, "network") else load_model(model)
    truth_file = data / "cells.csv"
    if not truth_file.is_file() or not (data / "masks").is_dir():
        raise ProtlocError(f"{data} has no per-cell truth (cells.csv and masks/): generate it with 'protloc synth'")
    truth = read_cell_truth(truth_file, predictor.classes)
    entries = [e for e in discover([data]) if ids is None or e.id in set(ids)]
    if not entries:
        raise ProtlocError(f"no images of the requested ids in {data}")
    result = CellsEvaluation()
    drawn, found_records = CellRecords(), CellRecords()
    ious = []
    none = np.zeros(len(predictor.classes), np.int8)
    for entry in tqdm(entries, desc="cells", unit="image", disable=not progress):
        image = read(entry).image
        true_cells, _ = read_masks(data / "masks", entry.id, image.shape[1:])
        on_truth = predict_cells(predictor, image, true_cells)
        drawn.add(on_truth, [truth[(entry.id, int(i))] for i in on_truth.cell_ids], result.images)
        if segmented:
            found = segment(image).cells
            matching = match_cells(true_cells, found)
            ious.extend(matching.ious.tolist())
            result.true_cells += matching.true_count
            result.found_cells += matching.found_count
            result.matched_cells += len(matching.ious)
            on_found = predict_cells(predictor, image, found)
            label_of = dict(zip(matching.found_ids.tolist(), matching.true_ids.tolist()))
            rows = [truth[(entry.id, label_of[int(i)])] if int(i) in label_of else none for i in on_found.cell_ids]
            found_records.add(on_found, rows, result.images)
        result.images += 1
    result.mean_iou = float(np.mean(ious)) if ious else float("nan")
    return predictor, drawn, found_records, result


def evaluate_folder(data: str | Path, model, ids: list[str] | None = None, progress: bool = False,
                    combine_options: dict | None = None) -> CellsEvaluation:
    """Per-cell mAP of every scoring (``protloc.cells.scoring.SCORINGS``: the default combination,
    the cell's own, the image baseline, the geometric mean) on the drawn masks and on protloc's
    segmentation, plus segmentation quality, on a synthetic data set with per-cell truth.
    ``combine_options``: constants of the default answer other than ``protloc.cells.scoring``'s."""
    from protloc.cells.scoring import SCORINGS

    predictor, drawn, found, result = collect_cells(data, model, ids, progress)
    classes = predictor.classes
    truth = drawn.arrays().truth
    per_class = {}
    options = combine_options or {}
    for scoring in SCORINGS:
        scores = drawn.scores(classes, scoring, **options)
        result.map_true_masks[scoring], per_class[scoring] = per_cell_map(truth, scores, classes)
        result.within_image_auc[scoring] = _within_image_auc(truth, scores, drawn.arrays().image_of)
        if found.truth:
            result.map_segmented[scoring], _ = per_cell_map(found.arrays().truth, found.scores(classes, scoring, **options), classes)
    result.per_class = {name: {s: per_class[s][name] for s in SCORINGS} for name in per_class["own"]}
    return result
