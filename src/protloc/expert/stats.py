"""Statistics of the human-expert comparison (paper section 3.2, Tables 3 and 4, Figure 5).

All raters (the model and every expert) answer with one class per sample; the truth is the
sample's single label. Everything here works on class indices of the study's label set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

# Below this many discordant pairs the chi-square approximation is poor; use the exact binomial test.
EXACT_BELOW = 25


@dataclass(frozen=True)
class RaterMetrics:
    n: int
    accuracy: float
    f1: float
    precision: float
    recall: float
    classes_averaged: int  # how many classes the macro averages run over

    def to_dict(self) -> dict:
        return asdict(self)


def rater_metrics(truth: Sequence[int], answers: Sequence[int], classes: Sequence[int]) -> RaterMetrics:
    """Accuracy and macro F1/precision/recall (paper Table 3).

    The macro averages run over ``classes`` (the classes present in the study's truth): a class that
    no sample has cannot be recalled, and averaging its undefined scores in would only dilute the
    others. A class in ``classes`` that the rater never answers has precision 0 (and so F1 0).
    """
    from sklearn.metrics import precision_recall_fscore_support

    truth = np.asarray(truth, dtype=int)
    answers = np.asarray(answers, dtype=int)
    if truth.shape != answers.shape:
        raise ValueError("truth and answers differ in length")
    if truth.size == 0:
        nan = float("nan")
        return RaterMetrics(0, nan, nan, nan, nan, len(classes))
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, answers, labels=list(classes), average="macro", zero_division=0
    )
    return RaterMetrics(
        n=int(truth.size), accuracy=float(np.mean(truth == answers)), f1=float(f1),
        precision=float(precision), recall=float(recall), classes_averaged=len(classes),
    )


def per_class_scores(truth: Sequence[int], answers: Sequence[int], classes: Sequence[int]) -> dict[int, dict]:
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        np.asarray(truth, dtype=int), np.asarray(answers, dtype=int), labels=list(classes), zero_division=0
    )
    return {
        int(c): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, support)
    }


@dataclass(frozen=True)
class McNemarResult:
    both_correct: int
    only_first: int  # only the first rater (the model) correct: b
    only_second: int  # only the second rater (the expert) correct: c
    both_wrong: int
    statistic: float | None  # chi-square statistic (None for the exact test)
    p_value: float
    method: str  # "chi-square (continuity corrected)" or "exact binomial"

    def to_dict(self) -> dict:
        return asdict(self)


def contingency(truth: Sequence[int], first: Sequence[int], second: Sequence[int]) -> tuple[int, int, int, int]:
    """(both correct, only first correct, only second correct, both wrong): paper Table 4."""
    truth = np.asarray(truth, dtype=int)
    first_ok = np.asarray(first, dtype=int) == truth
    second_ok = np.asarray(second, dtype=int) == truth
    return (
        int(np.sum(first_ok & second_ok)), int(np.sum(first_ok & ~second_ok)),
        int(np.sum(~first_ok & second_ok)), int(np.sum(~first_ok & ~second_ok)),
    )


def mcnemar(both_correct: int, only_first: int, only_second: int, both_wrong: int, exact: bool | None = None) -> McNemarResult:
    """McNemar's test on a 2x2 table of paired correctness.

    ``exact=None`` picks the exact binomial test when there are fewer than ``EXACT_BELOW`` discordant
    pairs and the continuity-corrected chi-square test (Edwards) otherwise. With no discordant pair
    at all the two raters cannot be told apart: p = 1.
    """
    b, c = int(only_first), int(only_second)
    if min(both_correct, b, c, both_wrong) < 0:
        raise ValueError("contingency counts must be non-negative")
    discordant = b + c
    if exact is None:
        exact = discordant < EXACT_BELOW
    if discordant == 0:
        return McNemarResult(both_correct, b, c, both_wrong, None if exact else 0.0, 1.0,
                             "exact binomial" if exact else "chi-square (continuity corrected)")
    if exact:
        p = scipy_stats.binomtest(min(b, c), discordant, 0.5, alternative="two-sided").pvalue
        return McNemarResult(both_correct, b, c, both_wrong, None, float(min(1.0, p)), "exact binomial")
    statistic = (abs(b - c) - 1) ** 2 / discordant
    p = scipy_stats.chi2.sf(statistic, df=1)
    return McNemarResult(both_correct, b, c, both_wrong, float(statistic), float(p), "chi-square (continuity corrected)")


def cohen_kappa(first: Sequence[int], second: Sequence[int]) -> float:
    """Cohen's kappa of two raters on the same samples (sklearn's implementation)."""
    from sklearn.metrics import cohen_kappa_score

    first = np.asarray(first, dtype=int)
    second = np.asarray(second, dtype=int)
    if first.size == 0:
        return float("nan")
    if np.array_equal(first, second):
        return 1.0  # sklearn gives nan when both raters use one and the same class throughout
    return float(cohen_kappa_score(first, second))


def fleiss_kappa(ratings: np.ndarray, num_classes: int) -> float:
    """Fleiss' kappa from a [samples, raters] array of class indices (every rater rates every sample)."""
    ratings = np.asarray(ratings, dtype=int)
    if ratings.ndim != 2 or ratings.shape[0] == 0 or ratings.shape[1] < 2:
        return float("nan")
    counts = np.stack([np.bincount(row, minlength=num_classes) for row in ratings]).astype(float)
    return fleiss_kappa_from_counts(counts)


def fleiss_kappa_from_counts(counts: np.ndarray) -> float:
    """Fleiss' kappa from a [subjects, categories] table of how many raters chose each category."""
    counts = np.asarray(counts, dtype=float)
    raters = counts.sum(axis=1)
    if not np.allclose(raters, raters[0]):
        raise ValueError("every subject needs the same number of ratings")
    n = raters[0]
    p_category = counts.sum(axis=0) / counts.sum()
    p_subject = (np.sum(counts * counts, axis=1) - n) / (n * (n - 1))
    p_bar, p_expected = p_subject.mean(), np.sum(p_category**2)
    if math.isclose(p_expected, 1.0):
        return 1.0 if math.isclose(p_bar, 1.0) else float("nan")
    return float((p_bar - p_expected) / (1 - p_expected))


def pairwise_cohen(answers_by_rater: dict[str, dict[str, int]]) -> list[dict]:
    """Cohen's kappa for every pair of raters over the samples both answered."""
    rows = []
    for first, second in combinations(sorted(answers_by_rater), 2):
        shared = sorted(set(answers_by_rater[first]) & set(answers_by_rater[second]))
        a = [answers_by_rater[first][s] for s in shared]
        b = [answers_by_rater[second][s] for s in shared]
        rows.append({"raters": [first, second], "n": len(shared), "kappa": cohen_kappa(a, b),
                     "agreement": float(np.mean(np.equal(a, b))) if shared else float("nan")})
    return rows


def confusion_matrix(truth: Sequence[int], answers: Sequence[int], num_classes: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix as sk_confusion

    return sk_confusion(np.asarray(truth, dtype=int), np.asarray(answers, dtype=int), labels=list(range(num_classes)))


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], title: str, path: str | Path) -> None:
    """Row-normalised confusion matrix as a PNG (paper Figure 5): rows true class, columns answer."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    matrix = np.asarray(matrix, dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * size, 1.0 + 0.5 * size), dpi=110)
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(size):
        for j in range(size):
            if matrix[i, j]:
                value = normalised[i, j]
                ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=7,
                        color="white" if value > 0.5 else "black")
    ax.set_xticks(range(size), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(size), [f"{name} ({int(n)})" for name, n in zip(class_names, rows[:, 0])], fontsize=8)
    ax.set_xlabel("answer")
    ax.set_ylabel("true label (samples)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
