"""Single cells: speed against the image-level prediction, and per-cell accuracy against its baseline.

    protloc bench --sections cells [--model FILE]                 # a section of protloc bench
    python -m protloc.bench.cells [--model FILE] [--image DIR] [--rounds 7] [--out benchmarks/results/cells]
    python -m protloc.bench.cells --accuracy SYNTH_DIR --model FILE [--out benchmarks/results/cells-map]
    python -m protloc.bench.cells --select SYNTH_DIR --model FILE [--out benchmarks/results/cells-map-selection]
    python -m protloc.bench.cells --select SEED101_DIR --accuracy SEED102_DIR --model FILE --write-constants \
        --selection-out benchmarks/results/cells-map-selection --out benchmarks/results/cells-map-synthetic

Selection (``--select``): the constants of the default per-cell answer (``protloc.cells.scoring``:
the expression gate's full level, the cell's own weight and its relative weight for
compartment-filling and other classes) on a grid, scored by per-cell mAP on the drawn masks of one
synthetic set; the accuracy is then reported on another set (another seed), never on the one the
constants were chosen on. Both in one command: ``--select`` and ``--accuracy`` together measure the
chosen constants on the second set; ``--write-constants`` writes them into ``scoring.py``.

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
    from protloc.data.formats import discover, read

    folder = path or REAL_FIELD
    if size == 2048 and folder.exists():
        entry = discover([folder])[0]
        return read(entry).image, f"{entry.id} ({folder})"
    from protloc.data.synth import draw_sample

    _, image = draw_sample(0, 0, size, size)
    return image.astype(np.float32), f"synthetic {size}x{size} field (seed 0, sample 0)"


def _predictor(model: str | None):
    import torch

    from protloc.labels import HPA13
    from protloc.inference.predictor import Predictor, load_model

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
                        help="score the default per-cell answer's constants on a grid on this synthetic data set "
                        "(with --accuracy: then measure the chosen constants on that other set)")
    parser.add_argument("--note", default="", help="a line for the results' header (how the data and model were made)")
    parser.add_argument("--selection-out", type=Path, help="with --select: write the grid to OUT.json and OUT.md")
    parser.add_argument("--write-constants", action="store_true",
                        help="with --select: write the chosen constants into protloc/cells/scoring.py")
    args = parser.parse_args(argv)
    if (args.write_constants or args.selection_out) and not args.select:
        parser.error("--write-constants and --selection-out go with --select")
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


def _write(args, section: str, result: dict, text: str, indent: int | None = 2) -> None:
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(_results_file(section, result), indent=indent) + "\n")
        args.out.with_suffix(".md").write_text(text)


def _accuracy(args, options: dict | None = None, chosen: str = "") -> int:
    from dataclasses import asdict

    from protloc.cells.evaluate import evaluate_folder
    from protloc.cells.scoring import SCORINGS

    if not args.model:
        raise SystemExit("--accuracy needs --model (a GapNet-PL trained on synthetic data, e.g. protloc demo's)")
    result = evaluate_folder(args.accuracy, args.model, progress=sys.stderr.isatty(), combine_options=options)
    lines = [f"Data: {args.accuracy}; model: {args.model}. {args.note} {chosen}".rstrip(), "", *result.lines(), "",
             "| class | " + " | ".join(SCORINGS) + " |", "|---|" + "---:|" * len(SCORINGS)]
    lines += [f"| {name} | " + " | ".join(f"{v[s]:.3f}" for s in SCORINGS) + " |" for name, v in result.per_class.items()]
    _write(args, "cells-accuracy", asdict(result), "\n".join(lines) + "\n")
    return 0


SELECT_EXPRESSION_FULL = (None, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
SELECT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# weights of the cell's own logit relative to its field's mean (protloc.cells.scoring)
SELECT_RELATIVE = (0.0, 0.25, 0.5, 1.0, 2.0)


def select_constants(records, classes, progress: bool = False) -> list[dict]:
    """Per-cell mAP (drawn masks) of the default answer for every grid point, best first."""
    from itertools import product

    from tqdm.auto import tqdm

    from protloc.cells.evaluate import combine_rows, per_cell_map
    from protloc.cells.scoring import FILLING_CLASSES, combine

    a = records.arrays()
    filling = np.array([name in FILLING_CLASSES for name in classes])
    rows = []
    grid = list(product(SELECT_EXPRESSION_FULL, SELECT_WEIGHTS, SELECT_WEIGHTS, SELECT_RELATIVE, SELECT_RELATIVE))
    for full, w_fill, w_other, v_fill, v_other in tqdm(grid, desc="grid", unit="point", disable=not progress):
        scores = combine_rows(a, classes, combine, expression_full=full, weights=np.where(filling, w_fill, w_other),
                               relative=np.where(filling, v_fill, v_other))
        rows.append({"expression_full": full, "own_weight_filling": w_fill, "own_weight_other": w_other,
                     "relative_weight_filling": v_fill, "relative_weight_other": v_other,
                     "map": per_cell_map(a.truth, scores, classes)[0]})
    # ties (several points of equal mAP) go to the simplest: smaller weights first
    return sorted(rows, key=lambda row: (-round(row["map"], 6), row["relative_weight_filling"] + row["relative_weight_other"],
                                         row["own_weight_filling"] + row["own_weight_other"]))


def combine_options(row: dict, classes) -> dict:
    """A grid row -> ``protloc.cells.scoring.combine``'s keyword arguments."""
    from protloc.cells.scoring import FILLING_CLASSES

    filling = np.array([name in FILLING_CLASSES for name in classes])
    return {"expression_full": row["expression_full"],
            "weights": np.where(filling, row["own_weight_filling"], row["own_weight_other"]),
            "relative": np.where(filling, row["relative_weight_filling"], row["relative_weight_other"])}


def _grid_point(row: dict) -> str:
    return (f"gate full at {row['expression_full']}, own weights {row['own_weight_filling']} (filling) / "
            f"{row['own_weight_other']} (others), relative weights {row['relative_weight_filling']} / "
            f"{row['relative_weight_other']}")


def _select(args) -> int:
    from protloc.cells.evaluate import collect_cells, per_cell_map

    if not args.model:
        raise SystemExit("--select needs --model")
    predictor, drawn, _, _ = collect_cells(args.select, args.model, progress=sys.stderr.isatty(), segmented=False)
    rows = select_constants(drawn, predictor.classes, progress=sys.stderr.isatty())
    classes, truth = predictor.classes, drawn.arrays().truth
    baseline, own = (per_cell_map(truth, drawn.scores(classes, name), classes)[0] for name in ("image", "own"))
    best_absolute = next(r for r in rows if r["relative_weight_filling"] == r["relative_weight_other"] == 0)
    lines = [f"Data: {args.select} (drawn masks, {len(drawn.truth)} cells); model: {args.model}. {args.note} "
             f"Command: `python -m protloc.bench.cells {' '.join(sys.argv[1:])}`", "",
             f"Chosen (first row): {_grid_point(rows[0])}: per-cell mAP {rows[0]['map']:.4f}. "
             f"Weak baseline (its image's for every cell): {baseline:.4f}; the cell's own: {own:.4f}; best without the relative term: "
             f"{_grid_point(best_absolute)}: {best_absolute['map']:.4f}. Top 60 of {len(rows)} grid points here, "
             "all in the .json.", "",
             "| gate full at (None: no gate) | own weight, filling | own weight, others | relative weight, filling "
             "| relative weight, others | per-cell mAP |", "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['expression_full']} | {r['own_weight_filling']} | {r['own_weight_other']} | "
              f"{r['relative_weight_filling']} | {r['relative_weight_other']} | {r['map']:.4f} |" for r in rows[:60]]
    out, args.out = args.out, args.selection_out or (None if args.accuracy else args.out)
    columns = list(rows[0])
    grid = {"columns": columns, "rows": [[row[c] if c != "map" else round(row[c], 5) for c in columns] for row in rows]}
    # 4,375 grid points: one line of JSON (a value per line would make it a megabyte)
    _write(args, "cells-selection", grid, "\n".join(lines) + "\n", indent=None)
    args.out = out
    if args.write_constants:
        write_constants(rows[0], str(args.select), str(args.model))
    if args.accuracy:
        chosen = f"Default answer: {_grid_point(rows[0])} (chosen on {args.select}, not on this set)."
        return _accuracy(args, combine_options(rows[0], predictor.classes), chosen)
    return 0


SCORING_FILE = Path(__file__).resolve().parents[1] / "cells" / "scoring.py"
CONSTANTS_BEGIN = "# --- chosen constants: written by `python -m protloc.bench.cells --select ... --write-constants` ---"
CONSTANTS_END = "# --- end of chosen constants ---"


def write_constants(row: dict, data: str, model: str, path: Path = SCORING_FILE, note: list[str] | None = None) -> None:
    """Replace the default answer's constants in ``protloc/cells/scoring.py`` by a grid row (atomically)."""
    text = path.read_text(encoding="utf-8")
    if text.count(CONSTANTS_BEGIN) != 1 or text.count(CONSTANTS_END) != 1:
        raise SystemExit(f"{path}: the chosen-constants markers are missing; not written")
    head, rest = text.split(CONSTANTS_BEGIN)
    _, tail = rest.split(CONSTANTS_END)
    block = "\n".join([
        CONSTANTS_BEGIN,
        *(note or [f"# Chosen on {data} (drawn masks), model {model}:",
                   f"# per-cell mAP {row['map']:.4f}, the grid's best (benchmarks/results/cells-map-selection.md)."]),
        f"EXPRESSION_FULL = {row['expression_full']}",
        f"OWN_WEIGHT_FILLING = {row['own_weight_filling']}",
        f"OWN_WEIGHT_OTHER = {row['own_weight_other']}",
        f"RELATIVE_WEIGHT_FILLING = {row['relative_weight_filling']}",
        f"RELATIVE_WEIGHT_OTHER = {row['relative_weight_other']}",
        CONSTANTS_END])
    partial = path.with_suffix(".py.partial")
    partial.write_text(head + block + tail, encoding="utf-8")
    partial.replace(path)
    print(f"wrote the chosen constants to {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
