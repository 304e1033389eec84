"""Single cells: segmentation, and a prediction and an embedding for every cell.

- ``segment(image)`` (``segmentation.py``): nuclei and whole cells of a canonical sample [4, H, W].
- ``read_masks`` (``masks.py``): users' label images and protloc's own (written by
  ``protloc.data.label_images.write_label_image``).
- ``predict_cells(predictor, image, labels)`` (``features.py``): per-cell embeddings and
  probabilities (GapNet-PL: masked averages of its block maps through its own head, one forward
  pass per image; other networks: a masked window per cell).
- ``analyse_image`` / ``run_cells`` (``pipeline.py``): one image to its cells; inputs of a command
  line to the per-cell table, AnnData file, label images and overlays (``protloc cells``).
- ``cell_scores`` / ``SCORINGS`` (``scoring.py``): a cell's answer; by default its image's and its own
  probabilities combined and gated by its expression of the protein.
- ``evaluate_folder`` (``evaluate.py``): per-cell mAP and segmentation quality on synthetic truth.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "segment": "segmentation",
    "Segmentation": "segmentation",
    "read_masks": "masks",
    "open_masks": "masks",
    "predict_cells": "features",
    "CellPredictions": "features",
    "analyse_image": "pipeline",
    "ImageCells": "pipeline",
    "cell_scores": "scoring",
    "SCORINGS": "scoring",
    "relative_expression": "scoring",
    "run_cells": "pipeline",
    "evaluate_folder": "evaluate",
    "match_cells": "evaluate",
    "per_cell_map": "evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"protloc.cells.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'protloc.cells' has no attribute {name!r}")
