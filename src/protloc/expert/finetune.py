"""Single-label ("multi-class") fine-tuning as in the paper, section 3.2.

The multi-task network is kept as it is; only its last linear layer (fc3 for GapNet-PL) is retrained
as a softmax classifier (cross-entropy) on the training samples that have exactly one label. The
input of that layer (the penultimate features) is computed once per sample, so training is a small
full-batch optimisation that takes seconds. Images larger than the model's crop size are cut into
the paper's covering patches and their features averaged; because the last layer is linear, this is
the same as averaging the patch logits.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from protloc.errors import ProtlocError

TASK = "multiclass"


def final_linear(network: nn.Module) -> tuple[str, nn.Linear]:
    """The network's last linear layer (by registration order): the one that makes the logits."""
    linears = [(name, module) for name, module in network.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ProtlocError(f"{type(network).__name__} has no linear output layer to fine-tune")
    return linears[-1]


@torch.no_grad()
def penultimate_features(predictor, image: np.ndarray, *, whole_image: bool = False, batch_size: int = 8,
                         pixel_size_um: float | None = None) -> np.ndarray:
    """The final layer's input for one raw canonical sample [4, H, W], averaged over covering patches
    (the model's one ``Inferer``, at its pixel size, its forward the normalised patches up to the
    last linear layer).

    ``predictor``: a loaded model (``protloc.inference.predictor.load_model``); ``whole_image`` runs
    the whole normalised image at once; ``pixel_size_um``: the sample's µm per pixel, if known.
    """
    from protloc.inference.normalization import normalize

    network = predictor.network
    _, layer = final_linear(network)

    def features(batch: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        hook = layer.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach()))
        try:
            network(normalize(batch))
        finally:
            hook.remove()
        return captured[0]

    inferer = predictor.inferer(whole_image=whole_image, batch_size=batch_size, plain=True, forward=features)
    return inferer(image, pixel_size_um)


def _progress(iterable, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="sample", disable=not sys.stderr.isatty(), file=sys.stderr)


def features_for(predictor, index, ids: list[str], whole_image: bool, desc: str) -> np.ndarray:
    """Penultimate features of the samples ``ids`` of a data set, brought to the model's pixel size
    from the data set's (as training did)."""
    from protloc.data.index import data_pixel_size

    data_um = data_pixel_size(index).um
    rows = [penultimate_features(predictor, index.load_image(sample_id), whole_image=whole_image, pixel_size_um=data_um)
            for sample_id in _progress(ids, len(ids), desc)]
    return np.stack(rows) if rows else np.zeros((0, final_linear(predictor.network)[1].in_features), np.float32)


@dataclass
class FinetuneResult:
    path: Path
    train_samples: int
    val_samples: int
    train_accuracy: float
    val_accuracy: float | None
    seconds: float


def fit_softmax_layer(layer: nn.Linear, features: np.ndarray, targets: np.ndarray, *, steps: int = 300,
                      lr: float = 0.05, weight_decay: float = 1e-4, seed: int = 0) -> nn.Linear:
    """Retrain ``layer`` (started from its multi-task weights) as a softmax classifier, full batch."""
    torch.manual_seed(seed)
    start = layer
    layer = nn.Linear(start.in_features, start.out_features).to(torch.float32)
    layer.load_state_dict({k: v.detach().clone().float() for k, v in start.state_dict().items()})
    x = torch.from_numpy(features)
    y = torch.from_numpy(targets.astype(np.int64))
    optimiser = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = F.cross_entropy(layer(x), y)
        if not torch.isfinite(loss):
            raise ProtlocError("fine-tuning diverged (loss is not finite); the features may be broken")
        loss.backward()
        optimiser.step()
    return layer


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def finetune_multiclass(run_dir: str | Path, data: str | Path | None = None, *, whole_image: bool = False,
                        steps: int = 300, lr: float = 0.05, weight_decay: float = 1e-4, seed: int = 0,
                        out: str | Path | None = None) -> FinetuneResult:
    """Fine-tune the run's model for single-label samples; writes RUN_DIR/multiclass/model.pt."""
    from protloc.model_file import atomic_torch_save
    from protloc.data.index import default_splits_path, open_dataset
    from protloc.data.splits import load_splits, make_splits, single_label_ids
    from protloc.inference.predictor import load_model, resolve_model_file

    started = time.perf_counter()
    run_dir = Path(run_dir)
    model_path = resolve_model_file(run_dir)
    predictor = load_model(model_path)
    payload = predictor.model_file
    if payload.get("task") == TASK:
        raise ProtlocError(f"{model_path} is already a single-label (multiclass) model; give the multi-task run")
    # A training run keeps the index and splits it used: fine-tune on exactly its training samples.
    run_files = run_dir if run_dir.is_dir() else model_path.parent
    if data is not None:
        index = open_dataset(data)
    elif (run_files / "index.json").is_file():
        index = open_dataset(run_files / "index.json")
    else:
        index = open_dataset(_run_data(run_dir))
    if list(index.label_set.classes) != list(payload["classes"]):
        raise ProtlocError(f"the data set's classes ({index.label_set.name}) differ from the model's; cannot fine-tune")
    splits_path = run_files / "splits.json"
    if not splits_path.is_file():
        splits_path = Path(default_splits_path(index.root))
    splits = load_splits(splits_path) if splits_path.is_file() else make_splits(index)
    known = {entry.id for entry in index.samples}
    splits = {name: [i for i in ids if i in known] for name, ids in splits.items()}
    train_ids = single_label_ids(index, splits["train"])
    val_ids = single_label_ids(index, splits.get("val", []))
    if not train_ids:
        raise ProtlocError(f"no single-label training samples in {data}")
    network = predictor.network
    patch_size = None if whole_image else predictor.patch_size
    layer_name, layer = final_linear(network)
    train_x = features_for(predictor, index, train_ids, whole_image, "features (train)")
    train_y = np.array([index.entry(i).labels[0] for i in train_ids])
    new_layer = fit_softmax_layer(layer, train_x, train_y, steps=steps, lr=lr, weight_decay=weight_decay, seed=seed)
    with torch.no_grad():
        train_acc = float((new_layer(torch.from_numpy(train_x)).argmax(1).numpy() == train_y).mean())
        val_acc = None
        if val_ids:
            val_x = features_for(predictor, index, val_ids, whole_image, "features (val)")
            val_y = np.array([index.entry(i).labels[0] for i in val_ids])
            val_acc = float((new_layer(torch.from_numpy(val_x)).argmax(1).numpy() == val_y).mean())
    # The loaded network's weights are the file's (load_state_dict is strict); only the layer changes.
    state = {key: value.detach().cpu().clone() for key, value in network.state_dict().items()}
    state[f"{layer_name}.weight"] = new_layer.weight.detach().clone()
    state[f"{layer_name}.bias"] = new_layer.bias.detach().clone()
    out_path = Path(out) if out else run_dir / "multiclass" / "model.pt" if run_dir.is_dir() else model_path.parent / "multiclass" / "model.pt"
    multiclass = dict(payload)
    multiclass.update({
        "state_dict": state,
        "task": TASK,
        "thresholds": None,
        "source": {
            "kind": "single-label fine-tuning of the last layer",
            "base_model": str(model_path.resolve()), "base_sha256": sha256_of(model_path),
            "layer": layer_name, "data": str(Path(index.root).resolve()),
            "splits": str(splits_path.resolve()) if splits_path.is_file() else "make_splits(seed=0)",
            "features": "whole image" if patch_size is None else f"mean over {patch_size}px covering patches",
            "train_samples": len(train_ids), "val_samples": len(val_ids),
            "train_accuracy": train_acc, "val_accuracy": val_acc,
            "optimiser": {"name": "adam", "steps": steps, "lr": lr, "weight_decay": weight_decay, "seed": seed},
        },
    })
    atomic_torch_save(multiclass, out_path)
    return FinetuneResult(out_path, len(train_ids), len(val_ids), train_acc, val_acc, time.perf_counter() - started)


def _run_data(run_dir: Path) -> str:
    """The data set a training run used, from its resolved config (the training issue's run folder)."""
    import json

    for name in ("config.yaml", "config.yml", "config.json", "resolved_config.yaml"):
        path = run_dir / name
        if path.is_file():
            import yaml

            try:
                config = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError:
                continue
            data = config.get("data") if isinstance(config, dict) else None
            if isinstance(data, dict):
                data = data.get("root") or data.get("path")
            if isinstance(data, str) and Path(data).exists():
                return data
    raise ProtlocError(f"cannot tell which data set {run_dir} was trained on; give it with --data DIR")


def load_multiclass_model(spec: str | Path):
    """(predictor, path) for ``expert predict --model``: a run folder prefers its multiclass/model.pt."""
    from protloc.inference.predictor import load_model, resolve_model_file

    path = Path(spec)
    if path.is_dir() and (path / "multiclass" / "model.pt").is_file():
        path = path / "multiclass" / "model.pt"
    else:
        path = resolve_model_file(spec)
    return load_model(path), path


def predict_study(study, spec: str | Path, whole_image: bool = False) -> dict:
    """The model's single answer (argmax) for every study sample; written to the study's predictions.json."""
    import json
    from datetime import datetime, timezone

    from protloc.files import atomic_write_text

    predictor, path = load_multiclass_model(spec)
    payload = predictor.model_file
    if list(payload["classes"]) != study.classes:
        raise ProtlocError(f"the model's classes differ from the study's label set {study.label_set.name!r}")
    task = payload.get("task", "multitask")
    patch_size = None if whole_image else predictor.patch_size
    _, layer = final_linear(predictor.network)
    predictions = {}
    with torch.no_grad():
        for sample_id in _progress(study.sample_ids, len(study.samples), "predict"):
            features = penultimate_features(predictor, study.load_image(sample_id), whole_image=whole_image)
            logits = layer(torch.from_numpy(features)[None])[0]
            probs = (torch.softmax(logits, 0) if task == TASK else torch.sigmoid(logits)).numpy()
            predictions[sample_id] = {"label": study.classes[int(np.argmax(probs))],
                                      "probabilities": [round(float(p), 6) for p in probs]}
    overlap, unchecked = training_overlap(payload, study.sample_ids)
    record = {
        "training_overlap": overlap,  # None: could not be checked, for the reason in training_overlap_unchecked
        "training_overlap_unchecked": unchecked,
        "model": str(path.resolve()), "model_sha256": sha256_of(path), "task": task,
        "method": "argmax of softmax (fine-tuned last layer)" if task == TASK
        else "argmax of multi-task sigmoid outputs (model not fine-tuned for single labels)",
        "features": "whole image" if patch_size is None else f"mean over {patch_size}px covering patches",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": study.classes, "predictions": predictions,
    }
    atomic_write_text(study.predictions_path, json.dumps(record, indent=1) + "\n")
    return record


def training_overlap(payload: dict, sample_ids: list[str]) -> tuple[list[str] | None, str | None]:
    """Study samples the model trained on: (ids, None) when it could be checked, else (None, why not).

    Should be none: the study comes from the test split. The model file names its training split (a
    fine-tuned model: ``source.splits``; a training run's model: RUN_DIR/splits.json); a split made
    by ``make_splits(seed=0)`` is recomputed, since it depends on nothing but the ids.
    """
    from protloc.data.splits import assign_split, load_splits

    source = payload.get("source") or {}
    splits_file = source.get("splits")
    if not splits_file and source.get("kind") == "training-run" and source.get("run_dir"):
        splits_file = str(Path(source["run_dir"]) / "splits.json")
    if splits_file == "make_splits(seed=0)":
        return sorted(i for i in sample_ids if assign_split(i, seed=0) == "train"), None
    if not splits_file:
        kind = source.get("kind") or "unknown"
        return None, f"the model file (source: {kind}) does not say which samples it was trained on"
    if not Path(splits_file).is_file():
        return None, f"the model's training split {splits_file} is no longer there"
    try:
        train = set(load_splits(splits_file).get("train", []))
    except ProtlocError as exc:
        return None, f"the model's training split cannot be read ({exc})"
    return sorted(set(sample_ids) & train), None
