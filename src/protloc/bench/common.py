"""What every benchmark section shares: settings, progress, machine description, interleaved timing,
the GapNet-PL network and the benchmark image."""

from __future__ import annotations

import os
import platform as platform_module
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

SECTIONS = ("inference", "training", "data", "platform", "scaling", "onnxruntime", "cells", "cluster", "cells-real")
# cells-real needs labelled real fields (--data) and takes half an hour: only when asked for
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s != "cells-real")
CHECKPOINT_CHANNEL_ORDER = ["nucleus", "protein", "microtubules", "er"]


@dataclass
class Settings:
    quick: bool = False
    model: str | None = None  # protloc model file (GapNet-PL); None: pretrained if cached, else random weights
    tf_result: str | None = None
    repeats: int | None = None
    compile: bool = False
    progress: bool = True
    threads: int | None = None
    fields: int | None = None  # cluster section: how many fields (default 64, --quick 8)
    size: int | None = None  # cluster section: their size (default 2048, --quick 256)
    precision: str | None = None  # --precision: the platform section compares it with fp32 (bench/platform_precision.py)
    data: str | None = None  # labelled real fields for cells-real (default ../shared/real-hpa/kaggle2018-train-101)
    out: str | None = None  # the results file: cells-real writes its figure and arrangement beside it

    @property
    def image_size(self) -> int:
        return 256 if self.quick else 2048

    @property
    def rounds(self) -> int:
        return self.repeats or (2 if self.quick else 7)


@dataclass
class Progress:
    bar: object = None

    def step(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text[:60])
            self.bar.update(1)


def machine_info() -> dict:
    import torch

    cpu = platform_module.processor() or platform_module.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", "x86_64"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    memory_gib = None
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    from protloc.inference.precision import bf16_supported

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_gib,
        "isa": sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx512_vnni", "avx_vnni", "avx2"))),
        "bf16_native": bf16_supported("cpu"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform_module.python_version(),
        "torch": torch.__version__,
        "onednn": torch.backends.mkldnn.is_available(),
        "platform": platform_module.platform(),
        "load_average_at_start": list(os.getloadavg()),
    }


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                progress: Progress | None = None) -> dict[str, dict]:
    """Seconds per call of each variant: warm-up calls, then ``rounds`` rounds running each once."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        if progress:
            progress.step(f"round of {len(variants)} variants")
    return {name: {"best_s": min(t), "median_s": statistics.median(t), "rounds": len(t)} for name, t in times.items()}


def load_network(settings: Settings):
    """(GapNet-PL network in eval mode, description of its weights)."""
    import torch

    from protloc.inference.predictor import load_model
    from protloc.models import create_model

    spec = None if settings.model == "pretrained" else settings.model
    if spec is None:
        try:
            from protloc.pretrained.fetch import resolve_pretrained

            spec = str(resolve_pretrained())
        except Exception:  # not imported on this machine: random weights time the same
            spec = None
    if spec is None:
        torch.manual_seed(0)
        return create_model("gapnet-pl").eval(), "random initialisation (no imported pretrained weights found)"
    from protloc.errors import ProtlocError

    path = Path(spec)
    if not path.is_file():
        raise ProtlocError(f"no model file {spec}")
    predictor = load_model(path)
    if predictor.model_name != "gapnet-pl":
        raise ProtlocError(f"{path.name} is a {predictor.model_name} model; the inference benchmark needs GapNet-PL")
    repository = predictor.model_file.get("source", {}).get("repository", "protloc model file")
    return predictor.network.eval(), f"{path} ({repository})"


def benchmark_image(size: int):
    """Raw float32 [1, 4, size, size] (canonical channels) and the same array as tools/tf_benchmark.py feeds TF."""
    import torch

    from protloc.data.channels import CHANNELS

    rng = np.random.default_rng(0)
    nhwc = (rng.random((1, size, size, 4), dtype=np.float32) ** 3 * 4000.0).astype(np.float32)
    order = [CHECKPOINT_CHANNEL_ORDER.index(channel) for channel in CHANNELS]
    return torch.from_numpy(np.ascontiguousarray(nhwc[0].transpose(2, 0, 1)[order]))[None]


def to_patches(image, patch: int):
    import torch

    size = image.shape[-1]
    if size < 2 * patch:
        return image
    tiles = [image[:, :, r : r + patch, c : c + patch] for r in (0, patch) for c in (0, patch)]
    return torch.cat(tiles).contiguous()


def relative_difference(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
