"""``protloc expert report``: the paper's Tables 3 and 4 and Figure 5 for a study.

Writes STUDY/report/report.md, report.json and one confusion-matrix PNG per rater, and returns the
Markdown (which the command prints). The model's answers come from predictions.json, the experts'
from the answer database.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from protloc.errors import ProtlocError
from protloc.expert import stats
from protloc.expert.db import AnswerStore
from protloc.files import sample_file_stem
from protloc.expert.study import Study
from protloc.files import atomic_write_text

MODEL = "model"


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def build_report(study: Study, db_url: str | None = None, out: Path | None = None, fleiss_min: int = 3) -> dict:
    out = Path(out) if out else study.report_dir
    truth = study.truth()
    present = sorted(set(truth.values()))
    classes = study.classes
    store = AnswerStore(db_url or study.default_db_url, study.study_id)
    try:
        experts = {name: {s: study.label_set.index(label) for s, label in answers.items() if s in truth}
                   for name, answers in store.all_answers().items()}
    finally:
        store.close()
    predictions = study.load_predictions()
    raters: dict[str, dict[str, int]] = {}
    model_info = None
    if predictions:
        raters[MODEL] = {s: study.label_set.index(p["label"]) for s, p in predictions["predictions"].items() if s in truth}
        model_info = {k: predictions.get(k) for k in ("model", "model_sha256", "task", "method", "features", "created_at")}
    for name in sorted(experts):
        if name == MODEL:
            raise ProtlocError("an expert is named 'model'; rename them (the name is the model's in the report)")
        raters[name] = experts[name]
    if not raters:
        raise ProtlocError("nothing to report: no model predictions (protloc expert predict) and no expert answers")

    figures_dir = out
    result: dict = {
        "study": study.study_id, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "samples": len(truth), "classes": classes, "classes_averaged": [classes[c] for c in present],
        "model": model_info, "raters": {}, "model_vs_expert": [], "agreement": {},
    }
    for name, answers in raters.items():
        ids = sorted(answers)
        t = [truth[s] for s in ids]
        a = [answers[s] for s in ids]
        metrics = stats.rater_metrics(t, a, present)
        matrix = stats.confusion_matrix(t, a, len(classes))
        figure = figures_dir / f"confusion-{sample_file_stem(name)}.png"
        title = f"{'GapNet-PL (model)' if name == MODEL else name}: accuracy {_fmt(metrics.accuracy)} (n={len(ids)})"
        # Classes neither in the truth nor answered by this rater would be empty rows and columns.
        shown = sorted(set(present) | set(a))
        stats.plot_confusion(matrix[np.ix_(shown, shown)], [classes[c] for c in shown], title, figure)
        result["raters"][name] = {
            "kind": "model" if name == MODEL else "expert", "answered": len(ids), **metrics.to_dict(),
            "per_class": {classes[c]: v for c, v in stats.per_class_scores(t, a, present).items()},
            "confusion_matrix": matrix.tolist(), "figure": figure.name,
        }
    if MODEL in raters:
        for name in experts:
            shared = sorted(set(raters[MODEL]) & set(experts[name]))
            counts = stats.contingency([truth[s] for s in shared], [raters[MODEL][s] for s in shared],
                                       [experts[name][s] for s in shared])
            test = stats.mcnemar(*counts)
            result["model_vs_expert"].append({"expert": name, "n": len(shared), **test.to_dict()})
    names = sorted(experts)
    if len(names) >= 2:
        result["agreement"]["cohen"] = stats.pairwise_cohen({n: experts[n] for n in names})
    if len(names) >= fleiss_min:
        shared = sorted(set.intersection(*(set(experts[n]) for n in names)))
        ratings = np.array([[experts[n][s] for n in names] for s in shared]).reshape(len(shared), len(names))
        result["agreement"]["fleiss"] = {"raters": names, "n": len(shared),
                                         "kappa": stats.fleiss_kappa(ratings, len(classes))}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(_jsonable(result), indent=2) + "\n")
    markdown = to_markdown(study, result)
    atomic_write_text(out / "report.md", markdown)
    result["markdown"] = markdown
    result["folder"] = str(out)
    return result


def _jsonable(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def to_markdown(study: Study, result: dict) -> str:
    lines = [f"# Human-expert comparison: study {study.study_id}", ""]
    lines.append(f"{result['samples']} single-label samples; macro averages over the "
                 f"{len(result['classes_averaged'])} classes present in the study.")
    if result["model"]:
        lines.append(f"Model: `{result['model']['model']}` ({result['model']['method']}).")
    else:
        lines.append("Model: no predictions yet (run `protloc expert predict`).")
    lines += ["", "## Predictive performance (paper Table 3)", "",
              "| Rater | Answered | Accuracy | F1 | Precision | Recall |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in result["raters"].items():
        label = "Model" if name == MODEL else name
        lines.append(f"| {label} | {r['answered']}/{result['samples']} | {_fmt(r['accuracy'])} | {_fmt(r['f1'])} | "
                     f"{_fmt(r['precision'])} | {_fmt(r['recall'])} |")
    if result["model_vs_expert"]:
        lines += ["", "## Model against each expert (paper Table 4, McNemar's test)", "",
                  "| Expert | n | Both correct | Only model correct | Only expert correct | Both wrong | Test | χ² | p |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
        for row in result["model_vs_expert"]:
            lines.append(f"| {row['expert']} | {row['n']} | {row['both_correct']} | {row['only_first']} | "
                         f"{row['only_second']} | {row['both_wrong']} | {row['method']} | {_fmt(row['statistic'])} | "
                         f"{_fmt_p(row['p_value'])} |")
        lines.append("")
        lines.append(f"The exact binomial test is used when fewer than {stats.EXACT_BELOW} samples are discordant.")
    agreement = result["agreement"]
    if agreement:
        lines += ["", "## Agreement between experts", ""]
        if "cohen" in agreement:
            lines += ["| Experts | n | Agreement | Cohen's κ |", "|---|---:|---:|---:|"]
            for row in agreement["cohen"]:
                lines.append(f"| {row['raters'][0]} – {row['raters'][1]} | {row['n']} | {_fmt(row['agreement'])} | {_fmt(row['kappa'])} |")
        if "fleiss" in agreement:
            f = agreement["fleiss"]
            lines += ["", f"Fleiss' κ over {len(f['raters'])} experts on the {f['n']} samples all answered: {_fmt(f['kappa'])}"]
    lines += ["", "## Confusion matrices (paper Figure 5; rows: true class, normalised)", ""]
    for name, r in result["raters"].items():
        lines.append(f"![{'Model' if name == MODEL else name}]({r['figure']})")
    return "\n".join(lines) + "\n"
