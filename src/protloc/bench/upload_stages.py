"""Where a platform upload's CPU goes: ``python -m protloc.bench.upload_stages``.

The worker's own stage functions, called one after another on one thread (one torch thread, BLAS at
one thread, as a lane under load runs them) on the platform benchmark's upload (the 1024² centre of
the real field 57639_1283_B2_10 as a four-plane TIFF, or noise without ../shared): decoding, the
stored pixel size, segmentation, GapNet-PL's forward pass, the per-cell pooling and protein signal,
border flags and geometry, the table rows, the outlines, the label PNG. Each stage's CPU seconds
(``time.process_time``: every thread of the process) are the median over ``--rounds`` rounds after
one warm-up round (the compiled SELU, caches). HTTP, the database and thread hand-offs are not in
it: ``benchmarks/upload_threads.py`` measures a whole server per thread. Usage::

    python -m protloc.bench.upload_stages --model gapnet-pl.pt --precision fp32 bf16 [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STAGES = ("decode TIFF", "pixel size", "segmentation", "forward pass", "per-cell pooling + signal",
          "border + geometry", "cell rows", "outlines", "label PNG")


def measure(model: str, precision: str, rounds: int) -> dict:
    import torch
    from threadpoolctl import threadpool_limits

    from protloc.bench.platform_inputs import field_files, field_sample, find_field, tiff_payload
    from protloc.cells.features import image_pass, predict_cells
    from protloc.cells.pipeline import ImageCells, cell_geometry, cell_rows
    from protloc.cells.segmentation import border_cells, segment
    from protloc.data.formats import read_file
    from protloc.data.formats.channel_files import pixel_size
    from protloc.data.label_images import write_label_image
    from protloc.inference.predictor import load_model
    from protloc.visualization import display_factor
    from protloc.web.pictures.cells import OUTLINE_GRID, outlines

    import scipy.linalg  # noqa: F401  (its OpenBLAS loaded before the limit, as the lanes do)

    threadpool_limits(1, "blas")
    torch.set_num_threads(1)
    predictor = load_model(model, precision=precision)
    predictor.fields = math.inf  # a server: compiled SELU, as the platform's predictors
    with tempfile.TemporaryDirectory(prefix="protloc-stages-") as tmp:
        tmp = Path(tmp)
        real = find_field() is not None
        field = field_sample(tmp, field_files(tmp, False)[0]) if real else None
        _, sample = tiff_payload(tmp, 1024, field)
        path = tmp / "sample-1024.tif"
        seconds: dict[str, list[float]] = {name: [] for name in STAGES}

        def stage(name, work):
            started = time.process_time()
            answer = work()
            seconds[name].append(time.process_time() - started)
            return answer

        cells = 0
        for _ in range(rounds + 1):
            image = stage("decode TIFF", lambda: np.asarray(read_file(path).image, dtype=np.float32))
            um = stage("pixel size", lambda: pixel_size([path], *image.shape[-2:], names=["sample.tif"]).um)
            found = stage("segmentation", lambda: segment(image))
            made = stage("forward pass", lambda: image_pass(predictor, image, um))
            cell = stage("per-cell pooling + signal",
                         lambda: predict_cells(predictor, image, found.cells, pixel_size_um=um, made=made))

            def geometry():
                flags = border_cells(found.cells)[cell.cell_ids - 1]
                return ImageCells("s", found.cells, found.nuclei, cell, flags,
                                  *cell_geometry(found.cells, found.nuclei, cell.cell_ids))

            analysed = stage("border + geometry", geometry)
            rows = stage("cell rows", lambda: cell_rows(analysed, predictor))
            factor = OUTLINE_GRID * display_factor(*found.cells.shape, full=False)
            stage("outlines", lambda: outlines(found.cells, [r["cell_id"] for r in rows], factor))
            stage("label PNG", lambda: write_label_image(tmp / "cellmask.png", found.cells))
            cells = len(rows)
    median = {name: float(np.median(values[1:])) for name, values in seconds.items()}
    total = sum(median.values())
    return {"precision": predictor.resolved_precision, "sample": sample, "cells": cells, "rounds": rounds,
            "total_core_s": round(total, 4),
            "stages": [{"stage": name, "core_s": round(value, 4), "share": round(value / total, 3)}
                       for name, value in median.items()]}


def markdown(results: list[dict], load: tuple[float, float]) -> str:
    out = [f"Upload: {results[0]['sample']}; {results[0]['cells']} cells; one thread; median of "
           f"{results[0]['rounds']} rounds; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end.", "",
           "| stage | " + " | ".join(f"{r['precision']} core-s (share)" for r in results) + " |",
           "|---|" + "---|" * len(results)]
    for index, name in enumerate(STAGES):
        out.append(f"| {name} | " + " | ".join(f"{r['stages'][index]['core_s']:.4f} ({r['stages'][index]['share']:.0%})"
                                              for r in results) + " |")
    out.append("| **sum** | " + " | ".join(f"**{r['total_core_s']:.4f}**" for r in results) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protloc.bench.upload_stages", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="pretrained", help="GapNet-PL model file (default: the imported pretrained weights)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "auto"], choices=["fp32", "bf16", "auto"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        print("protloc: --rounds must be at least 1", file=sys.stderr)
        return 2
    from protloc.errors import ProtlocError

    start = os.getloadavg()[0]
    try:
        results = [measure(args.model, precision, args.rounds) for precision in args.precision]
    except (ProtlocError, FileNotFoundError) as exc:
        print(f"protloc: {exc}", file=sys.stderr)
        return 1
    text = markdown(results, (start, os.getloadavg()[0]))
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"load_average": [start, os.getloadavg()[0]], "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
