"""How much each precision changes GapNet-PL's answers on labelled real fields, against fp32.

``python -m protloc.bench.precision_accuracy --model FILE --data DIR [--precisions bf16 int8]``
predicts every labelled field of DIR once per precision (whole image, each field rescaled to the
model's pixel size: the platform's path), scores each with ``protloc.evaluation.external`` (mean
ROC AUC over the classes with >= 3 positives, the README's "On real images" protocol) and prints a
Markdown table: mean AUC, its change against fp32, the fields whose top class changed, the largest
probability change and the seconds per field. ``--json`` writes the figures.

The margins ``auto`` holds a precision to (docs/precision.md): |mean AUC change| <= 0.005 and the
top class unchanged on >= 99 of the 101 fields.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np

AUC_MARGIN = 0.005
TOP_CLASS_SHARE = 99 / 101


def evaluate_precisions(model: str, data: str, precisions: list[str], progress: bool = False) -> dict:
    from protloc.data.index import open_dataset
    from protloc.evaluation.external import evaluate_model, model_predictions, resolve_mapping
    from protloc.inference import load_model

    index = open_dataset(data)
    rows, reference = {}, None
    for precision in ["fp32", *[p for p in precisions if p != "fp32"]]:
        predictor = load_model(model, precision=precision)
        ids = list(index.ids())
        with tempfile.TemporaryDirectory(prefix="protloc-precision-") as tmp:
            # warm-up (and int8's quantisation, made once): not timed
            predictor.predict_proba(index.load_image(ids[0]), whole_image=True)
            started = time.perf_counter()
            metrics = evaluate_model(predictor=predictor, data=index, out=tmp, whole_image=True, quiet=True,
                                     progress=progress, ids=ids)
            seconds = time.perf_counter() - started
            probs = _probabilities(tmp)
        entry = {"mean_auc": metrics["min_positives"]["mean_auc"], "fields": len(probs),
                 "seconds_per_field": seconds / max(1, len(probs)), "probabilities": probs}
        if reference is None:
            reference = entry
        else:
            ref_top = {k: int(np.argmax(v)) for k, v in reference["probabilities"].items()}
            entry["top_class_changed"] = sorted(k for k, v in probs.items() if int(np.argmax(v)) != ref_top[k])
            entry["max_abs_probability_change"] = float(max(
                np.abs(np.asarray(v) - np.asarray(reference["probabilities"][k])).max() for k, v in probs.items()))
            entry["auc_change"] = entry["mean_auc"] - reference["mean_auc"]
            entry["within_margins"] = bool(abs(entry["auc_change"]) <= AUC_MARGIN and
                                           len(probs) - len(entry["top_class_changed"]) >= TOP_CLASS_SHARE * len(probs))
        rows[precision] = entry
    return rows


def _probabilities(folder: str) -> dict[str, list[float]]:
    """The per-field probabilities an evaluation wrote (its predictions.csv)."""
    import csv
    from pathlib import Path

    path = next(Path(folder).glob("predictions*.csv"))
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        classes = [c for c in reader.fieldnames if c not in ("id", "true_labels", "predicted_labels")]
        return {row["id"]: [float(row[c]) for c in classes] for row in reader}


def markdown(rows: dict) -> str:
    lines = ["| precision | mean ROC AUC | Δ vs fp32 | top class changed | max |Δp| | s/field | within margins |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        n = r["fields"]
        if name == "fp32":
            lines.append(f"| fp32 | {r['mean_auc']:.4f} | - | - | - | {r['seconds_per_field']:.2f} | - |")
        else:
            lines.append(f"| {name} | {r['mean_auc']:.4f} | {r['auc_change']:+.4f} | {len(r['top_class_changed'])} of {n} "
                         f"| {r['max_abs_probability_change']:.3f} | {r['seconds_per_field']:.2f} | "
                         f"{'yes' if r['within_margins'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pretrained")
    parser.add_argument("--data", required=True)
    parser.add_argument("--precisions", nargs="+", default=["bf16", "int8"])
    parser.add_argument("--json", help="write the figures (without the per-field probabilities) here")
    args = parser.parse_args(argv)
    rows = evaluate_precisions(args.model, args.data, args.precisions, progress=sys.stderr.isatty())
    from protloc.inference.precision import detect_capabilities

    print(f"CPU: {detect_capabilities('cpu').describe()}")
    print(markdown(rows))
    if args.json:
        from protloc.bench.common import machine_info

        slim = {k: {f: v for f, v in r.items() if f != "probabilities"} for k, r in rows.items()}
        section = {"cpu": detect_capabilities("cpu").describe(), "model": args.model, "data": args.data,
                   "mode": "whole image, each field rescaled to the model's pixel size", "rows": slim}
        with open(args.json, "w", encoding="utf-8") as handle:  # the layout of `protloc bench` results
            json.dump({"machine": machine_info(), "command": "python -m protloc.bench.precision_accuracy "
                       + " ".join(argv if argv is not None else sys.argv[1:]),
                       "sections": {"precision-accuracy": section}}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
