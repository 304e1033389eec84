"""Statistics of the expert comparison against SciPy, scikit-learn and statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import cohen_kappa_score, f1_score

from protloc.expert import stats

# Fleiss (1971) / Wikipedia example: 10 subjects, 14 raters, 5 categories, kappa = 0.210.
FLEISS_EXAMPLE = np.array([
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
])


def test_mcnemar_on_the_papers_counts():
    result = stats.mcnemar(121, 60, 7, 12)
    assert result.method.startswith("chi-square")
    assert result.statistic == pytest.approx((53 - 1) ** 2 / 67)
    assert result.p_value == pytest.approx(2.1e-10, rel=0.03)  # the paper: p = 2e-10
    assert result.p_value == pytest.approx(scipy_stats.chi2.sf(result.statistic, 1))


def test_mcnemar_matches_statsmodels():
    import statsmodels.stats.contingency_tables as sm  # a dev dependency: missing is a failure, not a skip
    for table in ([[121, 60], [7, 12]], [[30, 14], [4, 2]], [[10, 3], [9, 5]]):
        (a, b), (c, d) = table
        for exact in (False, True):
            ours = stats.mcnemar(a, b, c, d, exact=exact)
            theirs = sm.mcnemar(np.array(table), exact=exact, correction=True)
            assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9, abs=1e-12), (table, exact)


def test_exact_mcnemar_for_few_discordant_pairs_is_the_binomial_test():
    result = stats.mcnemar(40, 9, 2, 5)  # 11 discordant pairs < 25: exact
    assert result.method == "exact binomial" and result.statistic is None
    assert result.p_value == pytest.approx(scipy_stats.binomtest(2, 11, 0.5).pvalue)
    assert stats.mcnemar(40, 9, 2, 5, exact=False).method.startswith("chi-square")
    assert stats.mcnemar(10, 0, 0, 3).p_value == 1.0
    with pytest.raises(ValueError):
        stats.mcnemar(1, -1, 0, 0)


def test_contingency_counts_paired_correctness():
    truth = [0, 1, 2, 3, 4, 5]
    model = [0, 1, 2, 0, 0, 5]
    expert = [0, 2, 2, 3, 1, 1]
    # both: 0, 2 / only model: 1, 5 / only expert: 3 / both wrong: 4
    assert stats.contingency(truth, model, expert) == (2, 2, 1, 1)


def test_rater_metrics_macro_over_present_classes():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 200)
    answers = np.where(rng.random(200) < 0.7, truth, rng.integers(0, 13, 200))
    metrics = stats.rater_metrics(truth, answers, classes=list(range(5)))
    assert metrics.accuracy == pytest.approx(np.mean(truth == answers))
    assert metrics.f1 == pytest.approx(f1_score(truth, answers, labels=list(range(5)), average="macro", zero_division=0))
    assert 0 < metrics.f1 < 1 and metrics.classes_averaged == 5
    perfect = stats.rater_metrics(truth, truth, classes=list(range(5)))
    assert (perfect.accuracy, perfect.f1, perfect.precision, perfect.recall) == (1.0, 1.0, 1.0, 1.0)


def test_cohen_kappa_matches_sklearn():
    rng = np.random.default_rng(1)
    first = rng.integers(0, 13, 150)
    second = np.where(rng.random(150) < 0.6, first, rng.integers(0, 13, 150))
    assert stats.cohen_kappa(first, second) == pytest.approx(cohen_kappa_score(first, second))
    assert stats.cohen_kappa([3, 3, 3], [3, 3, 3]) == 1.0
    # By hand: observed agreement 0.6, chance agreement 0.6*0.6 + 0.4*0.4 = 0.52
    assert stats.cohen_kappa([0, 0, 0, 1, 1], [0, 0, 1, 1, 0]) == pytest.approx((0.6 - 0.52) / (1 - 0.52))
    rows = stats.pairwise_cohen({"a": {"x": 1, "y": 2, "z": 3}, "b": {"x": 1, "y": 2}, "c": {"x": 0}})
    assert [r["raters"] for r in rows] == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert rows[0]["n"] == 2 and rows[0]["kappa"] == 1.0 and rows[1]["n"] == 1


def test_fleiss_kappa_textbook_value_and_statsmodels():
    assert stats.fleiss_kappa_from_counts(FLEISS_EXAMPLE) == pytest.approx(0.2099, abs=5e-4)
    import statsmodels.stats.inter_rater as irr
    assert stats.fleiss_kappa_from_counts(FLEISS_EXAMPLE) == pytest.approx(irr.fleiss_kappa(FLEISS_EXAMPLE))
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 13, 80)
    ratings = np.stack([np.where(rng.random(80) < 0.7, truth, rng.integers(0, 13, 80)) for _ in range(4)], axis=1)
    table, _ = irr.aggregate_raters(ratings, n_cat=13)
    assert stats.fleiss_kappa(ratings, 13) == pytest.approx(irr.fleiss_kappa(table))
    assert math.isnan(stats.fleiss_kappa(np.zeros((0, 3), int), 13))


def test_confusion_matrix_png(tmp_path):
    matrix = stats.confusion_matrix([0, 1, 2, 2], [0, 2, 2, 2], 13)
    assert matrix.shape == (13, 13) and matrix[2, 2] == 2 and matrix[1, 2] == 1
    path = tmp_path / "cm.png"
    stats.plot_confusion(matrix[:3, :3], ["A", "B", "C"], "test", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
