"""How real are the synthetic fields? Two measurements across the synthetic/real divide.

1. ``published_on_synthetic``: the published GapNet-PL weights (trained on real HPA confocal fields)
   on fresh synthetic fields, rescaled from the generator's pixel size to the weights' -- per-class
   ROC AUC: a class the real-trained network recognises looks real to it.
2. ``trained_on_real``: a model trained only on synthetic fields (the demo's) on the real labelled
   fields of ``../shared/real-hpa/kaggle2018-train-101``, rescaled from their pixel size to the
   generator's, with Kaggle's 28 classes mapped onto the paper's 13.
   (``published_on_real`` gives the real-trained network on the same real fields, for reference.)

The real set is a measurement only: nothing here, in the generator or in the demo was tuned on it.
Kaggle's labels come from a later HPA release than the Cyto 2017 data of the published weights,
and mapping 28 classes onto 13 is a choice (``labelsets/kaggle28-to-hpa13.json``), not a fact of the source.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from protloc.errors import ProtlocError
from protloc.labels import HPA13

# The pixel sizes and the resampler are the data layer's, the same ones prediction uses: HPA
# confocal fields ~0.08 µm/px (the published weights'), Kaggle 2018's 512² PNGs 0.32 µm/px.
from protloc.data.pixel_size import HPA_CONFOCAL_PIXEL_SIZE_UM, KAGGLE2018_PIXEL_SIZE_UM, rescale  # noqa: E402

MIN_POSITIVES = 5  # classes with fewer positive real fields are listed but left out of the headline mean

# Kaggle 2018's 28 classes onto the paper's 13: the shared mapping file
# src/protloc/labelsets/kaggle28-to-hpa13.json (each line says why; five classes are dropped). A real
# field left without any mapped class is left out and counted.
MAPPING = "kaggle28-to-hpa13"


@dataclass
class RealSet:
    ids: list[str]
    sources: list[dict[str, str]]
    labels: np.ndarray  # [n, 13] HPA13 targets after the mapping
    left_out: list[str]  # fields whose classes were all dropped by the mapping


def kaggle_to_hpa13() -> list[int | None]:
    """For each of Kaggle's 28 class indices, the index of its HPA13 class (None: dropped)."""
    from protloc.labels import load_label_mapping

    return list(load_label_mapping(MAPPING).targets)


def read_real_set(root: str | Path) -> RealSet:
    """The Kaggle-layout real set: ``train.csv`` (Id,Target) beside ``train/<Id>_<colour>.png``."""
    from protloc.data.channels import COLOUR_OF_CHANNEL

    root = Path(root)
    table = root / "train.csv"
    if not table.is_file():
        raise ProtlocError(f"{root}: no train.csv (Id,Target): not a Kaggle-layout real set")
    mapping = kaggle_to_hpa13()
    ids, sources, labels, left_out = [], [], [], []
    with table.open(newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                targets = [mapping[int(t)] for t in row["Target"].split()]
            except (KeyError, ValueError, IndexError, TypeError, AttributeError):
                raise ProtlocError(f"{table}: bad row {row}") from None
            targets = [t for t in targets if t is not None]
            if not targets:
                left_out.append(row["Id"])
                continue
            files = {ch: str(root / "train" / f"{row['Id']}_{colour}.png") for ch, colour in COLOUR_OF_CHANNEL.items()}
            missing = [p for p in files.values() if not Path(p).is_file()]
            if missing:
                raise ProtlocError(f"{table}: {missing[0]} is missing")
            ids.append(row["Id"])
            sources.append(files)
            labels.append(HPA13.vector(targets))
    if not ids:
        raise ProtlocError(f"{table}: no samples")
    return RealSet(ids, sources, np.asarray(labels, dtype=np.float32), left_out)


def per_class_auc(y_true: np.ndarray, probs: np.ndarray, min_positives: int = 1) -> dict:
    """ROC AUC per HPA13 class (None where a class lacks positives or negatives) and their means."""
    from sklearn.metrics import roc_auc_score

    rows = {}
    for k, name in enumerate(HPA13.classes):
        pos = int(y_true[:, k].sum())
        neg = len(y_true) - pos
        auc = float(roc_auc_score(y_true[:, k], probs[:, k])) if pos and neg else None
        rows[name] = {"auc": auc, "positives": pos}
    every = [r["auc"] for r in rows.values() if r["auc"] is not None]
    headline = [r["auc"] for r in rows.values() if r["auc"] is not None and r["positives"] >= min_positives]
    return {"classes": rows, "mean_auc": float(np.mean(every)) if every else None,
            "mean_auc_headline": float(np.mean(headline)) if headline else None,
            "headline_min_positives": min_positives, "headline_classes": len(headline), "samples": len(y_true)}


def _predict_all(predictor, images: Callable[[int], np.ndarray], n: int, desc: str, progress: bool,
                 whole_image: bool) -> np.ndarray:
    from tqdm.auto import tqdm

    probs = []
    for i in tqdm(range(n), desc=desc, unit="image", disable=not progress, leave=False):
        image = images(i)
        probs.append(predictor.predict_proba(image, whole_image=whole_image and predictor.fully_convolutional))
    return np.asarray(probs, dtype=np.float32)


def published_on_synthetic(predictor, fields: int, size: int, seed: int, network_pixel_size: float,
                           progress: bool = False) -> tuple[dict, np.ndarray, np.ndarray]:
    """The real-trained network on ``fields`` fresh synthetic fields, at the network's pixel size."""
    from protloc.data.synth import PIXEL_SIZE_UM, draw_sample

    factor = PIXEL_SIZE_UM / network_pixel_size
    labels = []

    def image(i: int) -> np.ndarray:
        classes, raw = draw_sample(seed, i, size, size)
        labels.append(HPA13.vector(classes))
        return rescale(raw, factor)

    probs = _predict_all(predictor, image, fields, "published weights on synthetic fields", progress, True)
    y = np.asarray(labels, dtype=np.float32)
    result = per_class_auc(y, probs)
    result.update(fields=fields, size=size, seed=seed, generator_pixel_size_um=PIXEL_SIZE_UM,
                  network_pixel_size_um=network_pixel_size, rescale_factor=factor)
    return result, y, probs


def on_real(predictor, real: RealSet, real_pixel_size: float, network_pixel_size: float,
            progress: bool = False, desc: str = "real fields") -> tuple[dict, np.ndarray]:
    """A network on the real fields, rescaled from their pixel size to the network's."""
    from protloc.data.formats import read

    factor = real_pixel_size / network_pixel_size
    probs = _predict_all(predictor, lambda i: rescale(read(real.sources[i]).image, factor), len(real.ids), desc,
                         progress, False)
    result = per_class_auc(real.labels, probs, MIN_POSITIVES)
    result.update(real_pixel_size_um=real_pixel_size, network_pixel_size_um=network_pixel_size,
                  rescale_factor=factor)
    return result, probs


TITLES = {"published_on_synthetic": "published weights on synthetic",
          "trained_on_real": "synthetic-trained on real", "published_on_real": "published weights on real"}


def markdown(results: dict) -> str:
    """The realism tables: per-class AUC of each measurement side by side."""
    parts = [key for key in ("published_on_synthetic", "trained_on_real", "published_on_real") if key in results]
    header = ["class"] + [TITLES[p] for p in parts]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(entry: dict, real: bool) -> str:
        value = "n/a" if entry["auc"] is None else f"{entry['auc']:.3f}"
        return f"{value} ({entry['positives']})" if real else value

    for name in HPA13.classes:
        lines.append("| " + " | ".join([name] + [cell(results[p]["classes"][name], p != "published_on_synthetic")
                                                 for p in parts]) + " |")
    means = ["**mean**"]
    for p in parts:
        r = results[p]
        text = f"**{r['mean_auc']:.3f}**" if r["mean_auc"] is not None else "n/a"
        if p != "published_on_synthetic" and r["mean_auc_headline"] is not None:
            text += f" (classes with ≥{r['headline_min_positives']} positives: {r['mean_auc_headline']:.3f})"
        means.append(text)
    lines.append("| " + " | ".join(means) + " |")
    notes = []
    if "published_on_synthetic" in results:
        r = results["published_on_synthetic"]
        notes.append(f"Synthetic: {r['fields']} fresh fields of {r['size']}² (seed {r['seed']}), drawn at "
                     f"{r['generator_pixel_size_um']} µm/px, rescaled x{r['rescale_factor']:g} to the weights' "
                     f"{r['network_pixel_size_um']} µm/px.")
    for p in ("trained_on_real", "published_on_real"):
        if p in results:
            r = results[p]
            notes.append(f"{TITLES[p]}: {r['samples']} real fields at {r['real_pixel_size_um']} µm/px rescaled "
                         f"x{r['rescale_factor']:g} to {r['network_pixel_size_um']} µm/px; (n) = positive real "
                         "fields per class after mapping Kaggle's 28 classes onto the 13 "
                         f"({r.get('mapping', MAPPING)}; {len(r.get('left_out', []))} fields left without a mapped class).")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def plot(path: Path, results: dict) -> None:
    """Per-class AUC bars of each measurement, one colour per measurement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [key for key in ("published_on_synthetic", "trained_on_real", "published_on_real") if key in results]
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=100)
    width = 0.8 / max(1, len(parts))
    xs = np.arange(len(HPA13.classes))
    for j, p in enumerate(parts):
        values = [results[p]["classes"][c]["auc"] or 0.0 for c in HPA13.classes]
        ax.bar(xs + (j - (len(parts) - 1) / 2) * width, values, width, label=TITLES[p])
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.axhline(0.75, color="black", lw=0.8, ls="--")
    ax.set_xticks(xs, HPA13.classes, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("ROC AUC")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_realism(out: str | Path, *, published=None, trained=None, real: str | Path | None = None,
                fields: int = 200, size: int = 256, seed: int = 1000,
                network_pixel_size: float = HPA_CONFOCAL_PIXEL_SIZE_UM, real_pixel_size: float = KAGGLE2018_PIXEL_SIZE_UM,
                progress: bool = False, log=print) -> dict:
    """Run the measurements whose inputs are given; write ``realism.json``, ``realism.md`` and a PNG."""
    from protloc.data.synth import PIXEL_SIZE_UM
    from protloc.evaluation.report import write_json, write_text_atomic
    from protloc.inference.predictor import load_model

    if published is None and trained is None:
        raise ProtlocError("nothing to measure: give the published weights and/or a synthetic-trained model")
    if trained is not None and real is None:
        raise ProtlocError("a synthetic-trained model is measured on the real set: give --real")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    real_set = read_real_set(real) if real is not None else None
    if published is not None:
        predictor = load_model(published)
        log(f"[realism] published weights on {fields} synthetic fields of {size}² "
            f"(x{PIXEL_SIZE_UM / network_pixel_size:g} to {network_pixel_size} µm/px)")
        results["published_on_synthetic"], y, p = published_on_synthetic(
            predictor, fields, size, seed, network_pixel_size, progress)
        np.savez_compressed(out / "published_on_synthetic.npz", labels=y, probs=p)
        if real_set is not None:
            log(f"[realism] published weights on the {len(real_set.ids)} real fields (reference)")
            results["published_on_real"], p = on_real(predictor, real_set, real_pixel_size, network_pixel_size,
                                                      progress, "published weights on real fields")
            np.savez_compressed(out / "published_on_real.npz", labels=real_set.labels, probs=p)
    if trained is not None:
        predictor = load_model(trained)
        log(f"[realism] {trained} on the {len(real_set.ids)} real fields (x{real_pixel_size / PIXEL_SIZE_UM:g} "
            f"to the generator's {PIXEL_SIZE_UM} µm/px)")
        results["trained_on_real"], p = on_real(predictor, real_set, real_pixel_size, PIXEL_SIZE_UM, progress,
                                                "synthetic-trained model on real fields")
        np.savez_compressed(out / "trained_on_real.npz", labels=real_set.labels, probs=p)
        results["trained_on_real"]["model"] = str(trained)
    for key in ("trained_on_real", "published_on_real"):
        if key in results:
            results[key].update(mapping=MAPPING, left_out=real_set.left_out)
    write_json(out / "realism.json", results)
    write_text_atomic(out / "realism.md", markdown(results))
    plot(out / "realism.png", results)
    return results
