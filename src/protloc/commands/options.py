"""Options that several commands share, defined once."""

from __future__ import annotations

import sys

STRICT_EXIT = 3  # outputs written, but some inputs were skipped (2: an error, nothing or not all written)


def add_precision_argument(parser, default: str) -> None:
    """``--precision``, the same on every command (resolved by the one Inferer; docs/precision.md)."""
    from protloc.inference.precision import CHOICES

    parser.add_argument("--precision", default=default, choices=CHOICES,
                        help=f"arithmetic: fp32 (exact), bf16 (CPUs with AVX512-BF16/AMX, CUDA), fp16 (CUDA), "
                        "int8 (GapNet-PL through ONNX Runtime; off auto: it misses the accuracy margins) or auto "
                        f"(the fastest native one that holds them, said in one line). Default: {default}")


def add_strict_argument(parser) -> None:
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 3 when any input was skipped (default 0; the skipped inputs and "
                        "their reasons are listed in <out stem>.errors.csv either way)")


def skipped_exit(args, failures: list[tuple[str, str]], errors_file, what: str = "unreadable image(s)") -> int:
    """The summary of the skipped inputs (their list is in ``errors_file``) and the exit status: 0, or
    3 with ``--strict`` when any input was skipped (the outputs are written all the same)."""
    if not failures:
        return 0
    print(f"skipped {len(failures)} {what}, every reason in {errors_file} (columns id, reason):", file=sys.stderr)
    for sample_id, reason in failures[:10]:
        print(f"  {sample_id}: {reason}", file=sys.stderr)
    if getattr(args, "strict", False):
        print(f"protloc: error: --strict: {len(failures)} input(s) skipped", file=sys.stderr)
        return STRICT_EXIT
    return 0
