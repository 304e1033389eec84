"""What the platform's cells cost the worker: its batched probabilities of a field against its cells
step (``protloc.web.cells.CellsStage.compute``: segmentation, per-cell prediction, outlines, label
image), alternating in one process, medians. The ratio is the figure: a submission with cells is
done (1 + ratio) times later than without.

    PYTHONPATH=src python tools/web_cells_cost.py --model gapnet-pl.pt ../shared/real-hpa/hpa-download
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="a field (its first input is used)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import protloc
    from protloc.data.inputs import discover_inputs, load_entry
    from protloc.web.cells import CellsStage
    from protloc.web.storage import BlobStore
    from protloc.web.worker import batched_probabilities

    predictor = protloc.load_model(args.model)
    entry = discover_inputs(args.inputs)[0]
    image = load_entry(entry)
    stage = CellsStage(BlobStore(tempfile.mkdtemp()))
    load_before = os.getloadavg()[0]
    batched_probabilities(predictor, [image], 64)  # warm-up
    stage.compute(predictor, "warmup", image)
    probabilities, cells = [], []
    for run in range(args.runs):
        started = time.perf_counter()
        batched_probabilities(predictor, [image], 64)
        probabilities.append(time.perf_counter() - started)
        started = time.perf_counter()
        record = stage.compute(predictor, f"run{run}", image)
        cells.append(time.perf_counter() - started)
    p, c = statistics.median(probabilities), statistics.median(cells)
    print(f"{entry.id} {image.shape[2]}x{image.shape[1]}, {record.count} cells, {args.runs} runs, "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"probabilities (worker's batched path): median {p:.3f} s  {[round(x, 3) for x in probabilities]}")
    print(f"cells step:                            median {c:.3f} s  {[round(x, 3) for x in cells]}")
    print(f"cells / probabilities: {c / p:.2f}")


if __name__ == "__main__":
    main()
