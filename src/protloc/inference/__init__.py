"""Inference: one normaliser, one patch/whole-image inferer, and what is built on them.

- ``normalize`` (``normalization.py``): the per-channel z-score every network input goes through.
- ``Inferer`` (``inferer.py``): covering patches (the authors' step rule) or the whole image, TTA,
  batching, patch averaging; used by the CLI, validation, evaluation, the expert study, the web
  worker and the maps.
- ``load_model`` / ``Predictor`` (``predictor.py``): a model file and its inferer, ready to use.
- ``run_batch_prediction`` (``batch.py``): many images to a resumable CSV/JSONL/Parquet file.
- ``class_activation_maps`` / ``sliding_window_maps`` / ``write_maps`` (``maps.py``).
- ``resolve_precision`` (``precision.py``): the one place ``--precision`` (auto included) is decided;
  ``int8.py``: GapNet-PL's int8 graph through ONNX Runtime (docs/precision.md).

GapNet-PL's fast path lives beside the model, in ``protloc.inference.gapnet_pl_fast``. Names are
imported lazily so that ``protloc.inference.normalization`` stays a light import.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EPSILON": "normalization",
    "NORMALIZATION": "normalization",
    "normalize": "normalization",
    "PRECISIONS": "precision",
    "check_precision": "precision",
    "bf16_supported": "precision",
    "resolve_precision": "precision",
    "detect_capabilities": "precision",
    "Inferer": "inferer",
    "sigmoid_forward": "inferer",
    "dihedral_views": "inferer",
    "predict_dataset": "inferer",
    "Predictor": "predictor",
    "load_model": "predictor",
    "resolve_model_file": "predictor",
    "run_batch_prediction": "batch",
    "BatchResult": "batch",
    "class_activation_maps": "maps",
    "sliding_window_maps": "maps",
    "write_maps": "maps",
    "window_grid": "maps",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"protloc.inference.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'protloc.inference' has no attribute {name!r}")
