"""Per-cell answers of the real mosaic benchmark at two precisions (issue 27's per-cell margins).

    python -m protloc.bench.cells_real --data KAGGLE2018_DIR --mosaics 40 --no-alone --precision fp32 \
        --evidence fp32.npz --out /tmp/fp32
    python -m protloc.bench.cells_real --data KAGGLE2018_DIR --mosaics 40 --no-alone --precision bf16 \
        --evidence bf16.npz --out /tmp/bf16
    python benchmarks/cells_real_precision.py fp32.npz bf16.npz --json benchmarks/results/cells-real-precision.json

Both runs segment the same mosaics the same way (the segmentation does not depend on the precision),
so the cells pair up one to one. Printed: per-cell accuracy and mAP of the default (combined) answer
and of the cell's own evidence on each half of the mosaics, and over all cells how many change their
top class. Margins (issue 27): |delta| <= 0.005 and the top class kept for >= 99 % of the cells.
Exit 1 when a margin is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ANSWERS = ("combined", "own")


def compare(baseline: Path, other: Path) -> dict:
    from protloc.bench.cells_real_report import answers, load_evidence, report

    collected = [load_evidence(baseline), load_evidence(other)]
    first, second = (SimpleNamespace(**c["arrays"]) for c in collected)
    if not (np.array_equal(first.cell_id, second.cell_id) and np.array_equal(first.mosaic, second.mosaic)):
        raise SystemExit("the two runs have different cells: same --mosaics, --seed and segmentation needed")
    reports = [report(c) for c in collected]
    classes = collected[0]["classes"]
    result = {"cells": int(len(first.cell_id)), "halves": {}, "answers": {}}
    for half in ("report", "selection"):
        for name in ANSWERS:
            a, b = (r["halves"][half][name] for r in reports)
            result["halves"][f"{half}/{name}"] = {
                metric: {"baseline": a[metric], "other": b[metric], "delta": b[metric] - a[metric]}
                for metric in ("accuracy", "map")}
    for name in ANSWERS:
        a, b = answers(first, classes)[name], answers(second, classes)[name]
        changed = int((a.argmax(1) != b.argmax(1)).sum())
        result["answers"][name] = {"top_class_changed": changed, "kept_fraction": 1 - changed / len(a),
                                   "max_abs_difference": float(np.abs(a - b).max())}
    result["within_margins"] = bool(
        all(abs(m["delta"]) <= 0.005 for h in result["halves"].values() for m in h.values())
        and all(v["kept_fraction"] >= 0.99 for v in result["answers"].values()))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path, help="evidence .npz of the fp32 run")
    parser.add_argument("other", type=Path, help="evidence .npz of the other precision")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = compare(args.baseline, args.other)
    for key, metrics in result["halves"].items():
        print(key, "  ".join(f"{m} {v['baseline']:.4f} -> {v['other']:.4f} ({v['delta']:+.4f})"
                             for m, v in metrics.items()))
    for name, v in result["answers"].items():
        print(f"{name}: top class changed for {v['top_class_changed']} of {result['cells']} cells, "
              f"max |dp| {v['max_abs_difference']:.4f}")
    print("within the margins" if result["within_margins"] else "OUTSIDE the margins")
    if args.json:  # the results' layout (tests/bench): the machine, then the section
        from protloc.bench.common import machine_info

        layout = {"machine": machine_info(), "command": " ".join(["benchmarks/cells_real_precision.py", *(argv or sys.argv[1:])]),
                  "sections": {"cells-real-precision": result}}
        args.json.write_text(json.dumps(layout, indent=1) + "\n")
    return 0 if result["within_margins"] else 1


if __name__ == "__main__":
    sys.exit(main())
