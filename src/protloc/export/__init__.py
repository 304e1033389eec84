"""Models out of protloc: ONNX, TorchScript and BioImage Model Zoo (bioimage.io, format 0.5) packages.

``export_model(spec, format, out)`` is the one call behind ``protloc export``. Every exported file
takes the network's input as protloc feeds it (channels nucleus, microtubules, ER, protein, each
normalised to zero mean and unit variance per image) and gives one logit per class; the exporter runs
the exported file on test inputs and states the largest difference from protloc's own logits.
"""

from __future__ import annotations

from pathlib import Path

from protloc.errors import ProtlocError
from protloc.export.metadata import ExportResult, model_metadata

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "bioimageio")
# bioimage.io packages carry the architecture of their pytorch_state_dict weights as one self-contained
# source file; protloc has that file for GapNet-PL (gapnet_pl_architecture.py).
BIOIMAGEIO_MODELS: tuple[str, ...] = ("gapnet-pl",)


def load_exportable(spec: str | Path) -> dict:
    """The model file behind ``spec`` (pretrained, file, run folder) with its network built."""
    from protloc.inference.predictor import load_model, resolve_model_file

    if str(spec).lower().endswith((".onnx", ".zip")):
        raise ProtlocError(
            f"{Path(str(spec)).name} is an exported model: export from the protloc model file (.pt) it came from"
        )
    path = resolve_model_file(spec)
    predictor = load_model(path)
    return {"payload": predictor.model_file, "network": predictor.network, "path": path}


def export_model(spec: str | Path, format: str, out: str | Path, **options) -> ExportResult:
    if format not in FORMATS:
        raise ProtlocError(f"unknown export format {format!r}: use {', '.join(FORMATS)}")
    model = load_exportable(spec)
    name = model["payload"]["model"]
    if format == "bioimageio" and name not in BIOIMAGEIO_MODELS:
        raise ProtlocError(
            f"a bioimage.io package cannot hold {name}: its pytorch_state_dict weights need a self-contained "
            f"architecture file, which protloc has for {', '.join(BIOIMAGEIO_MODELS)}; export {name} with "
            "--format onnx or torchscript"
        )
    if format == "onnx":
        from protloc.export.onnx import export_onnx

        return export_onnx(model["network"], out, metadata=model_metadata(model), **options)
    if format == "torchscript":
        from protloc.export.torchscript import export_torchscript

        return export_torchscript(model["network"], out, metadata=model_metadata(model))
    from protloc.export.bioimageio import export_bioimageio

    return export_bioimageio(model, out, **options)
