"""What the platform's cells cost the worker, per submission of one field, alternating in one
process, medians:

* ``patches``: the probabilities alone by the worker's batched covering patches (``--no-cells``);
* ``cells step``: ``CellsStage.compute`` (segmentation, per-cell prediction, outlines, label image);
  before one pass, a submission with cells cost ``patches + cells step`` (two network passes);
* ``one pass``: ``CellsStage.compute_with_probabilities``, the worker's path with cells on and a
  GapNet-PL: the probabilities and the cells from one whole-image pass.

The ratios are the figures (absolute times on a shared machine say little).

    PYTHONPATH=src python tools/web_cells_cost.py --model gapnet-pl.pt ../shared/real-hpa/hpa-download [--crop 1024]
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
    parser.add_argument("--crop", type=int, help="use the field's central CROP x CROP pixels")
    args = parser.parse_args()

    import protloc
    from protloc.data.formats import discover, read
    from protloc.web.pictures.cells import CellsStage
    from protloc.web.storage.store import BlobStore
    from protloc.web.queue.batching import batched_probabilities

    predictor = protloc.load_model(args.model)
    entry = discover(args.inputs)[0]
    image = read(entry).image
    if args.crop:
        top, left = (image.shape[1] - args.crop) // 2, (image.shape[2] - args.crop) // 2
        image = image[:, max(top, 0) : max(top, 0) + args.crop, max(left, 0) : max(left, 0) + args.crop].copy()
    stage = CellsStage(BlobStore(tempfile.mkdtemp()))
    load_before = os.getloadavg()[0]
    steps = {
        "patches": lambda run: batched_probabilities(predictor, [image], 64),
        "cells step": lambda run: stage.compute(predictor, f"cells{run}", image),
        "one pass": lambda run: stage.compute_with_probabilities(predictor, f"one{run}", image),
    }
    for step in steps.values():  # warm-up
        step("warmup")
    times: dict[str, list[float]] = {name: [] for name in steps}
    for run in range(args.runs):
        for name, step in steps.items():
            started = time.perf_counter()
            step(run)
            times[name].append(time.perf_counter() - started)
    record = stage.compute(predictor, "count", image)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{entry.id} {image.shape[2]}x{image.shape[1]}, {record.count} cells, {args.runs} runs, "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    for name, values in times.items():
        print(f"{name:11s} median {median[name]:.3f} s  {[round(x, 3) for x in values]}")
    two = median["patches"] + median["cells step"]
    print(f"with cells, two passes (patches + cells step) / patches alone: {two / median['patches']:.2f}")
    print(f"with cells, one pass / patches alone:                         {median['one pass'] / median['patches']:.2f}")
    print(f"one pass / two passes:                                        {median['one pass'] / two:.2f}")


if __name__ == "__main__":
    main()
