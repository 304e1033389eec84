"""Single cells: speed against the image-level prediction, and per-cell accuracy against its baseline.

    protloc bench --sections cells [--model FILE]                 # a section of protloc bench
    python -m protloc.bench.cells [--model FILE] [--image DIR] [--rounds 7] [--out benchmarks/results/cells]
    python -m protloc.bench.cells --accuracy SYNTH_DIR --model FILE [--out benchmarks/results/cells-map]
    python -m protloc.bench.cells --select SYNTH_DIR --model FILE [--out benchmarks/results/cells-map-selection]

Selection (``--select``): the constants of the default per-cell answer (``protloc.cells.scoring``:
the expression gate's full level, the cell's own weight for compartment-filling and other classes)
on a grid, scored by per-cell mAP on the drawn masks of one synthetic set; the accuracy is then
reported on another set (another seed), never on the one the constants were chosen on.

Accuracy (``--accuracy``): ``protloc.cells.evaluate.evaluate_folder`` on a synthetic data set with
per-cell truth (``protloc synth``): per-cell mAP of the cells' own probabilities, of the weak
baseline (every cell gets its image's probabilities) and of their geometric mean, on the true masks
and on protloc's segmentation, plus segmentation quality.

Speed:

Baselines: ``Predictor.predict_proba(image)`` with its defaults (the image-level answer ``protloc
predict`` gives: covering patches of the model's crop size, fp32, GapNet-PL's fast path), and the
one-pass ``--whole-image`` prediction; ratios against both. Measured:
``protloc.cells.analyse_image`` (segmentation from the reference channels, every cell's 224 features
and probabilities from one whole-image pass, the table's geometry), also split into segmentation and
prediction. Variants run round-robin (each round runs each once), so load on a shared machine hits
them alike; the ratio of medians is the figure (target: at most 1.5).

Image: the real 2048² HPA field of ../shared/real-hpa/hpa-download when present, else a synthetic
2048² field. Model: ``--model``, else GapNet-PL with random weights (timing does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
REAL_FIELD = Path(os.environ.get("PROTLOC_SHARED", REPO.parent / "shared")) / "real-hpa" / "hpa-download"


def _load_image(path: Path | None, size: int = 2048) -> tuple[np.ndarray, str]:
    from protloc.data.inputs import discover_inputs, load_entry

    folder = path or REAL_FIELD
    if size == 2048 and folder.exists():
        entry = discover_inputs([folder])[0]
        return load_entry(entry), f"{entry.id} ({folder})"
    from protloc.data.synth import draw_sample

    _, image = draw_sample(0, 0, size, size)
    return image.astype(np.float32), f"synthetic {size}x{size} field (seed 0, sample 0)"


def _predictor(model: str | None):
    import torch

    from protloc.labels import HPA13
    from protloc.inference import Predictor, load_model

    if model:
        return load_model(model), model
    torch.manual_seed(0)
    from protloc.models import create_model

    network = create_model("gapnet-pl").eval()
    predictor = Predictor(network, list(HPA13.classes), np.full(13, 0.5, np.float32), 1024, "gapnet-pl")
    return predictor, "gapnet-pl, random weights, crop size 1024 (the paper's)"


def bench_cells(model: str | None = None, image_path: Path | None = None, rounds: int = 5, size: int = 2048,
                progress=None) -> dict:
    from protloc.cells.features import predict_cells
    from protloc.cells.pipeline import analyse_image
    from protloc.cells.segmentation import segment

    predictor, model_label = _predictor(model)
    image, image_label = _load_image(image_path, size)
    variants = {
        "image-level prediction (baseline)": lambda: predictor.predict_proba(image),
        "image-level, one whole-image pass": lambda: predictor.predict_proba(image, whole_image=True),
        "cells: segmentation + per-cell prediction": lambda: analyse_image(predictor, image, "bench"),
        "  of which segmentation": lambda: segment(image),
    }
    cells = segment(image).cells
    variants["  of which per-cell prediction"] = lambda: predict_cells(predictor, image, cells)
    from protloc.bench.common import interleaved

    timings = interleaved(variants, rounds, progress=progress)
    base = timings["image-level prediction (baseline)"]
    whole = timings["image-level, one whole-image pass"]
    rows = [{"variant": name, "median_s": t["median_s"], "best_s": t["best_s"],
             "ratio": t["median_s"] / base["median_s"], "ratio_best": t["best_s"] / base["best_s"],
             "ratio_whole_image": t["median_s"] / whole["median_s"],
             "ratio_whole_image_best": t["best_s"] / whole["best_s"]}
            for name, t in timings.items()]
    return {"image": image_label, "shape": list(image.shape), "model": model_label, "cells": int(cells.max()),
            "rounds": rounds, "rows": rows}


def cells_section(settings, progress) -> dict:
    """``protloc bench --sections cells``: the real 2048² field (a synthetic field with --quick)."""
    return bench_cells(settings.model, None, settings.rounds, size=settings.image_size, progress=progress)


def cells_markdown(result: dict) -> list[str]:
    return ["### Single cells: segmentation + per-cell prediction against image-level prediction", "",
            to_markdown(result)]


def to_markdown(result: dict) -> str:
    lines = [f"Image: {result['image']}, {result['shape'][1]}x{result['shape'][2]}, {result['cells']} cells; "
             f"model: {result['model']}; {result['rounds']} rounds, round-robin.", "",
             "| variant | median (s) | best (s) | ratio to `predict` default (medians / bests) "
             "| ratio to `--whole-image` (medians / bests) |",
             "|---|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['variant']} | {row['median_s']:.3f} | {row['best_s']:.3f} | {row['ratio']:.2f} / "
                     f"{row['ratio_best']:.2f} | {row['ratio_whole_image']:.2f} / {row['ratio_whole_image_best']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="protloc model file (default: GapNet-PL with random weights)")
    parser.add_argument("--image", type=Path, help="folder or channel file of one field (default: the real 2048² field)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    parser.add_argument("--accuracy", type=Path, metavar="SYNTH_DIR",
                        help="measure per-cell mAP on this synthetic data set instead of speed")
    parser.add_argument("--select", type=Path, metavar="SYNTH_DIR",
                        help="score the default per-cell answer's constants on a grid on this synthetic data set")
    args = parser.parse_args(argv)
    if args.select:
        return _select(args)
    if args.accuracy:
        return _accuracy(args)
    result = bench_cells(args.model, args.image, args.rounds)
    _write(args, "cells", result, to_markdown(result))
    return 0


def _results_file(section: str, result: dict) -> dict:
    """The layout of ``protloc bench``'s results files (machine, command, sections)."""
    from protloc.bench.common import machine_info

    return {"protloc_bench": 1, "machine": machine_info(), "command": "python -m protloc.bench.cells " + " ".join(sys.argv[1:]),
            "sections": {section: result}}


def _write(args, section: str, result: dict, text: str) -> None:
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(_results_file(section, result), indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text)


def _accuracy(args) -> int:
    from dataclasses import asdict

    from protloc.cells.evaluate import evaluate_folder
    from protloc.cells.scoring import SCORINGS

    if not args.model:
        raise SystemExit("--accuracy needs --model (a GapNet-PL trained on synthetic data, e.g. protloc demo's)")
    result = evaluate_folder(args.accuracy, args.model, progress=sys.stderr.isatty())
    lines = [f"Data: {args.accuracy}; model: {args.model}", "", *result.lines(), "",
             "| class | " + " | ".join(SCORINGS) + " |", "|---|" + "---:|" * len(SCORINGS)]
    lines += [f"| {name} | " + " | ".join(f"{v[s]:.3f}" for s in SCORINGS) + " |" for name, v in result.per_class.items()]
    _write(args, "cells-accuracy", asdict(result), "\n".join(lines) + "\n")
    return 0


SELECT_EXPRESSION_FULL = (None, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
SELECT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def select_constants(records, classes) -> list[dict]:
    """Per-cell mAP (drawn masks) of the default answer for every grid point, best first."""
    from protloc.cells.evaluate import _combine_rows, per_cell_map
    from protloc.cells.scoring import FILLING_CLASSES, combine

    a = records.arrays()
    filling = np.array([name in FILLING_CLASSES for name in classes])
    rows = []
    for full in SELECT_EXPRESSION_FULL:
        for w_fill in SELECT_WEIGHTS:
            for w_other in SELECT_WEIGHTS:
                weights = np.where(filling, w_fill, w_other)
                scores = _combine_rows(a, classes, combine, expression_full=full, weights=weights)
                rows.append({"expression_full": full, "own_weight_filling": w_fill, "own_weight_other": w_other,
                             "map": per_cell_map(a.truth, scores, classes)[0]})
    return sorted(rows, key=lambda row: -row["map"])


def _select(args) -> int:
    from protloc.cells.evaluate import collect_cells

    if not args.model:
        raise SystemExit("--select needs --model")
    predictor, drawn, _, _ = collect_cells(args.select, args.model, progress=sys.stderr.isatty(), segmented=False)
    rows = select_constants(drawn, predictor.classes)
    lines = [f"Data: {args.select} (drawn masks, {len(drawn.truth)} cells); model: {args.model}", "",
             "| gate full at (None: no gate) | own weight, filling classes | own weight, others | per-cell mAP |",
             "|---:|---:|---:|---:|"]
    lines += [f"| {r['expression_full']} | {r['own_weight_filling']} | {r['own_weight_other']} | {r['map']:.4f} |"
              for r in rows]
    _write(args, "cells-selection", {"grid": rows}, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
