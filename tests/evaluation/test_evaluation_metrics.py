"""Evaluation's numbers: metrics against scikit-learn, threshold tuning, Wilcoxon against SciPy (and the
paper's p-values), and the report files they are written to."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.stats import wilcoxon
from sklearn.metrics import f1_score, precision_recall_curve, precision_score, recall_score, roc_auc_score

from protloc.errors import ProtlocError
from protloc.evaluation.compare import wilcoxon_greater
from protloc.evaluation.metrics import NO_NEGATIVES, NO_POSITIVES, evaluate_predictions, tune_thresholds
from protloc.evaluation.report import FILES, load_metrics, write_report
from protloc.labels import HPA13

from tests.helpers.evaluation import CLASSES
from tests.helpers.evaluation import assert_png as _assert_png


# The paper's Table 2 (per-class F1, 13 tasks) and the p-values its Table 1 reports for GapNet-PL
# against each method.
PAPER_F1 = {
    "GapNet-PL": "0.682 0.659 0.776 0.672 0.754 0.800 0.767 0.866 0.922 0.873 0.949 0.766 0.683",
    "M-CNN": "0.651 0.522 0.805 0.629 0.689 0.625 0.901 0.818 0.907 0.816 0.945 0.756 0.685",
    "DenseNet-121": "0.719 0.598 0.789 0.645 0.750 0.490 0.853 0.843 0.756 0.826 0.943 0.656 0.682",
    "DeepLoc": "0.125 0.039 0.784 0.538 0.428 0.000 0.696 0.758 0.675 0.613 0.925 0.597 0.551",
    "Convolutional MIL": "0.000 0.000 0.735 0.338 0.331 0.000 0.712 0.608 0.692 0.802 0.945 0.538 0.435",
}
PAPER_F1 = {k: [float(x) for x in v.split()] for k, v in PAPER_F1.items()}
PAPER_P = {"M-CNN": 0.0232, "DenseNet-121": 0.0434, "DeepLoc": 0.0009, "Convolutional MIL": 0.0007}


def random_predictions(seed: int, n: int = 120, c: int = 13):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.1, 0.5, size=c)).astype(np.int64)
    y[:, 2] = 0  # a class without positives
    y[:, 5] = 1  # a class without negatives
    signal = rng.uniform(0.0, 0.6, size=c)
    probs = np.clip(y * signal + rng.random((n, c)) * (1 - signal), 0, 1)
    return y, probs


# ------------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7])
def test_metrics_equal_scikit_learn_per_class(seed):
    y, probs = random_predictions(seed)
    thresholds = np.random.default_rng(seed + 100).uniform(0.2, 0.8, size=13)
    result = evaluate_predictions(y, probs, CLASSES, thresholds)
    defined = {m: [] for m in ("f1", "precision", "recall", "auc", "f1_tuned")}
    for c, name in enumerate(CLASSES):
        entry = result["per_class"][name]
        assert entry["positives"] == y[:, c].sum()
        if c == 2:
            for metric in ("f1", "precision", "recall", "auc", "f1_tuned"):
                assert entry[metric] is None
            assert entry["undefined"]["f1"] == NO_POSITIVES
            assert entry["undefined"]["auc"] == NO_POSITIVES
            assert entry["threshold"] == thresholds[c]
            continue
        at_half = (probs[:, c] >= 0.5).astype(int)
        at_tuned = (probs[:, c] >= thresholds[c]).astype(int)
        assert entry["f1"] == pytest.approx(f1_score(y[:, c], at_half, zero_division=0), abs=1e-12)
        assert entry["precision"] == pytest.approx(precision_score(y[:, c], at_half, zero_division=0), abs=1e-12)
        assert entry["recall"] == pytest.approx(recall_score(y[:, c], at_half, zero_division=0), abs=1e-12)
        assert entry["f1_tuned"] == pytest.approx(f1_score(y[:, c], at_tuned, zero_division=0), abs=1e-12)
        assert entry["precision_tuned"] == pytest.approx(precision_score(y[:, c], at_tuned, zero_division=0), abs=1e-12)
        if c == 5:
            assert entry["auc"] is None and entry["undefined"]["auc"] == NO_NEGATIVES
        else:
            assert entry["auc"] == pytest.approx(roc_auc_score(y[:, c], probs[:, c]), abs=1e-12)
            defined["auc"].append(entry["auc"])
        for metric in ("f1", "precision", "recall", "f1_tuned"):
            defined[metric].append(entry[metric])
    for metric, values in defined.items():
        summary = result["summary"][metric]
        assert summary["mean"] == pytest.approx(np.mean(values))
        assert summary["std"] == pytest.approx(np.std(values))
        assert summary["n_classes"] == len(values)
    assert result["summary"]["f1"]["excluded"] == [CLASSES[2]]
    assert result["summary"]["auc"]["excluded"] == [CLASSES[2], CLASSES[5]]
    json.dumps(result, allow_nan=False)  # no NaN anywhere


def test_summary_is_undefined_not_nan_when_no_class_is_measurable():
    y = np.zeros((5, 3), dtype=int)
    result = evaluate_predictions(y, np.full((5, 3), 0.3), ["a", "b", "c"])
    assert result["summary"]["f1"] == {"mean": None, "std": None, "n_classes": 0, "excluded": ["a", "b", "c"]}
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize(
    ("y", "probs", "message"),
    [
        (np.ones((3, 2)), np.ones((3, 3)), "samples, classes"),
        (np.full((3, 2), 2), np.ones((3, 2)) * 0.5, "0 or 1"),
        (np.ones((3, 2)), np.full((3, 2), np.nan), "finite"),
        (np.ones((3, 2)), np.full((3, 2), 1.5), "within"),
    ],
)
def test_metrics_reject_bad_inputs(y, probs, message):
    with pytest.raises(ProtlocError, match=message):
        evaluate_predictions(y, probs, ["a", "b"][: np.asarray(y).shape[1]])


@pytest.mark.parametrize("seed", [0, 4, 9])
def test_threshold_tuning_never_lowers_validation_f1(seed):
    y, probs = random_predictions(seed, n=80)
    thresholds = tune_thresholds(y, probs)
    assert thresholds[2] == 0.5  # no positives: nothing to tune on
    assert np.all((thresholds > 0) & (thresholds < 1))
    at_half = evaluate_predictions(y, probs, CLASSES)
    tuned = evaluate_predictions(y, probs, CLASSES, thresholds)
    for name in CLASSES:
        if at_half["per_class"][name]["f1"] is not None:
            assert tuned["per_class"][name]["f1_tuned"] >= at_half["per_class"][name]["f1"] - 1e-12
            # the chosen threshold is optimal among all cut points of the scores
            c = CLASSES.index(name)
            precision, recall, _ = precision_recall_curve(y[:, c], probs[:, c])
            best = np.max(np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0))
            assert tuned["per_class"][name]["f1_tuned"] == pytest.approx(best)
    # thresholds never sit exactly on a validation score (they are midpoints or grid values)
    for c in range(13):
        if y[:, c].any() and thresholds[c] != 0.5:
            assert not np.isclose(probs[:, c], thresholds[c], atol=0).any()


def test_threshold_tuning_finds_the_separating_threshold_and_keeps_half_when_optimal():
    y = np.array([[1, 1], [1, 0], [0, 1], [0, 0]])
    # class 0: positives score 0.30/0.25, negatives 0.10/0.05 -> F1 at 0.5 is 0, tuned 1
    # class 1: 0.5 already separates perfectly -> keep 0.5
    probs = np.array([[0.30, 0.9], [0.25, 0.2], [0.10, 0.8], [0.05, 0.1]])
    thresholds = tune_thresholds(y, probs)
    assert 0.10 < thresholds[0] <= 0.25
    assert thresholds[1] == 0.5
    tuned = evaluate_predictions(y, probs, ["a", "b"], thresholds)
    assert tuned["per_class"]["a"]["f1"] == 0.0
    assert tuned["per_class"]["a"]["f1_tuned"] == 1.0


# ----------------------------------------------------------------------------------------- Wilcoxon


def test_wilcoxon_equals_scipy_and_reproduces_the_papers_p_values():
    first = PAPER_F1["GapNet-PL"]
    for method, scores in PAPER_F1.items():
        if method == "GapNet-PL":
            continue
        result = wilcoxon_greater(first, scores)
        expected = wilcoxon(first, scores, alternative="greater", method="approx", correction=False)
        assert result["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
        assert result["statistic"] == expected.statistic
        assert round(result["p_value"], 4) == PAPER_P[method]  # the paper's Table 1
        exact = wilcoxon_greater(first, scores, method="exact")
        assert exact["p_value"] == pytest.approx(wilcoxon(first, scores, alternative="greater", method="exact").pvalue)
    # direction matters: the swapped test has a different p-value
    forward = wilcoxon_greater(first, PAPER_F1["M-CNN"])["p_value"]
    backward = wilcoxon_greater(PAPER_F1["M-CNN"], first)["p_value"]
    assert forward < 0.05 < backward
    assert backward == pytest.approx(
        wilcoxon(PAPER_F1["M-CNN"], first, alternative="greater", method="approx", correction=False).pvalue
    )


def test_wilcoxon_drops_ties_and_undefined_pairs_and_reports_n():
    a = [0.9, 0.8, 0.7, 0.6, 0.5, None, 0.4, 0.75]
    b = [0.7, 0.8, 0.6, 0.65, 0.3, 0.2, None, 0.5]
    result = wilcoxon_greater(a, b)
    assert result["n_pairs"] == 6 and result["zero_differences"] == 1 and result["n"] == 5
    kept = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and x != y]
    expected = wilcoxon([x for x, _ in kept], [y for _, y in kept], alternative="greater", method="approx",
                        correction=False)
    assert result["p_value"] == pytest.approx(expected.pvalue)
    same = wilcoxon_greater([0.5, 0.6], [0.5, 0.6])
    assert same["p_value"] is None and same["n"] == 0 and "non-zero" in same["note"]
    with pytest.raises(ProtlocError):
        wilcoxon_greater([0.5], [0.5, 0.6])


# ------------------------------------------------------------------------------------------ reports



def test_report_writes_json_markdown_images_and_predictions(tmp_path):
    y, probs = random_predictions(3, n=60)
    ids = [f"sample-{i:03d}" for i in range(60)]
    thresholds = tune_thresholds(y, probs)
    metrics = write_report(tmp_path / "out", ids, y, probs, CLASSES, thresholds,
                           {"run": "r", "split": "test", "model": "gapnet-pl"})
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    saved = load_metrics(out / "metrics.json")
    assert saved["per_class"] == json.loads(json.dumps(metrics["per_class"]))
    assert saved["split"] == "test" and saved["n_samples"] == 60
    markdown = (out / "report.md").read_text()
    assert "| Method | F1 Score | Precision | Recall | AUC | F1 (tuned thresholds) |" in markdown
    assert f"| {CLASSES[2]} | 0 | {NO_POSITIVES} |" in markdown
    assert f"{metrics['summary']['f1']['mean']:.2f} ± {metrics['summary']['f1']['std']:.2f}" in markdown
    _assert_png(out / "roc_curves.png")
    _assert_png(out / "f1_per_class.png")
    with (out / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["id", *CLASSES, "true_labels", "predicted_labels"]
    assert [r["id"] for r in rows] == ids
    read_back = np.array([[float(r[name]) for name in CLASSES] for r in rows])
    np.testing.assert_allclose(read_back, probs, atol=1e-6)
    for row, labels in zip(rows, y):
        assert HPA13.parse(row["true_labels"]) == tuple(np.flatnonzero(labels))
