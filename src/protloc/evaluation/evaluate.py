"""``evaluate_run``: a training run's report on one split, with thresholds tuned on validation.

Steps: read the run (model.pt, config.yaml, index.json, splits.json); predict the validation
split and tune one decision threshold per class there (F1-maximising, ``tune_thresholds``); store
the thresholds in model.pt (atomic rewrite, everything else unchanged, so ``protloc predict`` uses
them) and in ``thresholds.json``; predict the requested split; write the report to
``RUN_DIR/evaluation/<split>/``. Prediction is ``protloc.inference.Inferer``: covering
patches of the training crop size with averaged sigmoid outputs (the paper's protocol), or one pass
over the whole image with ``whole_image=True`` (fully convolutional networks only).
"""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path

import numpy as np

from protloc.errors import ProtlocError
from protloc.evaluation.metrics import DEFAULT_THRESHOLD, evaluate_predictions, tune_thresholds
from protloc.evaluation.report import write_json, write_report

SPLITS = ("train", "val", "test")
RUN_FILES = ("model.pt", "index.json", "splits.json")


def check_run_dir(run_dir) -> Path:
    """The run directory, or a one-line ProtlocError saying what is missing."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ProtlocError(f"{run} is not a directory")
    missing = [name for name in RUN_FILES if not (run / name).is_file()]
    if missing:
        raise ProtlocError(f"{run} is not a protloc run directory (missing {', '.join(missing)})")
    return run


def _read_config(run: Path) -> dict:
    import yaml

    path = run / "config.yaml"
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ProtlocError(f"cannot read {path}: {exc}".splitlines()[0]) from None
    return config if isinstance(config, dict) else {}


def _split_ids(splits: dict, split: str, run: Path) -> list[str]:
    ids = list(splits.get(split) or [])
    if not ids:
        raise ProtlocError(f"run {run} has no samples in the {split} split")
    return ids


def _labels(index, ids: list[str], split: str) -> np.ndarray:
    unlabeled = [sample_id for sample_id in ids if index.entry(sample_id).labels is None]
    if unlabeled:
        raise ProtlocError(f"{len(unlabeled)} samples of the {split} split have no labels (e.g. {unlabeled[0]!r})")
    return np.stack([index.label_vector(sample_id) for sample_id in ids]).astype(np.int64)


def store_thresholds(run: Path, payload: dict, thresholds: np.ndarray, info: dict) -> None:
    """Thresholds into model.pt (atomically, all else kept as it is) and thresholds.json."""
    from protloc.model_file import atomic_torch_save, read_model_file

    values = [float(t) for t in thresholds]
    if payload.get("thresholds") != values:
        # Rewrite the file's own contents rather than rebuilding it with save_model_file, so keys
        # and tensors this version does not know about survive unchanged.
        atomic_torch_save({**read_model_file(run / "model.pt"), "thresholds": values}, run / "model.pt")
    write_json(run / "thresholds.json", {"classes": list(payload["classes"]), "thresholds": values, **info})


def evaluate_run(
    run_dir,
    split: str = "test",
    device=None,
    whole_image: bool = False,
    batch_size: int = 8,
    progress: bool | None = None,
) -> dict:
    """Tune thresholds on val, predict ``split``, write RUN_DIR/evaluation/<split>/; returns the metrics.

    ``device``: see ``protloc.devices.resolve_device`` (default: CUDA when available, else CPU). ``batch_size``:
    patches per forward pass.
    """
    from protloc.data.index import DatasetIndex
    from protloc.data.index import data_pixel_size
    from protloc.data.splits import load_splits
    from protloc.inference.inferer import predict_dataset
    from protloc.inference.predictor import load_model

    if split not in SPLITS:
        raise ProtlocError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if batch_size < 1:
        raise ProtlocError(f"batch size must be at least 1, got {batch_size}")
    run = check_run_dir(run_dir)
    predictor = load_model(run / "model.pt", device=device)
    payload = predictor.model_file
    config = _read_config(run)
    index = DatasetIndex.load(run / "index.json")
    splits = load_splits(run / "splits.json")
    classes = list(payload["classes"])
    if list(index.label_set.classes) != classes:
        raise ProtlocError(f"{run}: the model's classes differ from the data index's label set {index.label_set.name!r}")
    eval_ids = _split_ids(splits, split, run)
    y_eval = _labels(index, eval_ids, split)
    val_ids = list(splits.get("val") or [])
    y_val = _labels(index, val_ids, "val") if val_ids else None

    device = predictor.device
    patch_size = predictor.patch_size
    if progress is None:
        progress = sys.stderr.isatty()

    # The images are brought to the model's pixel size, as training brought them (the run's
    # --pixel-size, else the data's own); precision None: the plain forward, as validation ran it.
    data_um = data_pixel_size(index, config.get("pixel_size")).um
    inferer = predictor.inferer(whole_image=whole_image, batch_size=batch_size, plain=True,
                                pixel_size_um=data_um)

    def predict(ids: list[str], name: str) -> np.ndarray:
        probs = predict_dataset(inferer, ids, index.load_image, progress=progress, description=f"predicting {name}")
        return np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)

    if val_ids:
        val_probs = predict(val_ids, "val")
        thresholds = tune_thresholds(y_val, val_probs)
        val_at_half = evaluate_predictions(y_val, val_probs, classes)
        val_tuned = evaluate_predictions(y_val, val_probs, classes, thresholds)
        tuning = {
            "tuned_on": "val", "n_samples": len(val_ids),
            "val_mean_f1_at_0.5": val_at_half["summary"]["f1"]["mean"],
            "val_mean_f1_tuned": val_tuned["summary"]["f1"]["mean"],
            "kept_0.5_no_positives": [c for c in classes if val_tuned["per_class"][c]["positives"] == 0],
        }
        thresholds_source = f"tuned on the val split ({len(val_ids)} samples)"
    else:
        val_probs = None
        thresholds = np.full(len(classes), DEFAULT_THRESHOLD)
        tuning = {"tuned_on": None, "n_samples": 0, "note": "no validation samples: thresholds stay 0.5"}
        thresholds_source = "0.5 (no validation samples to tune on)"
    store_thresholds(run, payload, thresholds, tuning)

    probs = val_probs if split == "val" and val_probs is not None else predict(eval_ids, split)
    info = {
        "run": str(run),
        "split": split,
        "model": payload["model"],
        "thresholds_source": thresholds_source,
        "prediction": {"whole_image": whole_image, "patch_size": None if whole_image else patch_size,
                       "device": str(device)},
        "evaluated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return write_report(run / "evaluation" / split, eval_ids, y_eval, probs, classes, thresholds, info)
