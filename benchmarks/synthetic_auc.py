"""Mean ROC AUC of a `protloc predict` output against a synthetic data set's labels.csv.

    protloc synth DIR --samples 120 --seed 7
    protloc predict DIR --model MODEL --out DIR.csv        # default flags: the files state 0.5 µm/px
    python benchmarks/synthetic_auc.py DIR/labels.csv DIR.csv

Prints the mean over classes with positives and negatives, and each class's AUC.
"""

from __future__ import annotations

import csv
import sys

import numpy as np
from sklearn.metrics import roc_auc_score


def main(labels_csv: str, predictions_csv: str) -> int:
    with open(labels_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    truth = {row[0]: set(filter(None, row[1].split(";"))) for row in rows[1:]}
    with open(predictions_csv, newline="") as handle:
        reader = csv.DictReader(handle)
        classes = [c for c in reader.fieldnames if c not in ("id", "pixel_size_um", "scale", "predicted")]
        preds = list(reader)
    ids = [row["id"] for row in preds]
    missing = sorted(set(truth) - set(ids))
    if missing:
        print(f"{len(missing)} labelled samples without a prediction, e.g. {missing[0]}", file=sys.stderr)
        return 1
    scores = np.array([[float(row[c]) for c in classes] for row in preds])
    aucs = {}
    for k, cls in enumerate(classes):
        y = np.array([cls in truth[i] for i in ids])
        if 0 < y.sum() < len(y):
            aucs[cls] = roc_auc_score(y, scores[:, k])
    scales = sorted({row["scale"] for row in preds})
    print(f"samples {len(ids)}; scale(s) applied: {', '.join(scales)}")
    print(f"mean ROC AUC {np.mean(list(aucs.values())):.3f} over {len(aucs)} classes; min {min(aucs.values()):.3f}")
    for cls, value in aucs.items():
        print(f"  {cls:<24} {value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
