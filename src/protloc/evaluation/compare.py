"""Methods side by side as in the paper: Table 1, Table 2 and Table 7, with the Wilcoxon test.

``compare_runs(run_dirs, split)`` reads each run's ``evaluation/<split>/metrics.json`` (written by
``protloc evaluate``), its ``model.pt`` and ``metrics.csv``, and builds:

- Table 1: per method mean F1 ± std over classes, the p-value of a one-sided paired Wilcoxon
  signed-rank test of the first run against that method over the per-class F1 scores (H1: the
  first run's F1 scores are greater), mean precision, mean recall and mean AUC ± std.
- Table 2: per-class F1 of every method, the best method(s) of each class marked, wins counted.
- Table 7: mean training time per epoch (``epoch_seconds`` in metrics.csv) and parameter count.

The Wilcoxon test uses ``scipy.stats.wilcoxon`` on the differences of the classes where both runs
define F1; zero differences are dropped (``zero_method="wilcox"``) and ``n`` reports how many
pairs remain. By default the p-value is the normal approximation without continuity correction,
which reproduces the paper's Table 1 p-values from its Table 2 exactly; ``method="exact"`` (or
``"auto"``) gives scipy's exact distribution instead.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from protloc.errors import ProtlocError
from protloc.evaluation.metrics import format_value
from protloc.evaluation.report import load_metrics, markdown_table, write_json, write_text_atomic, new_figure

FORMAT = "protloc-comparison/1"
WILCOXON_METHODS = ("approx", "exact", "auto")
ZERO_TOLERANCE = 1e-12


def wilcoxon_greater(first: Sequence[float | None], other: Sequence[float | None], method: str = "approx") -> dict:
    """One-sided paired Wilcoxon signed-rank test that ``first`` is greater than ``other``.

    Pairs with a ``None`` on either side are left out; zero differences are dropped (Wilcoxon's
    original treatment). Returns ``{"statistic", "p_value", "n", "n_pairs", "zero_differences",
    "method", "alternative", "note"}``; ``p_value`` is ``None`` (with a note) when no non-zero
    difference remains.
    """
    from scipy.stats import wilcoxon

    if method not in WILCOXON_METHODS:
        raise ProtlocError(f"unknown Wilcoxon method {method!r}; choose one of {', '.join(WILCOXON_METHODS)}")
    if len(first) != len(other):
        raise ProtlocError(f"paired test needs equally long score lists, got {len(first)} and {len(other)}")
    pairs = [(a, b) for a, b in zip(first, other) if a is not None and b is not None]
    differences = np.array([a - b for a, b in pairs], dtype=np.float64)
    # F1 values of the same counts can differ in the last bit; such pairs are ties, not wins
    differences[np.abs(differences) <= ZERO_TOLERANCE] = 0.0
    zeros = int((differences == 0).sum())
    result = {
        "statistic": None, "p_value": None, "n": int(differences.size - zeros), "n_pairs": len(pairs),
        "zero_differences": zeros, "method": method, "alternative": "greater", "note": None,
    }
    if result["n"] == 0:
        result["note"] = "undefined: no pair with a non-zero difference"
        return result
    options = {"correction": False} if method == "approx" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about small n / ties; n is reported instead
        test = wilcoxon(differences, zero_method="wilcox", alternative="greater", method=method, **options)
    result["statistic"] = float(test.statistic)
    result["p_value"] = float(test.pvalue)
    return result


def _run_dir(path) -> Path:
    run = Path(path)
    if not run.is_dir():
        raise ProtlocError(f"{run} is not a directory")
    if not (run / "model.pt").is_file() and not (run / "config.yaml").is_file():
        raise ProtlocError(f"{run} is not a protloc run directory (no model.pt or config.yaml)")
    return run


def read_epoch_metrics(path: Path) -> list[dict]:
    """Rows of a run's metrics.csv, one per epoch (the last row wins when a resumed run repeats one)."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise ProtlocError(f"cannot read {path}: {exc}".splitlines()[0]) from None
    by_epoch: dict[str, dict] = {}
    for row in rows:
        by_epoch[str(row.get("epoch", len(by_epoch)))] = row
    return list(by_epoch.values())


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def training_time(run: Path) -> dict:
    """Mean seconds per epoch and samples/s over the epochs in metrics.csv (None when not recorded)."""
    rows = read_epoch_metrics(run / "metrics.csv")
    seconds = [s for s in (_float(r.get("epoch_seconds")) for r in rows) if s is not None]
    rates = [s for s in (_float(r.get("samples_per_second")) for r in rows) if s is not None]
    return {
        "epochs": len(rows),
        "epoch_seconds_mean": float(np.mean(seconds)) if seconds else None,
        "samples_per_second_mean": float(np.mean(rates)) if rates else None,
    }


def training_device(run: Path) -> str | None:
    """Where the run trained, from environment.json ("cpu", "cuda: NVIDIA H100 x2"); None if unknown."""
    try:
        env = json.loads((run / "environment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(env, dict) or not env.get("device"):
        return None
    text = str(env["device"])
    if text != "cpu" and env.get("device_name"):
        text += f": {env['device_name']}"
    world = env.get("world_size")
    if isinstance(world, int) and world > 1:
        text += f" x{world}"
    return text


def count_parameters(payload: dict) -> int:
    """Trainable parameters of the network a model file describes (built on the meta device: no memory)."""
    import torch

    from protloc.model_file import network_from_model_file
    from protloc.models import create_model

    try:
        with torch.device("meta"):
            network = create_model(
                payload["model"], num_classes=len(payload["classes"]), in_channels=len(payload["channels"]),
                **payload.get("model_options", {}),
            )
    except ProtlocError:
        raise
    except Exception:  # a model whose constructor cannot run on meta tensors: build it for real
        network = network_from_model_file(payload)
    return int(sum(p.numel() for p in network.parameters()))


def _method_labels(models: list[str], runs: list[Path]) -> list[str]:
    labels = []
    for model, run in zip(models, runs):
        labels.append(model if models.count(model) == 1 else f"{model} ({run.name})")
    if len(set(labels)) < len(labels):  # same model, same folder name in different places
        labels = [f"{label} [{i + 1}]" for i, label in enumerate(labels)]
    return labels


def compare_runs(run_dirs: Sequence, split: str = "test", wilcoxon_method: str = "approx") -> dict:
    """Tables 1, 2 and 7 for the given runs (the first run is tested against each other)."""
    from protloc.model_file import read_model_file

    if not run_dirs:
        raise ProtlocError("compare needs at least one run directory")
    runs = [_run_dir(path) for path in run_dirs]
    resolved = [run.resolve() for run in runs]
    if len(set(resolved)) < len(resolved):
        raise ProtlocError("the same run directory is given twice")
    evaluations = []
    for run in runs:
        path = run / "evaluation" / split / "metrics.json"
        if not path.is_file():
            raise ProtlocError(f"run {run} has no evaluation of the {split} split; run `protloc evaluate {run} --split {split}` first")
        evaluations.append(load_metrics(path))
    payloads = [read_model_file(run / "model.pt") for run in runs]
    classes = evaluations[0]["classes"]
    for run, evaluation in zip(runs, evaluations):
        if evaluation["classes"] != classes:
            raise ProtlocError(f"run {run} predicts other classes than {runs[0]}; runs must share one label set")
    notes = []
    digests = {evaluation.get("ids_sha256") for evaluation in evaluations}
    if len(digests) > 1:
        notes.append(f"the runs were evaluated on different {split} samples; the paired test assumes the same ones")
    labels = _method_labels([p["model"] for p in payloads], runs)
    f1 = [[e["per_class"][name]["f1"] for name in classes] for e in evaluations]

    table1 = []
    for i, (run, label, evaluation) in enumerate(zip(runs, labels, evaluations)):
        summary = evaluation["summary"]
        row = {
            "method": label, "model": payloads[i]["model"], "run": str(run),
            "f1_mean": summary["f1"]["mean"], "f1_std": summary["f1"]["std"],
            "precision_mean": summary["precision"]["mean"], "recall_mean": summary["recall"]["mean"],
            "auc_mean": summary["auc"]["mean"], "auc_std": summary["auc"]["std"],
            "f1_tuned_mean": summary["f1_tuned"]["mean"], "n_samples": evaluation["n_samples"],
            "wilcoxon": None if i == 0 else wilcoxon_greater(f1[0], f1[i], method=wilcoxon_method),
        }
        table1.append(row)

    winners: dict[str, list[str]] = {}
    for c, name in enumerate(classes):
        values = [(scores[c], label) for scores, label in zip(f1, labels) if scores[c] is not None]
        if not values:
            winners[name] = []
            continue
        best = max(v for v, _ in values)
        winners[name] = [label for v, label in values if v >= best - ZERO_TOLERANCE]
    table2 = {
        "classes": classes,
        "rows": [
            {"method": label, "f1": dict(zip(classes, scores)), "mean": evaluation["summary"]["f1"]["mean"],
             "wins": sum(label in winners[name] for name in classes)}
            for label, scores, evaluation in zip(labels, f1, evaluations)
        ],
        "winners": winners,
    }

    table7 = []
    for run, label, payload in zip(runs, labels, payloads):
        row = {"method": label, "run": str(run), **training_time(run), "device": training_device(run),
               "parameters": count_parameters(payload)}
        if row["epoch_seconds_mean"] is None:
            notes.append(f"{label}: no training times (metrics.csv missing or without epoch_seconds)")
        table7.append(row)

    return {
        "format": FORMAT, "split": split, "classes": classes, "first": labels[0],
        "wilcoxon_method": wilcoxon_method,
        "table1": table1, "table2": table2, "table7": table7, "notes": notes,
    }


def _p_value_cell(wilcoxon: dict | None) -> str:
    if wilcoxon is None:
        return "–"
    if wilcoxon["p_value"] is None:
        return f"undefined (n={wilcoxon['n']})"
    return f"{wilcoxon['p_value']:.4f} (n={wilcoxon['n']})"


def _mean_std(mean, std) -> str:
    return "undefined" if mean is None else f"{mean:.2f} ± {std:.2f}"


def render_markdown(tables: dict) -> str:
    first = tables["first"]
    classes = tables["classes"]
    method_note = (
        "normal approximation without continuity correction, as in the paper"
        if tables["wilcoxon_method"] == "approx" else f"scipy method '{tables['wilcoxon_method']}'"
    )
    t1 = markdown_table(
        ["Method", "F1 Score", "p-value", "Precision", "Recall", "AUC"],
        [[r["method"], _mean_std(r["f1_mean"], r["f1_std"]), _p_value_cell(r["wilcoxon"]),
          format_value(r["precision_mean"], 2), format_value(r["recall_mean"], 2), _mean_std(r["auc_mean"], r["auc_std"])]
         for r in tables["table1"]],
    )
    winners = tables["table2"]["winners"]
    rows2 = []
    for row in tables["table2"]["rows"]:
        cells = []
        for name in classes:
            value = row["f1"][name]
            text = "–" if value is None else f"{value:.3f}"
            cells.append(f"**{text}**" if row["method"] in winners[name] else text)
        rows2.append([row["method"], *cells, format_value(row["mean"]), row["wins"]])
    t2 = markdown_table(["Method", *classes, "Mean", "Wins"], rows2)
    t7 = markdown_table(
        ["Method", "Training Time/Epoch (sec)", "Epochs", "Samples/s", "Device", "Parameters"],
        [[r["method"], format_value(r["epoch_seconds_mean"], 1), r["epochs"], format_value(r["samples_per_second_mean"], 1),
          r["device"] or "–", f"{r['parameters']:,}"] for r in tables["table7"]],
    )
    parts = [
        f"# Method comparison on the {tables['split']} split",
        "",
        "## Table 1: performance over classes",
        "",
        f"Mean ± std over classes at threshold 0.5. p-value: one-sided paired Wilcoxon signed-rank test over the "
        f"per-class F1 scores, H1: {first} is better ({method_note}); n = classes with a non-zero difference.",
        "",
        t1,
        "",
        "## Table 2: F1 per class",
        "",
        "The best method of each class in bold (all of them on a tie).",
        "",
        t2,
        "",
        "## Table 7: training time per epoch and parameters",
        "",
        t7,
        "",
    ]
    if tables["notes"]:
        parts += ["## Notes", "", *[f"- {note}" for note in tables["notes"]], ""]
    return "\n".join(parts)


def plot_f1_comparison(path: Path, tables: dict) -> None:
    """Grouped bars: per-class F1 of every method."""
    classes = tables["classes"]
    rows = tables["table2"]["rows"]
    x = np.arange(len(classes))
    width = 0.8 / len(rows)
    figure = new_figure(max(7.0, 0.25 * len(classes) * len(rows) + 3), 4.8)
    ax = figure.subplots()
    for i, row in enumerate(rows):
        values = [row["f1"][name] if row["f1"][name] is not None else 0.0 for name in classes]
        positions = x - 0.4 + width * (i + 0.5)
        ax.bar(positions, values, width, label=f"{row['method']} (mean {format_value(row['mean'])})", color=f"C{i % 10}")
        for position, name in zip(positions, classes):
            if row["f1"][name] is None:  # an empty slot would read as F1 = 0
                ax.text(position, 0.02, "undefined", rotation=90, ha="center", va="bottom", fontsize=6, color="0.4")
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.2)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("F1 @ 0.5")
    ax.set_title(f"F1 per class and method ({tables['split']} split)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", ncols=min(3, len(rows)), frameon=False)
    figure.tight_layout()
    figure.savefig(path)


def write_comparison(tables: dict, out_dir) -> dict[str, Path]:
    """comparison.md, comparison.json and f1_per_class.png in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out_dir / "comparison.md",
        "json": out_dir / "comparison.json",
        "image": out_dir / "f1_per_class.png",
    }
    write_text_atomic(paths["markdown"], render_markdown(tables))
    write_json(paths["json"], json.loads(json.dumps(tables)))
    plot_f1_comparison(paths["image"], tables)
    return paths
