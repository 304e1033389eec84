"""Choosing the default per-cell answer on real cells (``protloc.bench.cells_real``'s selection half).

    python -m protloc.bench.cells_real --evidence real.npz ...           # collect once (slow)
    python -m protloc.bench.cells_real_select real.npz --synthetic synth-101.npz \
        [--out benchmarks/results/cells-real-selection]

Every point of a grid of the default answer's constants (``protloc.cells.scoring.combine``: the
gate relative to the field's strongest cell, the absolute "no signal" gate, the cell's own weight
for compartment-filling and other classes) is scored by per-cell mAP and accuracy on the real
selection half, and by per-cell mAP on a synthetic set (drawn masks; ``--synthetic``: the evidence
of ``protloc.cells.evaluate.collect_cells`` saved with ``save_synthetic``). Chosen: the best real
mAP among the points whose synthetic mAP is not below the synthetic image baseline (every cell its
image's answer), ties to the higher real accuracy. The report half is never looked at here.
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import product
from pathlib import Path
from types import SimpleNamespace

import numpy as np

GATE_FULL = (None, 0.1, 0.2, 0.5)
OWN_WEIGHTS = (0.0, 0.5, 0.75, 1.0)
# (floor, full) of the absolute gate in units of the background's noise; None: no absolute gate. The
# real fields cannot choose it (every one of their cells counts as labelled, so a gate can only cost
# there): it is fixed by its principle (docs/single-cells.md), the grid shows what it costs.
SIGNAL_GATES = (None, (1.0, 3.0))
FIXED_SIGNAL_GATE = (1.0, 3.0)


def _scores(a, classes, rows, full, w_fill, w_other, signal) -> np.ndarray:
    from protloc.cells.scoring import FILLING_CLASSES, combine

    filling = np.array([name in FILLING_CLASSES for name in classes])
    weights = np.where(filling, w_fill, w_other)
    out = np.zeros((int(rows.sum()), len(classes)), np.float32)
    index = np.flatnonzero(rows)
    for group in np.unique(a.group[rows]):
        picked = a.group[index] == group
        cells = index[picked]
        out[picked] = combine(a.own[cells], a.image[cells][0], a.expression[cells], classes, expression_full=full,
                              weights=weights, relative=np.zeros(len(classes)),
                              signal_to_noise=a.signal_to_noise[cells], signal_floor=None if signal is None else signal[0],
                              signal_full=3.0 if signal is None else signal[1])
    return out


def grid(real, synthetic, classes, progress: bool = False) -> list[dict]:
    from tqdm.auto import tqdm

    from protloc.bench.cells_real_report import cell_accuracy
    from protloc.cells.evaluate import per_cell_map

    selection = real.half == "selection"
    every = np.ones(len(synthetic.own), bool)
    rows = []
    points = list(product(GATE_FULL, OWN_WEIGHTS, OWN_WEIGHTS, SIGNAL_GATES))
    for full, w_fill, w_other, signal in tqdm(points, desc="grid", unit="point", disable=not progress):
        real_scores = _scores(real, classes, selection, full, w_fill, w_other, signal)
        synth_scores = _scores(synthetic, classes, every, full, w_fill, w_other, signal)
        rows.append({"expression_full": full, "own_weight_filling": w_fill, "own_weight_other": w_other,
                     "signal_gate": signal,
                     "real_map": per_cell_map(real.truth[selection], real_scores, classes)[0],
                     "real_accuracy": cell_accuracy(real.truth[selection], real_scores),
                     "synthetic_map": per_cell_map(synthetic.truth, synth_scores, classes)[0]})
    return rows


def choose(rows: list[dict], synthetic_baseline: float) -> dict:
    rows = [r for r in rows if r["signal_gate"] == FIXED_SIGNAL_GATE] or rows
    allowed = [r for r in rows if r["synthetic_map"] >= synthetic_baseline] or rows
    return max(allowed, key=lambda r: (round(r["real_map"], 4), r["real_accuracy"]))


def write_chosen(chosen: dict, collected: dict, synthetic, baseline: float) -> None:
    """The chosen point into ``protloc/cells/scoring.py`` (the constants between its markers)."""
    from protloc.bench.cells import write_constants

    row = {**chosen, "relative_weight_filling": 0.0, "relative_weight_other": 0.0, "map": chosen["real_map"]}
    write_constants(row, collected["data"], collected["model"], note=[
        "# Chosen on real cells (python -m protloc.bench.cells_real_select ... --write-constants): the selection",
        f"# half of the mosaics of {Path(collected['data']).name}, {collected['model']}: per-cell mAP "
        f"{chosen['real_map']:.4f}, accuracy {chosen['real_accuracy']:.4f}",
        f"# there; synthetic per-cell mAP {chosen['synthetic_map']:.4f} ({Path(str(synthetic)).name}, image "
        f"baseline {baseline:.4f}). docs/single-cells.md."])


def real_arrays(collected: dict):
    a = SimpleNamespace(**collected["arrays"])
    a.group = a.mosaic
    a.half = np.array([collected["mosaics"][m]["half"] for m in a.mosaic])
    return a


def save_synthetic(path: Path, records) -> None:
    """``CellRecords`` of a synthetic set (``collect_cells``) -> an .npz for ``--synthetic``."""
    a = records.arrays()
    np.savez_compressed(path, truth=a.truth, own=a.own, image=a.image, expression=a.expression,
                        image_of=a.image_of, signal_to_noise=a.signal_to_noise)


def synthetic_arrays(path: Path):
    with np.load(path) as stored:
        a = SimpleNamespace(**{k: stored[k] for k in stored.files})
    a.group = a.image_of
    return a


def main(argv: list[str] | None = None) -> int:
    from protloc.bench.cells_real_report import load_evidence
    from protloc.cells.evaluate import per_cell_map
    from protloc.files import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evidence", type=Path, nargs="+", help="the real benchmark's evidence (.npz; shards joined)")
    parser.add_argument("--synthetic", type=Path, required=True, help="a synthetic set's evidence (.npz)")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    parser.add_argument("--write-constants", action="store_true",
                        help="write the chosen constants into protloc/cells/scoring.py")
    args = parser.parse_args(argv)
    from protloc.bench.cells_real import merge

    collected = merge([load_evidence(path) for path in args.evidence])
    classes = collected["classes"]
    real, synthetic = real_arrays(collected), synthetic_arrays(args.synthetic)
    baseline = per_cell_map(synthetic.truth, synthetic.image, classes)[0]
    rows = grid(real, synthetic, classes, progress=sys.stderr.isatty())
    chosen = choose(rows, baseline)
    ranked = sorted(rows, key=lambda r: -r["real_map"])
    lines = [f"Real: {' '.join(map(str, args.evidence))} (selection half); synthetic: {args.synthetic} (image baseline {baseline:.4f}). "
             f"Chosen: {json.dumps(chosen)}", "",
             "| gate full at | own weight, filling | own weight, others | signal gate (floor, full) | real mAP "
             "| real accuracy | synthetic mAP |", "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['expression_full']} | {r['own_weight_filling']} | {r['own_weight_other']} | {r['signal_gate']} "
              f"| {r['real_map']:.4f} | {r['real_accuracy']:.4f} | {r['synthetic_map']:.4f} |" for r in ranked[:40]]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write_constants:
        write_chosen(chosen, collected, args.synthetic, baseline)
    if args.out:
        atomic_write_text(args.out.with_suffix(".md"), text)
        from protloc.bench.common import machine_info

        command = "python -m protloc.bench.cells_real_select " + " ".join(sys.argv[1:])
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(
            {"protloc_bench": 1, "machine": machine_info(), "command": command, "sections": {"cells-real-selection": {
                "chosen": chosen, "synthetic_baseline": baseline, "rows": rows}}}, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
