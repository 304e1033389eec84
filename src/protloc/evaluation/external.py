"""``evaluate_model``: any model (pretrained, a file, a run) scored on any labelled data set.

The data's labels reach the model's classes directly (same label set) or through a label-set
mapping (``protloc.labels``: the built-in ``kaggle28-to-hpa13`` or the user's own file). Each image
is rescaled to the model's pixel size before the network sees it (``protloc.data.pixel_size``).
The report is the run report's (``write_report``: Tables 1 and 2 layout, ROC and F1 images,
predictions.csv, metrics.json) plus what a reader of a cross-label-set score needs: the mapping
used, the labels dropped, the samples left out, the counts, the pixel sizes, and the means over the
classes with at least ``min_positives`` positives (a class with one positive gives an AUC of 0 or 1
by chance).
"""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path

import numpy as np

from protloc.errors import ProtlocError
from protloc.evaluation.report import markdown_table, write_json, write_report, write_text_atomic

MIN_POSITIVES = 3


def resolve_mapping(data_set, model_set, mapping=None):
    """The mapping from the data's label set to the model's: None when they are the same set."""
    from protloc.labels import find_label_mapping, load_label_mapping

    if mapping is None and tuple(data_set.classes) == tuple(model_set.classes):
        return None
    if mapping is not None:
        found = mapping if hasattr(mapping, "targets") else load_label_mapping(mapping)
        if found.source.classes != data_set.classes:
            raise ProtlocError(f"mapping {found.name!r} maps from {found.source.name!r}, but the data's labels are "
                               f"{data_set.name!r}")
        if found.target.classes != model_set.classes:
            raise ProtlocError(f"mapping {found.name!r} maps onto {found.target.name!r}, but the model's classes are "
                               f"{model_set.name!r}")
        return found
    found = find_label_mapping(data_set, model_set)
    if found is None:
        raise ProtlocError(f"the data's labels ({data_set.name}, {len(data_set)} classes) are not the model's "
                           f"({model_set.name}, {len(model_set)} classes) and no built-in mapping joins them: "
                           "give --mapping FILE")
    return found


def split_ids(index, split: str | None) -> list[str]:
    """The labelled samples of the data, or of one split of its splits file."""
    labelled = [entry.id for entry in index.samples if entry.labels is not None]
    if not labelled:
        raise ProtlocError(f"{index.root} has no labelled samples (no labels file?)")
    if split is None:
        return labelled
    from protloc.data.index import default_splits_path
    from protloc.data.splits import load_splits

    path = default_splits_path(index.root)
    if not path.is_file():
        raise ProtlocError(f"--split {split}: {index.root} has no splits file ({path}); run `protloc data split` "
                           "or leave --split out to use every labelled sample")
    wanted = set(load_splits(path).get(split) or [])
    ids = [i for i in labelled if i in wanted]
    if not ids:
        raise ProtlocError(f"the {split} split of {index.root} has no labelled samples")
    return ids


def mean_over(metrics: dict, classes, metric: str, min_positives: int) -> tuple[float | None, list[str]]:
    chosen = [c for c in classes if metrics["per_class"][c]["positives"] >= min_positives
              and metrics["per_class"][c].get(metric) is not None]
    values = [metrics["per_class"][c][metric] for c in chosen]
    return (float(np.mean(values)) if values else None), chosen


def model_predictions(predictor, index, ids, *, pixel_size=None, whole_image=False, batch_size=4,
                      progress=True, description="predicting", given: dict | None = None):
    """Probabilities [len(ids), classes] with each image rescaled to the model's pixel size.

    ``given``: probabilities per id already computed the same way (cross-validation's frozen-encoder
    features), used instead of running the network.

    Returns (probs, per-sample rows of pixel-size facts, the one-line pixel-size statement).
    """
    from tqdm.auto import tqdm

    from protloc.data.pixel_size import PixelSize, check_pixel_size, describe, scale_factor, warn_unknown

    model_um = predictor.pixel_size_um
    override = None if pixel_size is None else PixelSize(check_pixel_size(pixel_size), "--pixel-size")
    rows, results, statement, warned = [], [], None, False
    for sample_id in tqdm(ids, desc=description, unit="image", disable=not progress, leave=False):
        sample = None
        if given is None:  # image and pixel size read together (protloc.data.formats.read)
            sample = index.read(sample_id, pixel_size=pixel_size)
            data = sample.pixel_size
        else:
            data = override or index.pixel_size(sample_id)
        if statement is None:
            statement = describe(data, model_um)
        if not data.known and not warned:
            warn_unknown(model_um)
            warned = True
        factor = scale_factor(data.um, model_um)
        if given is not None:
            entry = index.entry(sample_id)
            shape = (entry.height, entry.width)
            results.append(np.asarray(given[sample_id], dtype=np.float32))
        else:
            image = sample.image
            shape = image.shape[-2:]
            # the one inferer brings the image to the model's pixel size (Inferer.model_input)
            results.append(predictor.predict_proba(image, whole_image=whole_image, batch_size=batch_size,
                                                   pixel_size_um=data.um))
        rows.append({"id": sample_id, "data_pixel_size_um": data.um, "pixel_size_source": data.source,
                     "model_pixel_size_um": model_um, "scale": factor,
                     "network_input": [max(1, round(n * factor)) for n in shape]})
    probs = np.stack(results) if results else np.zeros((0, len(predictor.classes)), np.float32)
    return np.clip(probs.astype(np.float64), 0.0, 1.0), rows, statement or describe(PixelSize(None, ""), model_um)


def evaluate_model(
    model="pretrained",
    data=None,
    out=None,
    *,
    split: str | None = None,
    mapping=None,
    pixel_size: float | None = None,
    whole_image: bool = False,
    batch_size: int = 4,
    device=None,
    min_positives: int = MIN_POSITIVES,
    progress: bool | None = None,
    ids: list[str] | None = None,
    ids_label: str = "given samples",
    predictor=None,
    quiet: bool = False,
    given: dict | None = None,
) -> dict:
    """Score ``model`` on the labelled data set ``data``; write the report to ``out``; return the metrics."""
    from protloc.data.index import DatasetIndex, open_dataset
    from protloc.labels import LabelSet
    from protloc.inference.predictor import load_model

    if data is None:
        raise ProtlocError("no data given (--data DIR)")
    if batch_size < 1:
        raise ProtlocError(f"batch size must be at least 1, got {batch_size}")
    index = data if isinstance(data, DatasetIndex) else open_dataset(data)
    if predictor is None:
        predictor = load_model(model, device=device)
    if whole_image and not predictor.fully_convolutional:
        raise ProtlocError(f"{predictor.model_name} has fixed-size dense layers: --whole-image needs a fully "
                           "convolutional model")
    from protloc.model_file import read_model_file

    classes = list(predictor.classes)
    model_label_set = read_model_file(predictor.source["file"]).get("label_set") or "model"
    model_set = LabelSet(name=str(model_label_set), classes=tuple(classes))
    label_mapping = resolve_mapping(index.label_set, model_set, mapping)
    chosen = list(ids) if ids is not None else split_ids(index, split)

    kept, left_out, y_rows, original = [], [], [], {}
    for sample_id in chosen:
        labels = index.entry(sample_id).labels or ()
        mapped = tuple(labels) if label_mapping is None else label_mapping.map_indices(labels)
        original[sample_id] = index.label_set.names(labels)
        if not mapped:
            left_out.append(sample_id)
            continue
        kept.append(sample_id)
        y_rows.append(np.zeros(len(classes), np.int64) if not mapped else
                      np.asarray([1 if i in mapped else 0 for i in range(len(classes))], np.int64))
    if not kept:
        raise ProtlocError(f"none of the {len(chosen)} samples has a label that maps onto the model's classes")
    y_true = np.stack(y_rows)
    if progress is None:
        progress = sys.stderr.isatty()
    probs, pixel_rows, statement = model_predictions(
        predictor, index, kept, pixel_size=pixel_size, whole_image=whole_image, batch_size=batch_size,
        progress=progress, given=given,
    )
    if not quiet and "unknown for this data" not in statement:  # else warn_unknown has said it
        print(statement, file=sys.stderr)

    counts_data = {name: 0 for name in index.label_set.classes}
    for sample_id in chosen:
        for name in original[sample_id]:
            counts_data[name] += 1
    info = {
        "model": predictor.name or predictor.model_name,
        "model_file": predictor.source.get("file"),
        "data": str(index.root),
        "split": split or (ids_label if ids is not None else "all labelled samples"),
        "thresholds_source": "stored in the model file" if predictor.source.get("file") and
        any(t != 0.5 for t in predictor.thresholds) else "0.5 (the model file stores none)",
        "prediction": {"whole_image": whole_image, "patch_size": None if whole_image else predictor.patch_size,
                       "device": str(predictor.device)},
        "pixel_size": {"statement": statement, "samples": pixel_rows[:1] and {
            k: pixel_rows[0][k] for k in ("data_pixel_size_um", "pixel_size_source", "model_pixel_size_um", "scale")}},
        "labels": {
            "data_label_set": index.label_set.name,
            "model_label_set": model_set.name,
            "mapping": None if label_mapping is None else label_mapping.to_json(),
            "dropped_classes": [] if label_mapping is None else label_mapping.dropped,
            "data_class_counts": {k: v for k, v in counts_data.items() if v},
            "samples_evaluated": len(kept),
            "samples_left_out_no_mapped_label": left_out,
        },
        "evaluated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(out) if out is not None else Path("evaluation") / Path(index.root).name
    metrics = write_report(out, kept, y_true, probs, classes, predictor.thresholds, info)
    auc, auc_classes = mean_over(metrics, classes, "auc", min_positives)
    f1, _ = mean_over(metrics, classes, "f1", min_positives)
    from sklearn.metrics import f1_score

    metrics["min_positives"] = {
        "min_positives": min_positives, "classes": auc_classes, "mean_auc": auc, "mean_f1": f1,
        "micro_f1": float(f1_score(y_true, probs >= np.asarray(metrics["thresholds"]), average="micro",
                                   zero_division=0)),
    }
    write_json(out / "metrics.json", metrics)
    _write_inputs_csv(out / "inputs.csv", pixel_rows, original, label_mapping, index)
    lines = (out / "report.md").read_text(encoding="utf-8").splitlines()
    # the run report's heading names a run and a split; here it is a model and a data set
    lines[0] = f"# Evaluation of {info['model']} on {Path(index.root).name} ({info['split']})"
    lines[2] = f"Model file: `{info['model_file']}`; data: `{index.root}`  "
    write_text_atomic(out / "report.md", "\n".join(lines).rstrip("\n") + "\n\n" + render_data_section(metrics) + "\n")
    return metrics


def _write_inputs_csv(path: Path, rows, original, mapping, index) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "data_labels", "mapped_labels", "data_pixel_size_um", "pixel_size_source",
                     "model_pixel_size_um", "scale", "network_input_hw"])
    for row in rows:
        labels = original[row["id"]]
        mapped = labels if mapping is None else mapping.target.names(
            mapping.map_indices([index.label_set.index(n) for n in labels]))
        writer.writerow([row["id"], ";".join(labels), ";".join(mapped), row["data_pixel_size_um"],
                         row["pixel_size_source"], row["model_pixel_size_um"], f"{row['scale']:g}",
                         "x".join(str(v) for v in row["network_input"])])
    write_text_atomic(path, buffer.getvalue())


def render_data_section(metrics: dict) -> str:
    labels = metrics["labels"]
    chosen = metrics["min_positives"]
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    parts = [
        "## Data, labels and pixel size",
        "",
        f"Data: `{metrics['data']}` ({metrics['split']}); labels {labels['data_label_set']}, model classes "
        f"{labels['model_label_set']}.  ",
        f"{metrics['pixel_size']['statement']}.  ",
        f"Samples evaluated: {labels['samples_evaluated']}; left out (no label maps onto the model's classes): "
        f"{len(labels['samples_left_out_no_mapped_label'])}.",
        "",
        f"Means over the {len(chosen['classes'])} classes with at least {chosen['min_positives']} positives "
        f"({', '.join(chosen['classes']) or 'none'}): AUC {fmt(chosen['mean_auc'])}, F1 {fmt(chosen['mean_f1'])}; "
        f"micro F1 over all classes {fmt(chosen['micro_f1'])}.",
        "",
    ]
    mapping = labels["mapping"]
    if mapping is not None:
        counts = labels["data_class_counts"]
        rows = [[row["from"], counts.get(row["from"], 0), row["to"] or "**dropped**", row["why"]]
                for row in mapping["map"]]
        parts += [f"### Label mapping `{mapping['name']}` ({mapping['from']} → {mapping['to']})", "",
                  markdown_table(["Data class", "Positives", "Model class", "Why"], rows), ""]
    return "\n".join(parts)
