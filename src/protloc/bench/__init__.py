"""protloc's benchmarks: each figure against a baseline measured in the same run, reported as a ratio.

Run with ``protloc bench`` (installed with the package: ``protloc.bench``); sections:

* ``inference``: GapNet-PL on a 2048² four-channel image, as four 1024² patches and as one whole
  image, fp32 and bf16, each lever of ``protloc.inference.gapnet_pl_fast`` switched off in turn; baseline: the
  plain eager NCHW fp32 forward (``network(normalize(x))``) on the four patches. Outputs are
  compared with the baseline's (max logit difference, relative), and bf16's predicted classes with
  fp32's on synthetic samples. ``--tf-result`` adds the authors' TensorFlow graph
  (``tools/tf_benchmark.py``, run in a separate process and environment) to the same table.
* ``training``: one optimiser step (forward, loss, backward, SGD) per network on CPU-sized crops;
  baseline: eager NCHW fp32; against channels-last and bf16 autocast.
* ``data``: random training crops per second from the prepared memory-mapped cache against decoding
  the TIFF files for every crop.
* ``platform``: two ``protloc serve`` processes on loopback at once, probabilities first against
  today's path (``--render-eagerly``, the baseline): a real 2048² field to its probabilities and to
  its complete page, 1024² upload throughput, 200 concurrent list requests, memory over upload rounds.
* ``scaling``: whole-image inference time and peak memory from 1024² to 4096², training step time and
  peak memory by batch size, each point in its own subprocess (peak RSS from ``ru_maxrss``).
* ``onnxruntime``: the ONNX export of GapNet-PL run by onnxruntime against the fast fp32 path, same
  Predictor call and threads, on the inference section's image (``protloc.bench.onnx_runtime``).
* ``cells``: segmentation + per-cell prediction of the real 2048² HPA field against the image-level
  prediction of the same field (``protloc.bench.cells``; per-cell accuracy: ``python -m
  protloc.bench.cells --accuracy``).
* ``cluster``: 64 real-sized fields through the single-process path, ``--cluster local:1`` and ``local:2``
  and a loopback ``dask scheduler`` + two ``dask worker`` processes (``protloc.bench.cluster``).
* ``cells-real`` (only when named; ``--data DIR``): per-cell answers on mosaics tiled from real
  labelled fields, each cell's truth its source field's labels (``protloc.bench.cells_real``).

Timings interleave the variants round-robin (each round runs every variant once), so a load change
on a shared machine hits all of them alike; the table reports the best round and the median.
"""

from __future__ import annotations

import os
import sys
import time

from protloc.bench.common import SECTIONS, Progress, Settings, machine_info
from protloc.bench.report import markdown

__all__ = ["SECTIONS", "Settings", "markdown", "parse_sections", "run"]

STEPS = {"inference": 40, "training": 30, "data": 12, "platform": 5, "scaling": 20, "onnxruntime": 10, "cells": 8,
         "cluster": 6, "cells-real": 1}


def run(sections: list[str], settings: Settings) -> dict:
    import torch
    from tqdm.auto import tqdm

    if settings.threads:
        torch.set_num_threads(settings.threads)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    results: dict = {"protloc_bench": 1, "quick": settings.quick, "started": started, "machine": machine_info(),
                     "command": "protloc bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
                     "sections": {}}
    from protloc.bench.inference import inference_section
    from protloc.bench.platform import platform_section
    from protloc.bench.scaling import scaling_section
    from protloc.bench.training import data_section, training_section

    functions = {"inference": inference_section, "training": training_section, "data": data_section,
                 "platform": platform_section, "scaling": scaling_section}
    if settings.precision is not None:  # --precision: the platform at that precision against fp32
        from protloc.bench.platform_precision import precision_section

        functions["platform"] = precision_section
    if "onnxruntime" in sections:  # needs the formats extra
        from protloc.bench.onnx_runtime import onnxruntime_section

        functions["onnxruntime"] = onnxruntime_section
    if "cells" in sections:  # needs the cells extra
        from protloc.bench.cells import cells_section

        functions["cells"] = cells_section
    if "cluster" in sections:  # needs the dask extra
        from protloc.distributed.clusters import require_dask

        require_dask()
        from protloc.bench.cluster import cluster_section

        functions["cluster"] = cluster_section
    if "cells-real" in sections:  # needs the cells extra and labelled real fields
        from protloc.bench.cells_real import cells_real_section

        functions["cells-real"] = cells_real_section
    total = sum(STEPS[s] for s in sections)
    with tqdm(total=total, desc="bench", unit="step", disable=not settings.progress, file=sys.stderr) as bar:
        progress = Progress(bar)
        for section in sections:
            start = time.perf_counter()
            results["sections"][section] = functions[section](settings, progress)
            results["sections"][section]["seconds"] = round(time.perf_counter() - start, 1)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    return results


def parse_sections(text: str) -> list[str]:
    from protloc.errors import ProtlocError

    sections = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ProtlocError(f"unknown section {unknown[0] if unknown else text!r}; choose from {', '.join(SECTIONS)}")
    return sections
