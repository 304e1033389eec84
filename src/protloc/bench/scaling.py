"""The scaling section: each point in a fresh process (``python -m protloc.bench.scaling --child``),
seconds per call and peak resident memory."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

from protloc.bench.common import Progress, Settings, benchmark_image, interleaved


def _status_mib(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(task: dict) -> dict:
    """One scaling point, in a fresh process: seconds per call and peak resident memory."""
    import torch

    from protloc.inference.gapnet_pl_fast import FastGapNetPL
    from protloc.inference.normalization import normalize
    from protloc.models import create_model

    torch.manual_seed(0)
    rounds = task["rounds"]
    if task["kind"] == "inference":
        network = create_model("gapnet-pl").eval()
        x = benchmark_image(task["size"])
        if task["variant"] == "eager NCHW fp32":
            fn = lambda: network(normalize(x))  # noqa: E731
        else:
            fast = FastGapNetPL(network, precision="bf16" if "bf16" in task["variant"] else "fp32",
                                compile_selu="compiled" in task["variant"])
            fn = lambda: fast(x)  # noqa: E731
        before = _status_mib("VmRSS")
        reset = _reset_peak()
        with torch.no_grad():
            timing = interleaved({"x": fn}, rounds)["x"]
    else:
        network = create_model("gapnet-pl").train()
        size, batch = task["size"], task["batch"]
        x = torch.rand(batch, 4, size, size)
        y = (torch.rand(batch, 13) > 0.7).float()
        optimiser = torch.optim.SGD(network.parameters(), lr=1e-4)

        def fn():
            optimiser.zero_grad(set_to_none=True)
            network.loss(network.forward_with_aux(x), y).backward()
            optimiser.step()

        before = _status_mib("VmRSS")
        reset = _reset_peak()
        timing = interleaved({"x": fn}, rounds)["x"]
    # Peak resident memory while the measured calls ran (VmHWM after the reset), else of the process.
    peak = _status_mib("VmHWM") if reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    before = before if before is not None else float("nan")
    return {**task, "best_s": round(timing["best_s"], 4), "median_s": round(timing["median_s"], 4),
            "rss_before_mib": round(before, 1), "peak_rss_mib": round(peak, 1),
            "peak_minus_before_mib": round(peak - before, 1),
            "peak_of": "the measured calls (VmHWM reset before them)" if reset else "the whole process (ru_maxrss)"}


def run_child(task: dict) -> dict:
    completed = subprocess.run([sys.executable, "-m", "protloc.bench.scaling", "--child", json.dumps(task)],
                               capture_output=True, text=True)
    if completed.returncode != 0:
        return {**task, "error": (completed.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def scaling_section(settings: Settings, progress: Progress) -> dict:
    sizes = (128, 256) if settings.quick else (1024, 2048, 3072, 4096)
    batches = (1, 2) if settings.quick else (1, 2, 4, 8)
    crop = 64 if settings.quick else 256
    rounds = 1 if settings.quick else 5
    inference_rows = []
    for size in sizes:
        variants = ("eager NCHW fp32", "fast fp32", "fast bf16") + (() if settings.quick else ("fast bf16 + compiled SELU",))
        for variant in variants:
            inference_rows.append(run_child({"kind": "inference", "size": size, "variant": variant, "rounds": rounds}))
            progress.step(f"scaling {variant} {size}")
    training_rows = []
    for batch in batches:
        training_rows.append(run_child({"kind": "training", "size": crop, "batch": batch, "rounds": rounds}))
        progress.step(f"scaling training batch {batch}")
    from protloc.inference.gapnet_pl_fast import gflop

    for row in inference_rows:
        if "best_s" in row:
            row["gflop_per_s"] = round(gflop(row["size"], row["size"]) / row["best_s"], 1)
    for row in training_rows:
        if "best_s" in row:
            row["samples_per_s"] = round(row["batch"] / row["best_s"], 2)
    return {"inference": inference_rows, "training": training_rows,
            "memory": "peak resident set of a fresh process per point while the timed calls ran (Linux VmHWM, "
                      "reset after set-up), which includes the resident libraries, weights and input "
                      "(rss_before); random GapNet-PL weights (timing does not depend on them)",
            "training_crop": crop}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="one scaling point (used by protloc bench)")
    parser.add_argument("--child", required=True)
    print(json.dumps(child(json.loads(parser.parse_args().child))))
