"""The evaluation report of one run on one split: JSON, Markdown (paper Tables 1 and 2), images, CSV.

``write_report(out_dir, ...)`` writes into ``out_dir``:

- ``metrics.json``: everything ``evaluate_predictions`` computes plus provenance (``format``
  ``protloc-evaluation/1``); undefined metrics are ``null`` with their reason.
- ``report.md``: the summary (Table 1 layout) and the per-class table (Table 2 layout) with F1,
  precision, recall, AUC at threshold 0.5 and F1 at the tuned thresholds.
- ``roc_curves.png``: one small ROC plot per class, AUC in its title.
- ``f1_per_class.png``: bars of per-class F1 at 0.5 and at the tuned thresholds.
- ``predictions.csv``: ``id``, one probability column per class (named by class), ``true_labels`` and
  ``predicted_labels`` (at the tuned thresholds) as ``Name;Name``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from protloc.evaluation.metrics import (
    DEFAULT_THRESHOLD,
    NO_POSITIVES,
    binarize,
    check_inputs,
    evaluate_predictions,
    format_mean_std,
    format_value,
)

FORMAT = "protloc-evaluation/1"
FILES = ("metrics.json", "report.md", "roc_curves.png", "f1_per_class.png", "predictions.csv")


def ids_digest(ids: Sequence[str]) -> str:
    """A fingerprint of the evaluated samples, so compare can tell runs scored on different sets."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def open_atomic(path: Path):
    """(handle, temporary path) for writing ``path`` atomically; ``commit_atomic`` renames it in place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, _umask_mode())  # mkstemp makes 0600 files; reports should be readable like any other
    return os.fdopen(fd, "w", encoding="utf-8", newline=""), tmp


def write_text_atomic(path: Path, text: str) -> None:
    handle, tmp = open_atomic(path)
    try:
        with handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---:" if a == "r" else ":---:" if a == "c" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(entry: dict, metric: str) -> str:
    value = entry[metric]
    if value is None:
        return entry["undefined"].get(metric, "undefined")
    return format_value(value)


def render_markdown(metrics: dict) -> str:
    """report.md: Table 1 (means over classes) and Table 2 (per class) for one run and split."""
    classes = metrics["classes"]
    summary = metrics["summary"]
    title = metrics.get("model") or "model"
    parts = [
        f"# Evaluation of {title} on the {metrics.get('split', '?')} split",
        "",
        f"Run: `{metrics.get('run', '?')}`  ",
        f"Samples: {metrics['n_samples']}; thresholds: 0.5 (paper) and per-class thresholds "
        f"{metrics.get('thresholds_source', 'given')}.",
        "",
        "## Summary over classes (Table 1 layout)",
        "",
        "Mean ± std over the classes where a metric is defined; F1, precision and recall at threshold 0.5.",
        "",
        markdown_table(
            ["Method", "F1 Score", "Precision", "Recall", "AUC", "F1 (tuned thresholds)"],
            [[
                title,
                format_mean_std(summary["f1"]),
                format_mean_std(summary["precision"]),
                format_mean_std(summary["recall"]),
                format_mean_std(summary["auc"]),
                format_mean_std(summary["f1_tuned"]),
            ]],
        ),
        "",
    ]
    excluded = {m: summary[m]["excluded"] for m in ("f1", "auc") if summary[m]["excluded"]}
    for metric, names in excluded.items():
        parts.append(f"Excluded from the {metric.upper()} mean (undefined on this split): {', '.join(names)}.  ")
    if excluded:
        parts.append("")
    rows = []
    for name in classes:
        entry = metrics["per_class"][name]
        if entry["positives"] == 0:  # say it once per row, not in every column
            rows.append([name, 0, NO_POSITIVES, "–", "–", "–", format_value(entry["threshold"], 2), "–"])
            continue
        rows.append([
            name, entry["positives"], _cell(entry, "f1"), _cell(entry, "precision"), _cell(entry, "recall"),
            _cell(entry, "auc"), format_value(entry["threshold"], 2), _cell(entry, "f1_tuned"),
        ])
    rows.append([
        "**Mean**", "", format_value(summary["f1"]["mean"]), format_value(summary["precision"]["mean"]),
        format_value(summary["recall"]["mean"]), format_value(summary["auc"]["mean"]), "",
        format_value(summary["f1_tuned"]["mean"]),
    ])
    parts += [
        "## Per class (Table 2 layout)",
        "",
        markdown_table(
            ["Class", "Positives", "F1 @0.5", "Precision @0.5", "Recall @0.5", "AUC", "Tuned threshold", "F1 @tuned"],
            rows,
        ),
        "",
        "Images: `roc_curves.png` (per-class ROC curves), `f1_per_class.png` (per-class F1). "
        "Per-sample probabilities: `predictions.csv`.",
        "",
    ]
    return "\n".join(parts)


def new_figure(width: float, height: float):
    # A Figure with its own Agg canvas: no pyplot global state, works without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_roc_curves(path: Path, y_true: np.ndarray, probs: np.ndarray, metrics: dict) -> None:
    """Small multiples: one ROC curve per class with its AUC; undefined classes say why."""
    from sklearn.metrics import roc_curve

    classes = metrics["classes"]
    columns = min(4, len(classes))
    rows = int(np.ceil(len(classes) / columns))
    figure = new_figure(3.0 * columns, 3.0 * rows)
    axes = figure.subplots(rows, columns, squeeze=False)
    for c, name in enumerate(classes):
        ax = axes[c // columns][c % columns]
        entry = metrics["per_class"][name]
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.7", linewidth=1)
        if entry["auc"] is None:
            ax.text(0.5, 0.5, entry["undefined"]["auc"].replace(": ", ":\n"), ha="center", va="center", fontsize=9)
            ax.set_title(name, fontsize=10)
        else:
            fpr, tpr, _ = roc_curve(y_true[:, c], probs[:, c])
            ax.plot(fpr, tpr, color="C0", linewidth=1.5)
            ax.set_title(f"{name}\nAUC {entry['auc']:.3f} (n+={entry['positives']})", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        if c % columns == 0:
            ax.set_ylabel("true positive rate", fontsize=8)
        if c // columns == rows - 1 or c + columns >= len(classes):
            ax.set_xlabel("false positive rate", fontsize=8)
    for c in range(len(classes), rows * columns):
        axes[c // columns][c % columns].set_visible(False)
    mean_auc = metrics["summary"]["auc"]
    figure.suptitle(f"ROC curves per class — mean AUC {format_mean_std(mean_auc, 3)}", fontsize=12)
    figure.tight_layout()
    figure.savefig(path)


def plot_f1_per_class(path: Path, metrics: dict) -> None:
    """Bars of per-class F1 at 0.5 and at the tuned thresholds; undefined classes marked."""
    classes = metrics["classes"]
    per_class = metrics["per_class"]
    x = np.arange(len(classes))
    width = 0.4
    figure = new_figure(max(6.0, 0.7 * len(classes) + 2), 4.5)
    ax = figure.subplots()
    at_half = [per_class[n]["f1"] if per_class[n]["f1"] is not None else 0.0 for n in classes]
    tuned = [per_class[n]["f1_tuned"] if per_class[n]["f1_tuned"] is not None else 0.0 for n in classes]
    ax.bar(x - width / 2, at_half, width, label="F1 @ 0.5", color="C0")
    ax.bar(x + width / 2, tuned, width, label="F1 @ tuned threshold", color="C1")
    for i, name in enumerate(classes):
        if per_class[name]["f1"] is None:
            ax.text(i, 0.02, "no positives", rotation=90, ha="center", va="bottom", fontsize=8, color="0.4")
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("F1")
    summary = metrics["summary"]
    ax.set_title(
        f"F1 per class — mean {format_mean_std(summary['f1'], 3)} @0.5, "
        f"{format_mean_std(summary['f1_tuned'], 3)} tuned",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper center", ncols=2, frameon=False)
    figure.tight_layout()
    figure.savefig(path)


def write_predictions_csv(path: Path, ids: Sequence[str], y_true: np.ndarray, probs: np.ndarray,
                          classes: Sequence[str], thresholds) -> None:
    predicted = binarize(probs, thresholds)
    handle, tmp = open_atomic(path)
    try:
        with handle:
            writer = csv.writer(handle)
            writer.writerow(["id", *classes, "true_labels", "predicted_labels"])
            for i, sample_id in enumerate(ids):
                writer.writerow([
                    sample_id,
                    *(f"{p:.6f}" for p in probs[i]),
                    ";".join(classes[c] for c in np.flatnonzero(y_true[i])),
                    ";".join(classes[c] for c in np.flatnonzero(predicted[i])),
                ])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(out_dir, ids: Sequence[str], y_true, probs, classes: Sequence[str], thresholds=None,
                 info: dict | None = None) -> dict:
    """Compute the metrics and write all report files into ``out_dir``; returns the metrics dict.

    ``info`` adds provenance to metrics.json and the Markdown (run, split, model,
    thresholds_source, ...).
    """
    y_true, probs = check_inputs(y_true, probs, classes)
    if len(ids) != y_true.shape[0]:
        raise ValueError(f"{len(ids)} ids for {y_true.shape[0]} samples")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"format": FORMAT, **(info or {})}
    metrics.update(evaluate_predictions(y_true, probs, classes, thresholds))
    metrics["ids_sha256"] = ids_digest(ids)
    metrics["default_threshold"] = DEFAULT_THRESHOLD
    write_predictions_csv(out_dir / "predictions.csv", ids, y_true, probs, list(classes), metrics["thresholds"])
    plot_roc_curves(out_dir / "roc_curves.png", y_true, probs, metrics)
    plot_f1_per_class(out_dir / "f1_per_class.png", metrics)
    write_text_atomic(out_dir / "report.md", render_markdown(metrics))
    # metrics.json last: its presence marks a complete report (compare reads it)
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def load_metrics(path) -> dict:
    """Read a metrics.json written by ``write_report``; ProtlocError when missing or not one."""
    from protloc.errors import ProtlocError

    path = Path(path)
    if not path.is_file():
        raise ProtlocError(f"no evaluation found: {path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProtlocError(f"cannot read {path}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ProtlocError(f"{path} is not a protloc evaluation (format {FORMAT})")
    return data
