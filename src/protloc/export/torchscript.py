"""TorchScript export: the traced network, protloc's metadata as an extra file inside the archive.

Tracing (not scripting) because the networks check input shapes with Python exceptions; the traced
graph keeps the operations, so a fully convolutional network still takes any size. The export is
run at a second size against the eager network before it is kept.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from protloc.errors import ProtlocError
from protloc.export import ExportResult
from protloc.export.onnx import CHECK_SIZES, MAX_ABS_DIFF, check_sizes, example_input, fully_convolutional

METADATA_FILE = "protloc.json"


def trace(network: torch.nn.Module) -> torch.jit.ScriptModule:
    network = network.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return torch.jit.trace(network, (example_input(network, CHECK_SIZES[0]),), check_trace=False)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProtlocError(f"TorchScript cannot hold {getattr(network, 'name', 'this network')}: {reason}") from None


def max_difference_torchscript(network: torch.nn.Module, path: Path) -> tuple[float, list[tuple[int, int]]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
    worst, sizes = 0.0, check_sizes(network)
    for i, size in enumerate(sizes):
        x = example_input(network, size, batch=2, seed=i + 1)
        with torch.no_grad():
            worst = max(worst, float((loaded(x) - network.eval()(x)).abs().max()))
    return worst, sizes


def export_torchscript(network: torch.nn.Module, out: str | Path, *, metadata: dict) -> ExportResult:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        traced = trace(network)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.export cannot keep dynamic sizes simply
            torch.jit.save(traced, str(tmp), _extra_files={METADATA_FILE: json.dumps(metadata)})
        difference, sizes = max_difference_torchscript(network, tmp)
        if difference > MAX_ABS_DIFF:
            raise ProtlocError(f"the TorchScript export differs from the network by {difference:.2e}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    shown = ", ".join(f"{h}x{w}" for h, w in sizes)
    axes = "any height and width" if fully_convolutional(network) else "its fixed input size"
    return ExportResult(out, "torchscript", [
        f"TorchScript (traced), {axes}",
        f"TorchScript vs protloc logits at {shown}: max |difference| {difference:.2e}",
    ])
