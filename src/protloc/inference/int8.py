"""int8 GapNet-PL: post-training static quantisation through ONNX Runtime, made once and cached.

Route: the network (normalised input -> logits) is exported to ONNX by protloc's own exporter
(``protloc.export.onnx.trace_to_onnx``, dynamic height and width) and quantised by
``onnxruntime.quantization.quantize_static``: QDQ format, per-channel int8 weights, uint8 activations
with MinMax ranges, the dense head left in float32. ONNX Runtime fuses the QDQ pairs into int8
convolutions (VNNI where the CPU has it). PyTorch's own route was not available: torch 2.13 no
longer ships ``torch.ao.quantization.quantizer`` (X86InductorQuantizer moved to torchao).

Calibration: synthetic fields (``protloc.data.synth``, the generator behind ``protloc synth``),
brought to the model's pixel size as the inferer brings every input - never the real fields the
result is judged on.

Cache: ``<model>.int8-<sha256 of the model file, 16 hex>.onnx`` beside the model file (in the
user cache where that folder is not writable, or where the network has no file); a changed model
file has another hash, and the stale quantised files of that model are removed when the new one
is made.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from protloc.errors import ProtlocError

CALIBRATION_SEED = 20261206
CALIBRATION_FIELDS = 8
CALIBRATION_SIDE = 192  # px at the synthetic 0.4 µm/px: 960² at the published model's 0.08 µm/px
_LOCK = threading.Lock()
_SESSIONS: dict[str, object] = {}


_DIGESTS: dict[tuple, str] = {}


def _digest_file(path: Path) -> str:
    """The file's sha256 (16 hex), remembered by (path, size, mtime): an Inferer is made per image."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = _hash_file(path)
    return _DIGESTS[key]


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _digest_network(network: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_path(network: torch.nn.Module, model_file: str | Path | None = None) -> Path:
    """Where the quantised graph of this network (from this model file) lives."""
    if model_file is not None and Path(model_file).is_file():
        model_file = Path(model_file)
        folder = model_file.parent
        if os.access(folder, os.W_OK):
            return folder / f"{model_file.stem}.int8-{_digest_file(model_file)}.onnx"
        stem, key = model_file.stem, _digest_file(model_file)
    else:
        stem, key = "network", _digest_network(network)
    from protloc.pretrained.fetch import cache_root

    return cache_root() / "int8" / f"{stem}.int8-{key}.onnx"


def calibration_inputs(model_pixel_size_um: float | None, fields: int = CALIBRATION_FIELDS,
                       side: int = CALIBRATION_SIDE) -> list[np.ndarray]:
    """Normalised synthetic fields [1, 4, H, W] at the model's pixel size, as the network sees them."""
    from protloc.data.pixel_size import rescale, scale_factor
    from protloc.data.synth import PIXEL_SIZE_UM
    from protloc.data.synth.dataset import draw_sample
    from protloc.inference.normalization import normalize

    factor = scale_factor(PIXEL_SIZE_UM, model_pixel_size_um)
    inputs = []
    for index in range(fields):
        _, image = draw_sample(CALIBRATION_SEED, index, side, side)
        scaled = rescale(np.asarray(image, np.float32), factor)
        inputs.append(normalize(torch.from_numpy(np.ascontiguousarray(scaled))[None]).numpy())
    return inputs


def quantise(network: torch.nn.Module, out: Path, model_pixel_size_um: float | None) -> Path:
    """Export, calibrate and quantise ``network`` into ``out`` (written atomically)."""
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
        )
    except ImportError:
        raise ProtlocError("--precision int8 needs onnxruntime and onnx: pip install 'protloc[formats]'") from None
    from protloc.export.onnx import trace_to_onnx

    inputs = calibration_inputs(model_pixel_size_um)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": x} for x in inputs])

        def get_next(self):
            return next(self.items, None)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="protloc-int8-", dir=out.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        was_training = network.training
        try:
            trace_to_onnx(network.eval(), fp32)  # a CPU network: int8 is refused on CUDA (resolve_precision)
        finally:
            network.train(was_training)
        head = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type in ("Gemm", "MatMul")]
        staged = Path(tmp) / "int8.onnx"
        quantize_static(str(fp32), str(staged), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=head)
        os.replace(staged, out)
    return out


def quantised_model(network: torch.nn.Module, model_file: str | Path | None = None,
                    model_pixel_size_um: float | None = None) -> Path:
    """The cached quantised graph of ``network``, made on first use (and stale ones of it removed)."""
    path = cache_path(network, model_file)
    with _LOCK:
        if not path.is_file():
            stem = path.name.split(".int8-")[0]
            for stale in path.parent.glob(f"{stem}.int8-*.onnx"):
                stale.unlink(missing_ok=True)
            quantise(network, path, model_pixel_size_um)
    return path


def session(path: Path):
    """One ONNX Runtime session per quantised file and process (threads: torch's count)."""
    import onnxruntime as ort

    key = str(path)
    with _LOCK:
        if key not in _SESSIONS:
            options = ort.SessionOptions()
            options.intra_op_num_threads = int(torch.get_num_threads())
            _SESSIONS[key] = ort.InferenceSession(key, options, providers=["CPUExecutionProvider"])
        return _SESSIONS[key]


def int8_forward(network: torch.nn.Module, model_file: str | Path | None = None,
                 model_pixel_size_um: float | None = None):
    """Raw batch [N, 4, H, W] -> logits [N, K] (float32) of the int8 graph."""
    from protloc.inference.normalization import normalize

    runner = session(quantised_model(network, model_file, model_pixel_size_um))

    def forward(batch: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(normalize(batch.float().cpu()).numpy())
        return torch.from_numpy(runner.run(None, {"input": x})[0])

    return forward
