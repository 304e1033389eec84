"""Evaluation as the paper reports it: per-class metrics, tuned thresholds, reports, method comparison.

- ``metrics``: per-class F1/precision/recall/AUC on scikit-learn, mean ± std, ``tune_thresholds``
- ``report``: one run's report files (metrics.json, report.md, ROC and F1 images, predictions.csv)
- ``evaluate``: ``evaluate_run(run_dir, split)`` — tune thresholds on val, predict, report
- ``compare``: ``compare_runs(run_dirs)`` — paper Tables 1, 2 and 7 with the one-sided Wilcoxon test
"""
