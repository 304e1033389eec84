"""Arithmetic precision of inference, and the one place that turns ``--precision`` into a precision.

``fp32`` (exact), ``bf16`` (bfloat16 arithmetic: native on CPUs with AVX512-BF16 or AMX, and on CUDA
GPUs from Ampere on), ``fp16`` (CUDA only), ``int8`` (post-training static quantisation through ONNX
Runtime, ``protloc.inference.int8``; native on CPUs with VNNI) and ``auto``: the fastest of these that
the machine at hand runs natively *and* that holds the accuracy margins on the 101 real fields
(docs/precision.md). What the machine runs natively is read at run time (``detect_capabilities``:
the CPU's flags from /proc/cpuinfo, else what torch reports; a CUDA device's compute capability),
never assumed; tests inject a ``Capabilities`` instead.

``resolve_precision`` is the only function that decides; the ``Inferer`` calls it (so do the
per-cell maps, through ``Predictor.maps_options``), and ``announce`` says the choice once per process
in one line on stderr.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from protloc.errors import ProtlocError

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
CHOICES = ("auto", *PRECISIONS)
# CPU flags (as /proc/cpuinfo names them) that make bf16 and int8 convolutions native.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
REPORTED_FLAGS = ("avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx512_vnni", "avx_vnni", "avx512f", "avx2")
# Whether ``auto`` may pick int8 on a CPU with VNNI but without bf16. Off: static int8 (8-bit
# activations) breaks GapNet-PL's answers on the real fields (docs/precision.md: SELU activations
# span -1.76 to ~2000, so an 8-bit scale loses every negative value). int8 runs when asked for.
INT8_IN_AUTO = False
# Fields a run must hold before SELU is compiled for it: compiling costs 1-5 s once per process on an
# idle machine (minutes on a loaded one) and saves 5-10 ms per 2048² field on AVX512-BF16 (up to 67 ms
# with AMX): 5 s / 10 ms = 500 fields (docs/precision.md). A server compiles always (unbounded run).
COMPILE_SELU_MIN_FIELDS = 500
_warned: set[str] = set()
_announced: set[str] = set()


@dataclass(frozen=True)
class Capabilities:
    """What a device runs natively: ``flags`` are the CPU's instruction-set flags, or for CUDA the
    pseudo-flags ``bf16`` / ``fp16`` (tensor cores) of its compute capability."""

    device: str  # "cpu" or "cuda"
    flags: frozenset = field(default_factory=frozenset)
    name: str = ""

    @property
    def bf16(self) -> bool:
        return "bf16" in self.flags if self.device == "cuda" else any(f in self.flags for f in BF16_FLAGS)

    @property
    def fp16(self) -> bool:
        return self.device == "cuda" and "fp16" in self.flags

    @property
    def int8(self) -> bool:
        return self.device == "cpu" and any(f in self.flags for f in INT8_FLAGS)

    def describe(self) -> str:
        shown = [f for f in (REPORTED_FLAGS if self.device == "cpu" else ("bf16", "fp16")) if f in self.flags]
        return f"{self.name or self.device}: {' '.join(shown) or 'none of ' + ', '.join(REPORTED_FLAGS[:6])}"


def _cpuinfo() -> tuple[str, frozenset]:
    """(model name, flags) of the first processor in /proc/cpuinfo; ("", empty) where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return "", frozenset()
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if name and flags:
            break
    return name, flags


@lru_cache(maxsize=None)
def _cpu_capabilities() -> Capabilities:
    import platform

    name, flags = _cpuinfo()
    if not flags:  # no /proc/cpuinfo (macOS, Windows): what torch's own dispatch and oneDNN report
        capability = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ...
        flags = {"avx512f"} if capability.startswith("AVX512") else {"avx2"} if capability == "AVX2" else set()
        if capability == "AVX512" and _onednn_bf16():
            flags.add("avx512_bf16")
        flags = frozenset(flags)
    return Capabilities("cpu", flags, name or platform.processor() or "CPU")


def _onednn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def detect_capabilities(device: torch.device | str = "cpu") -> Capabilities:
    """What ``device`` runs natively, read from the machine at run time."""
    device = torch.device(device)
    if device.type != "cuda":
        return _cpu_capabilities()
    if not torch.cuda.is_available():
        raise ProtlocError(f"device {device} asked for, but CUDA is not available here")
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, _ = torch.cuda.get_device_capability(index)
    flags = {"fp16"} if major >= 7 else set()  # tensor cores from Volta on
    if torch.cuda.is_bf16_supported():
        flags.add("bf16")
    return Capabilities("cuda", frozenset(flags), torch.cuda.get_device_name(index))


def check_precision(precision: str, *, allow_auto: bool = False) -> str:
    known = CHOICES if allow_auto else PRECISIONS
    if precision not in known:
        raise ProtlocError(f"unknown precision {precision!r}; choose one of {', '.join(known)}")
    return precision


@dataclass(frozen=True)
class Resolved:
    """The precision a run uses, what was asked for, and why (``line``: the one line said)."""

    precision: str
    requested: str
    reason: str
    capabilities: Capabilities | None = None

    @property
    def line(self) -> str:
        head = f"precision {self.precision}" if self.requested == self.precision else \
            f"precision {self.requested} -> {self.precision}"
        return f"{head}: {self.reason}"


def resolve_precision(requested: str | None, device: torch.device | str = "cpu", *,
                      capabilities: Capabilities | None = None, maps: bool = False) -> Resolved:
    """The precision to run for ``requested`` (None: fp32) on ``device``.

    ``maps``: for the per-cell path, which needs GapNet-PL's block feature maps (fp32/bf16/fp16 only;
    the int8 graph gives logits). ``capabilities``: injected instead of detected (tests)."""
    from protloc.devices import resolve_device

    requested = check_precision(requested or "fp32", allow_auto=True)
    device = resolve_device(device)
    if requested == "fp32":
        return Resolved("fp32", requested, "exact")
    caps = capabilities or detect_capabilities(device)
    where = caps.describe()
    if requested == "auto":
        if caps.device == "cuda":
            chosen = "bf16" if caps.bf16 else "fp16" if caps.fp16 else "fp32"
        elif caps.bf16:
            chosen = "bf16"
        elif caps.int8 and INT8_IN_AUTO and not maps:
            chosen = "int8"
        else:
            chosen = "fp32"
        why = {"bf16": "native bfloat16", "fp16": "native float16 (no bfloat16)", "int8": "native int8 (VNNI)",
               "fp32": "no faster native precision that holds the accuracy margins"}[chosen]
        return Resolved(chosen, requested, f"{why} on {where}", caps)
    if requested == "fp16" and caps.device != "cuda":
        raise ProtlocError("--precision fp16 is for CUDA devices; on a CPU use bf16, int8, fp32 or auto")
    if requested == "int8":
        if caps.device != "cpu":
            raise ProtlocError("--precision int8 runs on the CPU (ONNX Runtime); on CUDA use bf16, fp16 or auto")
        if maps:
            raise ProtlocError("--precision int8 gives image-level answers only: the per-cell path needs "
                               "GapNet-PL's feature maps; use fp32, bf16 or auto")
    native = {"bf16": caps.bf16, "fp16": caps.fp16, "int8": caps.int8}[requested]
    return Resolved(requested, requested, f"{'native' if native else 'EMULATED (slower than fp32)'} on {where}", caps)


def announce(resolved: Resolved, stream=None) -> None:
    """Say the choice of an ``auto`` run in one line on stderr, once per process and choice."""
    if resolved.requested != "auto" or resolved.line in _announced:
        return
    _announced.add(resolved.line)
    print(f"protloc: {resolved.line}", file=stream or sys.stderr)


def compile_selu_worth(fields: float | None) -> bool:
    """Whether a run of ``fields`` fields repays compiling SELU (``math.inf``: a server; None: unknown)."""
    return fields is not None and fields >= COMPILE_SELU_MIN_FIELDS


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """Whether bfloat16 convolutions run natively (AVX512-BF16/AMX on CPU; Ampere or newer on CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return _onednn_bf16()


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
