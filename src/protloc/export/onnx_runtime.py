"""Prediction through onnxruntime: an exported ``.onnx`` model behind protloc's Predictor.

``OnnxNetwork`` stands where a torch network stands in a Predictor: a module whose forward takes the
normalised batch and returns logits, with the network's ``paper`` defaults (whether it takes any input
size), ``name``, ``num_classes`` and ``in_channels``. Everything else (patches, whole image, TTA,
thresholds, outputs) is protloc's own code, unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from protloc.errors import ProtlocError


class OnnxNetwork(torch.nn.Module):
    def __init__(self, path: str | Path, metadata: dict, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        self.name = f"{metadata.get('model', 'onnx')} (onnxruntime)"
        self.num_classes = len(metadata["classes"])
        self.in_channels = int(shape[1]) if isinstance(shape[1], int) else len(metadata["channels"])
        # What the Predictor asks of a network: whether it takes any input size, and its crop size.
        self.paper = _paper_defaults(metadata, shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ProtlocError(f"{self.name} expects input [batch, {self.in_channels}, height, width], got {list(x.shape)}")
        batch = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: batch})[0])


def _paper_defaults(metadata: dict, shape: list) -> object:
    from protloc.models.base import PaperDefaults

    fixed = isinstance(shape[2], int) and isinstance(shape[3], int)
    size = int(shape[2]) if fixed else int(metadata.get("crop_size") or 1024)
    return PaperDefaults(learning_rate=0.0, batch_size=1, dropout=0.0, input_size=size, fixed_input_size=fixed)


def read_metadata(path: Path) -> dict:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ProtlocError(f"cannot read ONNX file {path.name}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "protloc" not in props:
        raise ProtlocError(f"{path.name} is not a protloc ONNX export (no protloc metadata): export it with "
                           "protloc export MODEL --format onnx")
    return json.loads(props["protloc"])


def load_onnx_predictor(path: str | Path, device: str | torch.device = "cpu"):
    """A Predictor that runs an exported ONNX file through onnxruntime (CPU)."""
    from protloc.devices import resolve_device
    from protloc.inference.predictor import DEFAULT_PATCH_SIZE, Predictor

    path = Path(path)
    if not path.is_file():
        raise ProtlocError(f"no model file {path}")
    # --device auto means "the best there is": for an ONNX file that is the CPU, even beside a GPU.
    if str(device).strip().lower() not in ("auto", "none") and resolve_device(device).type != "cpu":
        raise ProtlocError("ONNX models run on the CPU through onnxruntime; use --device cpu or the .pt model")
    metadata = read_metadata(path)
    network = OnnxNetwork(path, metadata)
    classes = list(metadata["classes"])
    thresholds = metadata.get("thresholds") or [0.5] * len(classes)
    return Predictor(
        network=network,
        classes=classes,
        thresholds=np.asarray(thresholds, dtype=np.float32),
        patch_size=int(metadata.get("crop_size") or network.paper.input_size or DEFAULT_PATCH_SIZE),
        model_name=metadata["model"],
        source={**(metadata.get("source") or {}), "channels": metadata["channels"], "file": str(path),
                "runtime": "onnxruntime"},
        device=torch.device("cpu"),
        name=f"{metadata['model']} ({path.name}, onnxruntime)",
        pixel_size_um=metadata.get("pixel_size_um"),
        pixel_size_source=metadata.get("pixel_size_source") or "unknown",
    )
