"""What every exported file carries beside its weights (``model_metadata``), and what an export
returns (``ExportResult``): shared by the ONNX, TorchScript and bioimage.io writers, which the
package's ``export_model`` calls (they do not import the package back)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ExportResult:
    out: Path
    format: str
    checks: list[str] = field(default_factory=list)  # one line per check made on the exported file


def model_metadata(model: dict) -> dict:
    """What a user of an exported file needs beside the weights (stored inside ONNX and TorchScript)."""
    from protloc.model_file import model_pixel_size

    payload = model["payload"]
    classes = list(payload["classes"])
    pixel_size, pixel_size_source = model_pixel_size(payload)
    return {
        "format": "protloc-export/1",
        "model": payload["model"],
        "classes": classes,
        "label_set": payload.get("label_set"),
        "channels": list(payload["channels"]),
        "normalization": dict(payload.get("normalization") or {}),
        "input": "float32 [batch, 4, height, width], each channel of each image normalised to zero mean "
                 "and unit variance ((x - mean) / (std + 1e-7), population std)",
        "output": "float32 [batch, classes] logits; sigmoid gives the class probabilities",
        "thresholds": list(payload.get("thresholds") or [0.5] * len(classes)),
        "crop_size": payload.get("crop_size"),
        "pixel_size_um": pixel_size,
        "pixel_size_source": pixel_size_source,
        "source": {k: v for k, v in (payload.get("source") or {}).items() if k != "files"},
    }
