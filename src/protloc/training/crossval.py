"""K-fold cross-validation for small labelled sets (``protloc crossval``, ``protloc train --folds K``).

Folds are fixed: every labelled sample of the data folder is ranked by the hash of "seed:id"
(``protloc.data.splits.split_position``) and dealt round-robin into K folds, so the folds depend
only on (seed, ids, K) and are the same for every model, label set and training mode run on the
same data. For fold k, fold k is the test set; of the remaining samples a fixed 15% (at least one,
ranked by the hash with seed + 1) is the validation set that picks the best epoch and tunes the
thresholds, and the rest is trained on.

Training modes: the full protocol through ``train`` (``protloc.training.run``), with ``--init``,
``--freeze-encoder`` and ``--head-lr`` as in ``protloc train``; or, with ``--freeze-encoder``, a
new head trained on precomputed encoder features (``protloc.training.head_features``: the same
covering patches prediction uses, so each image's encoder runs once instead of once per epoch).

With ``--init``, the starting model itself is scored on every test fold first ("no training"), its
labels reached through the label-set mapping, so the table shows what training added.

Reported per fold and as mean ± std over folds: mean ROC AUC and F1 over the classes with at least
``min_positives`` positives in the whole data set (per fold, those with a positive and a negative
in its test set), micro F1 at the model's thresholds; and the AUC of the pooled out-of-fold
predictions.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from protloc.errors import ProtlocError

VAL_FRACTION = 0.15


def make_folds(ids, k: int, seed: int = 0) -> list[list[str]]:
    """K disjoint folds, sizes within one of each other, fixed by (seed, ids)."""
    from protloc.data.splits import split_position

    ids = sorted(set(str(i) for i in ids))
    if k < 2:
        raise ProtlocError(f"--folds must be at least 2, got {k}")
    if k > len(ids):
        raise ProtlocError(f"--folds {k} is more than the {len(ids)} labelled samples")
    ranked = sorted(ids, key=lambda i: (split_position(i, seed), i))
    return [sorted(ranked[f::k]) for f in range(k)]


def fold_splits(folds: list[list[str]], fold: int, seed: int = 0) -> dict[str, list[str]]:
    from protloc.data.splits import split_position

    pool = sorted(i for f, ids in enumerate(folds) if f != fold for i in ids)
    ranked = sorted(pool, key=lambda i: (split_position(i, seed + 1), i))
    n_val = max(1, round(VAL_FRACTION * len(pool)))
    return {"train": sorted(ranked[n_val:]), "val": sorted(ranked[:n_val]), "test": list(folds[fold])}


def remap_index(index, mapping):
    """A copy of the index with labels in the mapping's target set; samples left with none are dropped."""
    from protloc.data.index import DatasetIndex

    samples, dropped = [], []
    for entry in index.samples:
        if entry.labels is None:
            continue
        mapped = mapping.map_indices(entry.labels)
        if not mapped:
            dropped.append(entry.id)
            continue
        samples.append(dataclasses.replace(entry, labels=mapped))
    excluded = [*index.excluded, *({"id": i, "reason": f"no label maps onto {mapping.target.name}"} for i in dropped)]
    return DatasetIndex(root=index.root, format=index.format, label_set=mapping.target, samples=samples,
                        excluded=excluded)


def summarize_fold(metrics: dict, classes: list[str]) -> dict:
    per = metrics["per_class"]
    aucs = [per[c]["auc"] for c in classes if per[c].get("auc") is not None]
    f1s = [per[c]["f1"] for c in classes if per[c]["positives"] > 0 and per[c].get("f1") is not None]
    return {"mean_auc": float(np.mean(aucs)) if aucs else None, "auc_classes": len(aucs),
            "mean_f1": float(np.mean(f1s)) if f1s else None,
            "micro_f1": metrics.get("min_positives", {}).get("micro_f1"), "n_test": metrics["n_samples"]}


def mean_std(values) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def pooled_auc(y: np.ndarray, probs: np.ndarray, classes_all: list[str], chosen: list[str]) -> float | None:
    from sklearn.metrics import roc_auc_score

    values = []
    for name in chosen:
        c = classes_all.index(name)
        if 0 < y[:, c].sum() < len(y):
            values.append(roc_auc_score(y[:, c], probs[:, c]))
    return float(np.mean(values)) if values else None


def read_predictions(path: Path, classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """ids, labels and probabilities back from a report's predictions.csv."""
    import csv

    ids, ys, ps = [], [], []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            ids.append(row["id"])
            true = set(filter(None, row["true_labels"].split(";")))
            ys.append([1 if c in true else 0 for c in classes])
            ps.append([float(row[c]) for c in classes])
    return ids, np.asarray(ys), np.asarray(ps)


def _write_json(path: Path, data: dict) -> None:
    from protloc.files import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def _fixed_folds(out: Path, ids, k: int, seed: int) -> list[list[str]]:
    folds = make_folds(ids, k, seed)
    path = out / "folds.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("folds") != folds:
            raise ProtlocError(f"{path} holds other folds (another data set, --folds or --split-seed); use another --out")
    _write_json(path, {"k": k, "seed": seed, "method": "ids ranked by blake2b('seed:id'), dealt round-robin",
                       "val_fraction": VAL_FRACTION, "folds": folds})
    return folds


def _classes_with_positives(index, min_positives: int) -> list[str]:
    counts = np.zeros(len(index.label_set), int)
    for entry in index.samples:
        if entry.labels:
            counts[list(entry.labels)] += 1
    return [c for c, n in zip(index.label_set.classes, counts) if n >= min_positives]


def _row(name: str, classes: list[str], fold_metrics: list[dict], predictions: list[Path]) -> dict:
    per_fold = [summarize_fold(m, classes) for m in fold_metrics]
    ys, ps = [], []
    all_classes = list(fold_metrics[0]["classes"])
    for path in predictions:
        _, y, p = read_predictions(path, all_classes)
        ys.append(y)
        ps.append(p)
    return {
        "method": name, "classes": classes, "folds": per_fold,
        "mean_auc": mean_std([f["mean_auc"] for f in per_fold]),
        "mean_f1": mean_std([f["mean_f1"] for f in per_fold]),
        "micro_f1": mean_std([f["micro_f1"] for f in per_fold]),
        "pooled_auc": pooled_auc(np.concatenate(ys), np.concatenate(ps), all_classes, classes),
    }


def _evaluate(out: Path, **kwargs) -> dict:
    from protloc.evaluation.external import evaluate_model

    done = out / "metrics.json"
    if done.is_file():
        data = json.loads(done.read_text())
        if "min_positives" in data:
            return data
    return evaluate_model(out=out, quiet=True, progress=False, **kwargs)


def run_crossval(config, k: int, out, *, mapping=None, min_positives: int = 3, baseline: bool = True,
                 precomputed: bool | None = None, progress: bool | None = None) -> dict:
    """K-fold cross-validation into ``out``; see the module docstring. Returns the summary (crossval.json)."""
    from protloc.data.index import open_dataset
    from protloc.data.splits import save_splits
    from protloc.labels import load_label_mapping
    from protloc.training.config import resolve

    if not config.data:
        raise ProtlocError("no data given (--data DIR)")
    if not Path(config.data).exists():
        raise ProtlocError(f"data folder not found: {config.data}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty() if progress is None else progress
    index = open_dataset(config.data)
    label_mapping = None if mapping is None else load_label_mapping(mapping)
    if label_mapping is not None and label_mapping.source.classes != index.label_set.classes:
        raise ProtlocError(f"mapping {label_mapping.name!r} maps from {label_mapping.source.name}, the data's labels "
                           f"are {index.label_set.name}")
    labelled = [entry.id for entry in index.samples if entry.labels is not None]
    folds = _fixed_folds(out, labelled, k, config.split_seed)
    train_index = remap_index(index, label_mapping) if label_mapping is not None else index
    train_index.save(out / "index.json")
    kept = {entry.id for entry in train_index.samples}
    folds_here = [[i for i in fold if i in kept] for fold in folds]
    classes = _classes_with_positives(train_index, min_positives)
    log = (lambda text: print(text, file=sys.stderr))
    rows = []

    if baseline and config.init:
        from protloc.inference.predictor import load_model

        predictor = load_model(config.init)
        log(f"fold scores of {config.init} as it is (no training), labels mapped onto its classes")
        base_metrics = [
            _evaluate(out / "no-training" / f"fold-{f + 1}", model=config.init, data=index, ids=fold,
                      ids_label=f"test fold {f + 1} of {k}",
                      predictor=predictor, min_positives=min_positives, pixel_size=config.pixel_size)
            for f, fold in enumerate(folds)]
        base_index = remap_index(index, _mapping_to(index, predictor))
        rows.append(_row(f"{config.init}, no training ({len(predictor.classes)} classes)",
                         _classes_with_positives(base_index, min_positives), base_metrics,
                         [out / "no-training" / f"fold-{f + 1}" / "predictions.csv" for f in range(k)]))

    config = resolve(config)
    precomputed = config.freeze_encoder if precomputed is None else precomputed
    if precomputed and not config.freeze_encoder:
        raise ProtlocError("precomputed features need a frozen encoder (--freeze-encoder)")
    fold_metrics, features = [], None
    for f in range(k):
        given = None
        fold_dir = out / f"fold-{f + 1}"
        splits = fold_splits(folds_here, f, config.split_seed)
        if not splits["train"] or not splits["test"]:
            raise ProtlocError(f"fold {f + 1} has no training or no test samples")
        save_splits(splits, out / f"fold-{f + 1}-splits.json", seed=config.split_seed, index=train_index)
        log(f"fold {f + 1}/{k}: train {len(splits['train'])}, val {len(splits['val'])}, test {len(splits['test'])}")
        if not (fold_dir / "evaluation" / "metrics.json").is_file():
            if precomputed:
                features = _train_head_fold(config, train_index, splits, fold_dir, features, progress)
                given = _head_probabilities(fold_dir, features, splits["test"])
            else:
                from protloc.training.run import train

                fold_config = dataclasses.replace(config, out=str(fold_dir), data=str(out / "index.json"),
                                                  splits=str(out / f"fold-{f + 1}-splits.json"), progress=progress)
                result = train(fold_config)
                if result.status != "completed":
                    raise ProtlocError(f"fold {f + 1}: {result.message}")
        fold_metrics.append(_evaluate(fold_dir / "evaluation", model=str(fold_dir), data=train_index,
                                      ids=splits["test"], ids_label=f"test fold {f + 1} of {k}",
                                      min_positives=min_positives, pixel_size=config.pixel_size,
                                      given=given))
    mode = ("new head on the frozen encoder (precomputed features)" if precomputed else
            "head trained, encoder frozen" if config.freeze_encoder else
            "whole network fine-tuned" if config.init else "trained from scratch")
    rows.append(_row(f"{mode}, {len(train_index.label_set)} classes", classes, fold_metrics,
                     [out / f"fold-{f + 1}" / "evaluation" / "predictions.csv" for f in range(k)]))
    summary = {"data": str(index.root), "k": k, "seed": config.split_seed, "min_positives": min_positives,
               "label_set": train_index.label_set.name,
               "mapping": None if label_mapping is None else label_mapping.name,
               "config": {key: getattr(config, key) for key in ("model", "init", "freeze_encoder", "epochs",
                                                              "crop_size", "batch_size", "learning_rate", "head_lr")},
               "rows": rows}
    _write_json(out / "crossval.json", summary)
    from protloc.files import atomic_write_text

    atomic_write_text(out / "crossval.md", render_crossval(summary))
    return summary


def _mapping_to(index, predictor):
    from protloc.evaluation.external import resolve_mapping
    from protloc.labels import LabelMapping, LabelSet

    model_set = LabelSet(name="model", classes=tuple(predictor.classes))
    found = resolve_mapping(index.label_set, model_set)
    if found is None:  # same classes: the identity mapping
        n = len(index.label_set)
        found = LabelMapping("identity", index.label_set, model_set, tuple(range(n)), ("",) * n)
    return found


def _head_probabilities(fold_dir: Path, features: dict, ids) -> dict:
    """Test-fold probabilities of the fold's model from the cached encoder features: the same patches,
    normaliser and network as its default patch prediction, without running the encoder again."""
    from protloc.inference.predictor import load_model
    from protloc.training.head_features import image_probs

    network = load_model(fold_dir / "model.pt").network
    return dict(zip(ids, image_probs(network, features, ids)))


def _train_head_fold(config, index, splits, fold_dir: Path, features, progress: bool):
    from protloc.model_file import save_model_file
    from protloc.training.head_features import compute_features, train_head
    from protloc.training.run import new_training_network
    from protloc.training.transfer import prepare_transfer

    from protloc.training.head_features import check_separable

    network, options, _ = new_training_network(config, len(index.label_set))
    check_separable(network)
    scale = prepare_transfer(network, config, index, announce=features is None)
    if features is None:  # the frozen encoder is the same for every fold: one pass over every image
        ids = [entry.id for entry in index.samples]
        features = _cached_features(config, scale, ids, lambda todo: compute_features(
            network, index, todo, config.crop_size, scale.factor, progress=progress))
    labels = {entry.id: index.label_set.vector(entry.labels) for entry in index.samples}
    result = train_head(network, config, features, labels, splits["train"], splits["val"], progress=progress)
    fold_dir.mkdir(parents=True, exist_ok=True)
    source = {"kind": "crossval-head-on-frozen-encoder", "run_dir": str(fold_dir.resolve()),
              "epoch": result["best_epoch"], "val_mean_f1": result["best_val_mean_f1"], "thresholds_tuned_on": "val"}
    if scale.init is not None:
        source["transfer"] = scale.init.to_dict()
    save_model_file(fold_dir / "model.pt", network, model_name=config.model, classes=index.label_set.classes,
                    label_set=index.label_set.name, model_options=options, crop_size=config.crop_size,
                    thresholds=result["thresholds"], source=source, pixel_size_um=scale.model_um,
                    pixel_size_source=scale.model_source)
    return features


def _cached_features(config, scale, ids, compute) -> dict:
    """Encoder features, kept in the prepared-data cache folder (--cache) when one is given: they depend
    only on the starting weights, the pixel-size factor, the patch size and the image."""
    import hashlib

    if not config.cache or config.cache.lower() == "none" or scale.init is None:
        return compute(ids)
    digest = hashlib.sha256(Path(scale.init.model_file).read_bytes()).hexdigest()[:16]
    path = Path(config.cache) / f"head-features-{digest}-x{scale.factor:g}-p{config.crop_size}.npz"
    features = {}
    if path.is_file():
        with np.load(path) as saved:
            features = {key: saved[key] for key in saved.files}
    todo = [i for i in ids if i not in features]
    if todo:
        features.update(compute(todo))
        from protloc.files import atomic_save_npz

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_npz(path, **features)
    return {i: features[i] for i in ids}


def render_crossval(summary: dict) -> str:
    def cell(stats: dict) -> str:
        return "–" if stats["mean"] is None else f"{stats['mean']:.3f} ± {stats['std']:.3f}"

    from protloc.evaluation.report import markdown_table

    rows = [[row["method"], len(row["classes"]), cell(row["mean_auc"]), cell(row["mean_f1"]), cell(row["micro_f1"]),
             "–" if row["pooled_auc"] is None else f"{row['pooled_auc']:.3f}"] for row in summary["rows"]]
    lines = [
        f"# {summary['k']}-fold cross-validation on `{summary['data']}`", "",
        f"Fixed folds (seed {summary['seed']}, folds.json); labels {summary['label_set']}"
        f"{' via ' + summary['mapping'] if summary['mapping'] else ''}. Mean ± std over folds of the mean over the "
        f"classes with at least {summary['min_positives']} positives in the data (per fold: those with a positive "
        "and a negative in its test set); F1 at the model's thresholds; pooled AUC: all out-of-fold predictions "
        "together.", "",
        markdown_table(["Method", "Classes", "Mean AUC", "Mean F1", "Micro F1", "Pooled AUC"], rows), "",
    ]
    for row in summary["rows"]:
        lines.append(f"- {row['method']}: classes {', '.join(row['classes'])}")
    return "\n".join(lines) + "\n"
