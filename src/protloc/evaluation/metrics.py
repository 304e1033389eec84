"""Per-class classification metrics as the paper reports them (Tables 1 and 2), on scikit-learn.

Every class is a binary task. A class's F1, precision and recall are computed at a decision
threshold (the paper's 0.5, or a per-class threshold tuned on the validation split); ROC AUC uses
the probabilities directly. A sample counts as predicted positive when ``probability >= threshold``.

Classes that a split cannot measure are reported, not averaged: with no positive samples F1,
precision, recall and AUC are undefined ("undefined: no positives"); with no negative samples AUC is
undefined ("undefined: no negatives"). Undefined values are ``None`` (JSON ``null``) with a reason,
and the mean ± std over classes uses only the classes where the metric is defined, so a mean is
never NaN. Precision of a class with positives but no predicted positives is 0 (scikit-learn's
``zero_division=0``), as is the resulting F1: the network missed every positive.

The std over classes is the population std (ddof=0); it reproduces the paper's Table 1 from its
Table 2.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from protloc.errors import ProtlocError

NO_POSITIVES = "undefined: no positives"
NO_NEGATIVES = "undefined: no negatives"
DEFAULT_THRESHOLD = 0.5

# metric name -> how it is computed (for reports); all of them are per class
THRESHOLD_METRICS = ("f1", "precision", "recall")
SUMMARY_METRICS = ("f1", "precision", "recall", "auc", "f1_tuned", "precision_tuned", "recall_tuned")


def check_inputs(y_true, probs, classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels [N, C] (0/1) and probabilities [N, C] in [0, 1]."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.ndim != 2 or probs.ndim != 2 or y_true.shape != probs.shape:
        raise ProtlocError(
            f"labels and probabilities must both be [samples, classes]; got {list(y_true.shape)} and {list(probs.shape)}"
        )
    if classes is not None and len(classes) != y_true.shape[1]:
        raise ProtlocError(f"{len(classes)} class names for {y_true.shape[1]} label columns")
    if y_true.shape[0] == 0:
        raise ProtlocError("no samples to evaluate")
    if not np.isin(y_true, (0, 1)).all():
        raise ProtlocError("labels must be 0 or 1")
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise ProtlocError("probabilities must be finite and within [0, 1]")
    return y_true.astype(np.int64), probs


def _thresholds_vector(thresholds, num_classes: int) -> np.ndarray:
    if thresholds is None:
        return np.full(num_classes, DEFAULT_THRESHOLD)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if thresholds.shape[0] != num_classes:
        raise ProtlocError(f"{thresholds.shape[0]} thresholds for {num_classes} classes")
    return thresholds


def binarize(probs, thresholds=None) -> np.ndarray:
    """Predicted labels: 1 where ``probability >= threshold`` (per class)."""
    probs = np.asarray(probs, dtype=np.float64)
    return (probs >= _thresholds_vector(thresholds, probs.shape[1])[None, :]).astype(np.int64)


def class_metrics(y_true_column, prob_column, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """F1, precision, recall at ``threshold`` and ROC AUC of one class, with undefined ones explained.

    Returns ``{"positives", "negatives", "threshold", "f1", "precision", "recall", "auc", "undefined"}``
    where ``undefined`` maps a metric name to its reason and that metric is ``None``.
    """
    y = np.asarray(y_true_column).astype(np.int64).reshape(-1)
    p = np.asarray(prob_column, dtype=np.float64).reshape(-1)
    positives = int(y.sum())
    negatives = int(y.size - positives)
    result: dict = {"positives": positives, "negatives": negatives, "threshold": float(threshold), "undefined": {}}
    if positives == 0:
        for name in (*THRESHOLD_METRICS, "auc"):
            result[name] = None
            result["undefined"][name] = NO_POSITIVES
        return result
    predicted = (p >= threshold).astype(np.int64)
    result["f1"] = float(f1_score(y, predicted, zero_division=0))
    result["precision"] = float(precision_score(y, predicted, zero_division=0))
    result["recall"] = float(recall_score(y, predicted, zero_division=0))
    if negatives == 0:
        result["auc"] = None
        result["undefined"]["auc"] = NO_NEGATIVES
    else:
        result["auc"] = float(roc_auc_score(y, p))
    return result


def summarize(values: Sequence[float | None]) -> dict:
    """Mean ± std (population) over the defined values; ``None`` when no class defines it."""
    defined = np.array([v for v in values if v is not None], dtype=np.float64)
    if defined.size == 0:
        return {"mean": None, "std": None, "n_classes": 0}
    return {"mean": float(defined.mean()), "std": float(defined.std()), "n_classes": int(defined.size)}


def evaluate_predictions(y_true, probs, classes: Sequence[str], thresholds=None) -> dict:
    """The paper's per-class table plus mean ± std over classes, at 0.5 and at ``thresholds``.

    Returns ``{"classes", "n_samples", "thresholds", "per_class": {name: {...}}, "summary": {metric:
    {"mean", "std", "n_classes", "excluded": [class names]}}}``. Per class: positives, negatives, f1,
    precision, recall, auc (threshold 0.5), f1_tuned, precision_tuned, recall_tuned (at the class's
    tuned threshold), threshold, and ``undefined`` {metric: reason}.
    """
    y_true, probs = check_inputs(y_true, probs, classes)
    tuned = _thresholds_vector(thresholds, len(classes))
    per_class: dict[str, dict] = {}
    for c, name in enumerate(classes):
        at_half = class_metrics(y_true[:, c], probs[:, c], DEFAULT_THRESHOLD)
        at_tuned = class_metrics(y_true[:, c], probs[:, c], float(tuned[c]))
        entry = {
            "positives": at_half["positives"],
            "negatives": at_half["negatives"],
            "f1": at_half["f1"],
            "precision": at_half["precision"],
            "recall": at_half["recall"],
            "auc": at_half["auc"],
            "threshold": float(tuned[c]),
            "f1_tuned": at_tuned["f1"],
            "precision_tuned": at_tuned["precision"],
            "recall_tuned": at_tuned["recall"],
            "undefined": dict(at_half["undefined"]),
        }
        for metric in THRESHOLD_METRICS:
            if metric in at_tuned["undefined"]:
                entry["undefined"][f"{metric}_tuned"] = at_tuned["undefined"][metric]
        per_class[name] = entry
    summary = {}
    for metric in SUMMARY_METRICS:
        stats = summarize([per_class[name][metric] for name in classes])
        stats["excluded"] = [name for name in classes if per_class[name][metric] is None]
        summary[metric] = stats
    return {
        "classes": list(classes),
        "n_samples": int(y_true.shape[0]),
        "thresholds": [float(t) for t in tuned],
        "per_class": per_class,
        "summary": summary,
    }


def _f1_at_candidates(y: np.ndarray, p: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """F1 of ``p >= t`` against ``y`` for every candidate ``t`` at once (sort + cumulative counts)."""
    order = np.argsort(-p, kind="stable")
    sorted_p = p[order]
    cum_tp = np.concatenate([[0], np.cumsum(y[order])])
    # number of samples with p >= t: p sorted descending, so count via searchsorted on -p
    predicted = np.searchsorted(-sorted_p, -candidates, side="right")
    tp = cum_tp[predicted]
    fp = predicted - tp
    fn = y.sum() - tp
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def tune_thresholds(y_true, probs, step: float = 0.05) -> np.ndarray:
    """Per-class decision thresholds maximising F1 on (validation) data.

    Candidates per class: a grid in ``step`` steps (0.5 included) and the midpoints between
    consecutive distinct scores (with 0 and 1 as outer edges), which reach every split of the
    scores a threshold can make without sitting exactly on a validation sample. Among equally good
    candidates the one closest to 0.5 wins, so 0.5 is kept whenever it is optimal; the tuned F1 is
    therefore never below the F1 at 0.5. A class without positives keeps 0.5 (nothing to tune on).
    """
    y_true, probs = check_inputs(y_true, probs)
    if not 0 < step <= 0.5:
        raise ProtlocError("threshold grid step must be in (0, 0.5]")
    grid = np.round(np.arange(step, 1.0, step), 10)
    grid = np.union1d(grid, [DEFAULT_THRESHOLD])
    thresholds = np.full(y_true.shape[1], DEFAULT_THRESHOLD)
    for c in range(y_true.shape[1]):
        y = y_true[:, c]
        p = probs[:, c]
        if y.sum() == 0:
            continue
        edges = np.concatenate([[0.0], np.unique(p), [1.0]])
        midpoints = (edges[:-1] + edges[1:]) / 2
        candidates = np.union1d(grid, midpoints)
        f1 = _f1_at_candidates(y, p, candidates)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        thresholds[c] = float(candidates[best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))]])
    return thresholds


def format_value(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_mean_std(stats: dict, digits: int = 2) -> str:
    if stats.get("mean") is None:
        return "undefined"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
