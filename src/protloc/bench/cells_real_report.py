"""The real per-cell benchmark's figures, tables and picture (``protloc.bench.cells_real`` collects).

``answers``: every per-cell answer measured, from the collected per-cell evidence; ``metrics``:
per-cell accuracy, per-cell mAP and distinct answers per mosaic on one half of the mosaics;
``report``: both halves, every answer; ``write_results``: ``OUT.md``, ``OUT.json``,
``OUT-arrangement.json`` (the seeded mosaics) and ``OUT.png`` (a report-half mosaic outlined by
each cell's answer beside the same mosaic outlined by its truth).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

# The previous default (chosen on synthetic cells): the image's answer times the expression gate.
PREVIOUS_DEFAULT = {"expression_full": 0.5, "weights": 0.0, "relative": 0.0}


def top_classes(scores: np.ndarray) -> np.ndarray:
    """Each row's top class index, -1 where every score is 0 (a cell answered "no signal")."""
    tops = np.argmax(scores, axis=1)
    return np.where(np.max(scores, axis=1) > 0, tops, -1)


def cell_accuracy(truth: np.ndarray, scores: np.ndarray) -> float:
    """The fraction of cells whose top class is among their labels (no answer counts as wrong)."""
    tops = top_classes(scores)
    hit = np.array([t >= 0 and truth[k, t] == 1 for k, t in enumerate(tops)])
    return float(hit.mean()) if len(hit) else float("nan")


def distinct_answers(scores: np.ndarray, mosaic_of: np.ndarray) -> dict[int, int]:
    """Per mosaic, how many different top classes its cells get ("no signal" counts as one)."""
    tops = top_classes(scores)
    return {int(m): len(set(tops[mosaic_of == m].tolist())) for m in np.unique(mosaic_of)}


def metrics(truth, scores, mosaic_of, classes, mosaics: list[dict]) -> dict:
    from protloc.cells.evaluate import per_cell_map

    value, per_class = per_cell_map(truth, scores, classes)
    distinct = distinct_answers(scores, mosaic_of)
    one = [m for m, n in distinct.items() if n == 1 and len({tuple(x) for x in mosaics[m]["labels"]}) > 1]
    return {"cells": int(len(truth)), "accuracy": cell_accuracy(truth, scores), "map": value,
            "per_class_ap": per_class, "mean_distinct_answers": float(np.mean(list(distinct.values()))),
            "mosaics": len(distinct), "mosaics_one_answer": len(one)}


def _groups(a, rows: np.ndarray):
    """One ``CellPredictions``-like object per mosaic (the per-cell answers are per field)."""
    for m in np.unique(a.mosaic[rows]):
        picked = np.flatnonzero(rows & (a.mosaic == m))
        yield picked, SimpleNamespace(probabilities=a.own[picked], image_probabilities=a.image[picked][0],
                                      expression=a.expression[picked], signal_to_noise=a.signal_to_noise[picked])


def answers(a, classes, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every per-cell answer measured [n, classes], rows of ``a`` (all by default)."""
    from protloc.cells.scoring import SCORINGS, cell_scores, combine

    rows = np.ones(len(a.own), bool) if rows is None else rows
    out: dict[str, np.ndarray] = {}
    for name in SCORINGS:
        scores = np.zeros((len(a.own), len(classes)), np.float32)
        for picked, group in _groups(a, rows):
            scores[picked] = cell_scores(group, classes, name)
        out[name] = scores[rows]
    previous = np.zeros((len(a.own), len(classes)), np.float32)
    for picked, group in _groups(a, rows):
        previous[picked] = combine(group.probabilities, group.image_probabilities, group.expression, classes,
                                   expression_full=0.5, weights=np.zeros(len(classes)), relative=np.zeros(len(classes)))
    out["previous default (image x gate)"] = previous[rows]
    out["source field alone (image-level ceiling)"] = a.tile[rows]
    return out


def alone_answers(a, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The cell's own evidence from the shared pass against each cell alone, on the cells that have both."""
    return {"own (masked pooling of the shared pass)": a.own[rows], "alone (each cell in its own window)": a.alone[rows],
            "own x alone (geometric mean)": np.sqrt(a.own * a.alone)[rows]}


def report(collected: dict) -> dict:
    """Metrics of every answer on each half of the mosaics."""
    a = SimpleNamespace(**collected["arrays"])
    classes, mosaics = collected["classes"], collected["mosaics"]
    halves = np.array([mosaics[m]["half"] for m in a.mosaic])
    result = {"halves": {}}
    has_tile, has_alone = ~np.isnan(a.tile).any(axis=1), ~np.isnan(a.alone).any(axis=1)
    for half in ("selection", "report"):
        rows = halves == half
        scored = answers(a, classes, rows)
        if not has_tile[rows].all():  # the ceiling is measured on the report half only
            scored.pop("source field alone (image-level ceiling)")
        result["halves"][half] = {name: metrics(a.truth[rows], s, a.mosaic[rows], classes, mosaics)
                                  for name, s in scored.items()}
        both = rows & has_alone
        if both.any():
            result.setdefault("alone", {})[half] = {
                name: metrics(a.truth[both], s, a.mosaic[both], classes, mosaics)
                for name, s in alone_answers(a, both).items()}
    return result


def save_evidence(path: Path, collected: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in collected.items() if k != "arrays"}
    np.savez_compressed(path, meta=json.dumps(meta), **collected["arrays"])


def load_evidence(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as stored:
        collected = json.loads(str(stored["meta"]))
        collected["arrays"] = {k: stored[k] for k in stored.files if k != "meta"}
    return collected


def markdown(result: dict, collected: dict, command: str) -> str:
    mosaics = collected.get("mosaics") or []
    grids = collected.get("grids") or {str(g): sum(1 for m in mosaics if m["grid"] == g and "kept" in m)
                                       for g in sorted({m["grid"] for m in mosaics})}
    lines = [f"Data: {collected['data']} ({collected['fields']} fields used, {collected['pixel_size_um']} µm/px, "
             f"labels mapped onto the model's classes); model: {collected['model']}; cells: {collected['masks']}. "
             f"{sum(grids.values())} mosaics ({', '.join(f'{n} of {g}x{g}' for g, n in grids.items())}; seed "
             f"{collected['seed']}; tiles' label sets pairwise different), cells within {collected['margin']} px "
             f"of a seam left out. Command: `{command}`.", ""]
    for half in ("report", "selection"):
        rows = result["halves"][half]
        first = next(iter(rows.values()))
        lines += [f"**{half.capitalize()} half** ({first['mosaics']} mosaics, {first['cells']} cells"
                  + ("; the figures to quote" if half == "report" else "; the default was chosen here") + "):", "",
                  "| per-cell answer | accuracy (top class among the source field's labels) | per-cell mAP "
                  "| distinct answers per mosaic (mean) | mosaics with one answer for all cells |",
                  "|---|---:|---:|---:|---:|"]
        lines += _rows(rows) + [""]
    for half, rows in (result.get("alone") or {}).items():
        first = next(iter(rows.values()))
        lines += [f"**The cell's own evidence: the shared pass's masked pooling against each cell alone** ({half} half, "
                  f"the 2x2 mosaics where each cell was also predicted alone: {first['mosaics']} mosaics, "
                  f"{first['cells']} cells; no gate):", "",
                  "| evidence | accuracy | per-cell mAP | distinct answers per mosaic (mean) | mosaics with one answer |",
                  "|---|---:|---:|---:|---:|", *_rows(rows), ""]
    return "\n".join(lines) + "\n"


def _rows(rows: dict) -> list[str]:
    return [f"| {name} | {m['accuracy']:.3f} | {m['map']:.3f} | {m['mean_distinct_answers']:.2f} "
            f"| {m['mosaics_one_answer']} of {m['mosaics']} |" for name, m in rows.items()]


def section(collected: dict, result: dict, side: Path, model, figure_mosaic: int | None = None) -> dict:
    """The results section; writes ``SIDE-arrangement.json`` and the figure ``SIDE.png``."""
    from protloc.files import atomic_write_text

    side = Path(side)
    side.parent.mkdir(parents=True, exist_ok=True)
    arrangement = side.with_name(side.name + "-arrangement.json")
    atomic_write_text(arrangement, json.dumps(collected["mosaics"], indent=1) + "\n")
    number = pick_figure_mosaic(collected) if figure_mosaic is None else figure_mosaic
    picture = figure(collected, number, side.with_name(side.name + ".png"), model)
    meta = {k: v for k, v in collected.items() if k not in ("arrays", "mosaics")}
    grids = {str(g): sum(1 for m in collected["mosaics"] if m["grid"] == g and "kept" in m)
             for g in sorted({m["grid"] for m in collected["mosaics"]})}
    return {**meta, **result, "grids": grids, "arrangement": arrangement.name, "figure": picture.name,
            "figure_mosaic": collected["mosaics"][number]["id"]}


def section_markdown(s: dict) -> list[str]:
    """``protloc bench``'s table of the section."""
    return ["### Single cells on real mosaics (cells-real)", "", markdown(s, s, s.get("command", "protloc bench")),
            f"Figure: {s.get('figure')} ({s.get('figure_mosaic')}); arrangement: {s.get('arrangement')}.", ""]


def write_results(out: Path, result: dict, collected: dict, model, figure_mosaic: int | None = None) -> None:
    """``OUT.md``, ``OUT.json``, ``OUT-arrangement.json`` and ``OUT.png``."""
    import sys

    from protloc.bench.common import machine_info
    from protloc.files import atomic_write_text

    out = Path(out)
    command = "python -m protloc.bench.cells_real " + " ".join(sys.argv[1:])
    collected = {**collected, "command": command}
    text = markdown(result, collected, command)
    print(text)
    payload = {"protloc_bench": 1, "machine": machine_info(), "command": command,
               "sections": {"cells-real": section(collected, result, out, model, figure_mosaic)}}
    atomic_write_text(out.with_suffix(".json"), json.dumps(payload, indent=1, default=float) + "\n")
    atomic_write_text(out.with_suffix(".md"), text)


def pick_figure_mosaic(collected: dict) -> int:
    """The report-half 2x2 mosaic with the most kept cells (seeded arrangement: reproducible)."""
    mosaics = collected["mosaics"]
    candidates = [k for k, m in enumerate(mosaics) if m["half"] == "report" and m["grid"] == 2] or list(range(len(mosaics)))
    return max(candidates, key=lambda k: mosaics[k].get("kept", 0))


def figure(collected: dict, number: int, path: Path, model, scoring: str | None = None) -> Path:
    """The mosaic outlined by each cell's answer (default per-cell answer, white: no class above its
    threshold) beside the same mosaic outlined by its truth (its source field's label that the answer
    names, else the first; grey: left out at a seam)."""
    from protloc.cells.features import predict_cells
    from protloc.bench.mosaics import build_mosaic, cell_tiles, list_fields
    from protloc.visualization import class_colours, class_overlay, outline_overlay, save_png, with_legend
    from protloc.cells.scoring import DEFAULT_SCORING
    from protloc.cells.segmentation import segment
    from protloc.inference import load_model

    predictor = model if hasattr(model, "network") else load_model(model)
    classes = list(predictor.classes)
    index, fields, _ = list_fields(collected["data"], classes)
    by_id = {f.id: f for f in fields}
    mosaic = collected["mosaics"][number]
    image = build_mosaic([index.load_image(t) for t in mosaic["tiles"]], mosaic["grid"])
    segmentation = segment(image)
    cells = segmentation.cells
    predictions = predict_cells(predictor, image, cells, pixel_size_um=collected["pixel_size_um"])
    scores = predictions.scores(classes, scoring or DEFAULT_SCORING)
    where = cell_tiles(cells, predictions.cell_ids, predictions.boxes, mosaic["grid"], collected["margin"])
    answer, truth = {}, {}
    for k, cell_id in enumerate(predictions.cell_ids):
        above = scores[k] >= predictor.thresholds
        top = classes[int(np.argmax(np.where(above, scores[k], -1.0)))] if above.any() else None
        answer[int(cell_id)] = top
        if where[k] >= 0:
            labels = by_id[mosaic["tiles"][where[k]]].labels
            truth[int(cell_id)] = top if top in labels else labels[0]
    count = int(cells.max(initial=0))
    left = np.array(class_overlay(image, cells, segmentation.nuclei, [answer.get(i) for i in range(1, count + 1)], classes))
    colour_of = class_colours(classes)
    grey = (110, 110, 110)
    right = outline_overlay(image, cells, segmentation.nuclei,
                            [colour_of[truth[i]] if i in truth else grey for i in range(1, count + 1)])
    present = [c for c in classes if c in set(truth.values())]
    right = np.array(with_legend(right, [(c, colour_of[c]) for c in present] + [("left out (seam)", grey)]))
    for panel in (left, right):  # the seams, thin
        step = panel.shape[0] // mosaic["grid"]
        for s in range(1, mosaic["grid"]):
            panel[s * step - 1 : s * step + 1, :] = (60, 60, 60)
            panel[:, s * step - 1 : s * step + 1] = (60, 60, 60)
    gap = np.full((left.shape[0], 16, 3), 255, np.uint8)
    return save_png(path, np.concatenate([left, gap, right], axis=1))
