"""ONNX export, checked with onnxruntime against the network's own logits.

The network is traced by torch's TorchScript-based exporter (``dynamo=False``: it needs no extra
package and handles GapNet-PL's ceil-mode pooling at any size). Fully convolutional networks get
dynamic batch, height and width; networks with fixed-size dense layers a dynamic batch at their
input size. protloc's metadata (classes, channels, normalisation, thresholds) goes into the file's
``metadata_props`` under ``protloc``, so ``protloc predict --model model.onnx`` needs nothing else.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from protloc.errors import ProtlocError
from protloc.export.metadata import ExportResult

OPSET = 17
# Float32 accuracy: the exported graph computes the same operations in another order.
MAX_ABS_DIFF = 1e-4
CHECK_SIZES: tuple[tuple[int, int], ...] = ((128, 128), (200, 152))


def fully_convolutional(network: torch.nn.Module) -> bool:
    paper = getattr(network, "paper", None)
    return paper is not None and not paper.fixed_input_size


def example_input(network: torch.nn.Module, size: tuple[int, int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, network.in_channels, *size, generator=generator)


def export_shapes(network: torch.nn.Module, fixed: int | None) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """(the size to trace at, the sizes to check at): several sizes for a dynamic export, else one."""
    if fixed is None and fully_convolutional(network):
        return CHECK_SIZES[0], list(CHECK_SIZES)
    side = int(fixed or getattr(network, "input_size", None) or network.paper.input_size)
    return (side, side), [(side, side)]


def trace_to_onnx(network: torch.nn.Module, out: Path, opset: int = OPSET, fixed: int | None = None) -> None:
    """Write the network as ONNX (input ``input``, output ``logits``); ProtlocError if ONNX cannot hold it.

    ``fixed``: trace at ``fixed`` x ``fixed`` with static height and width (else dynamic for fully
    convolutional networks)."""
    network = network.eval()
    trace_size, _ = export_shapes(network, fixed)
    dynamic = {"input": {0: "batch"}, "logits": {0: "batch"}}
    if fixed is None and fully_convolutional(network):
        dynamic["input"].update({2: "height", 3: "width"})
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on Python-side shape checks
            torch.onnx.export(network, (example_input(network, trace_size),), str(out), dynamo=False,
                              input_names=["input"], output_names=["logits"], dynamic_axes=dynamic,
                              opset_version=opset)
    except Exception as exc:  # the exporter's own error types for unsupported operators
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProtlocError(f"ONNX cannot hold {getattr(network, 'name', 'this network')}: {reason}") from None


def add_metadata(path: Path, metadata: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "protloc", json.dumps(metadata)
    model.doc_string = f"protloc export of {metadata.get('model')}: {metadata.get('output')}"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def max_difference_onnx(network: torch.nn.Module, path: Path, sizes: list[tuple[int, int]]) -> float:
    """Largest |logit difference| between onnxruntime and the network on random normalised inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for i, size in enumerate(sizes):
        x = example_input(network, size, batch=2, seed=i + 1)
        with torch.no_grad():
            expected = network.eval()(x).numpy()
        got = session.run(["logits"], {"input": x.numpy()})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def traced_and_checked(network: torch.nn.Module, metadata: dict, what: str, write, max_difference
                       ) -> tuple[int | None, list[tuple[int, int]], float, list[str]]:
    """Trace with dynamic height and width, check the traced file against the network at several sizes,
    and fall back to the crop size where the trace baked its input size in (Python-side shape arithmetic).

    ``write(fixed)`` writes the traced file (``fixed``: None or the one input side);
    ``max_difference(sizes)`` compares it with the network. Returns (fixed, sizes, difference, notes).
    """
    notes: list[str] = []
    fixed = None
    while True:
        write(fixed)
        _, sizes = export_shapes(network, fixed)
        difference = max_difference(sizes)
        if difference <= MAX_ABS_DIFF or fixed is not None or not fully_convolutional(network):
            break
        fixed = int(metadata.get("crop_size") or network.paper.input_size)
        notes.append(f"the graph traced at one size differs at others by {difference:.1e}: "
                     f"exported at the crop size {fixed}x{fixed}")
    if difference > MAX_ABS_DIFF:
        raise ProtlocError(f"the {what} export differs from the network by {difference:.2e} (over {MAX_ABS_DIFF})")
    return fixed, sizes, difference, notes


def export_onnx(network: torch.nn.Module, out: str | Path, *, metadata: dict, opset: int = OPSET) -> ExportResult:
    """Dynamic height and width where the traced graph holds at every size checked; a network whose
    trace bakes in its input size (Python-side shape arithmetic) is exported at its crop size instead."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ProtlocError(f"an ONNX export is written to a .onnx file, not {out.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.onnx")
    try:
        fixed, sizes, difference, notes = traced_and_checked(
            network, metadata, "ONNX", lambda fixed: trace_to_onnx(network, tmp, opset, fixed),
            lambda sizes: max_difference_onnx(network, tmp, sizes))
        add_metadata(tmp, metadata)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    shown = ", ".join(f"{h}x{w}" for h, w in sizes)
    axes = "dynamic batch, height and width" if fixed is None and fully_convolutional(network) else \
        f"dynamic batch, fixed size {sizes[0][0]}x{sizes[0][1]}"
    return ExportResult(out, "onnx", [
        f"ONNX opset {opset}, {axes}", *notes,
        f"onnxruntime vs protloc logits at {shown}: max |difference| {difference:.2e}",
    ])
