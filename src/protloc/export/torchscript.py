"""TorchScript export: the traced network, protloc's metadata as an extra file inside the archive.

Tracing (not scripting) because the networks check input shapes with Python exceptions; the traced
graph keeps the operations, so a fully convolutional network still takes any size where its trace
holds at every size checked (GapNet-PL); one whose trace bakes in its input size is traced at its crop
size. The export is run against the eager network before it is kept.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from protloc.errors import ProtlocError
from protloc.export.metadata import ExportResult
from protloc.export.onnx import example_input, export_shapes, fully_convolutional, traced_and_checked

METADATA_FILE = "protloc.json"


def trace(network: torch.nn.Module, size: tuple[int, int]) -> torch.jit.ScriptModule:
    network = network.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return torch.jit.trace(network, (example_input(network, size),), check_trace=False)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProtlocError(f"TorchScript cannot hold {getattr(network, 'name', 'this network')}: {reason}") from None


def max_difference_torchscript(network: torch.nn.Module, path: Path, sizes: list[tuple[int, int]]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
    worst = 0.0
    for i, size in enumerate(sizes):
        x = example_input(network, size, batch=2, seed=i + 1)
        with torch.no_grad():
            worst = max(worst, float((loaded(x) - network.eval()(x)).abs().max()))
    return worst


def export_torchscript(network: torch.nn.Module, out: str | Path, *, metadata: dict) -> ExportResult:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    def write(fixed: int | None) -> None:
        trace_size, _ = export_shapes(network, fixed)
        traced = trace(network, trace_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.export keeps no dynamic sizes simply
            torch.jit.save(traced, str(tmp), _extra_files={
                METADATA_FILE: json.dumps({**metadata, "fixed_size": fixed})})

    try:
        fixed, sizes, difference, notes = traced_and_checked(
            network, metadata, "TorchScript", write, lambda sizes: max_difference_torchscript(network, tmp, sizes))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    shown = ", ".join(f"{h}x{w}" for h, w in sizes)
    axes = "any height and width" if fixed is None and fully_convolutional(network) else \
        f"input {sizes[0][0]}x{sizes[0][1]}"
    return ExportResult(out, "torchscript", [
        f"TorchScript (traced), {axes}", *notes,
        f"TorchScript vs protloc logits at {shown}: max |difference| {difference:.2e}",
    ])
