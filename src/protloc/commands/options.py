"""Options that several commands share, defined once."""

from __future__ import annotations


def add_precision_argument(parser, default: str) -> None:
    """``--precision``, the same on every command (resolved by the one Inferer; docs/precision.md)."""
    from protloc.inference.precision import CHOICES

    parser.add_argument("--precision", default=default, choices=CHOICES,
                        help=f"arithmetic: fp32 (exact), bf16 (CPUs with AVX512-BF16/AMX, CUDA), fp16 (CUDA), "
                        "int8 (GapNet-PL through ONNX Runtime; off auto: it misses the accuracy margins) or auto "
                        f"(the fastest native one that holds them, said in one line). Default: {default}")
