"""Arithmetic precision of inference: ``fp32`` (default) or ``bf16``, and whether bf16 is native here."""

from __future__ import annotations

import warnings

import torch

from protloc.errors import ProtlocError

PRECISIONS = ("fp32", "bf16")
_warned: set[str] = set()


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ProtlocError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """Whether bfloat16 convolutions run natively (AVX512-BF16/AMX on CPU; Ampere or newer on CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def warn_if_bf16_emulated(precision: str, device: torch.device | str = "cpu") -> bool:
    """Warn once per device type when bf16 is asked for where it is not native (slower than fp32 there,
    and less exact). Returns whether it warned."""
    device = torch.device(device)
    if precision != "bf16" or bf16_supported(device) or device.type in _warned:
        return False
    _warned.add(device.type)
    where = "this CPU has no native bfloat16 (AVX512-BF16/AMX)" if device.type == "cpu" else \
        f"{device} has no native bfloat16"
    warnings.warn(f"--precision bf16: {where}; bf16 is emulated there, slower than fp32 and less exact. "
                  "Use fp32 on this machine.", RuntimeWarning, stacklevel=3)
    return True
