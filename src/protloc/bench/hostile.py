"""The two resource cases of the hostile run (issue 23), each beside a baseline measured in the same run.

- Four 1x100000 PNGs (one sample) through ``protloc predict``: peak memory (max RSS of the process)
  and time, against a square sample with the same number of pixels (316x316).
- ``protloc predict --cells --masks`` on a 1024x1024 field whose mask holds 65,535 cells of 3x3
  pixels: time and peak memory, against the same field with 16 cells.

Each command runs in its own process (``python -m protloc ...``), so the peak is that command's.
Run: ``python -m protloc.bench.hostile [--model FILE] [--out benchmarks/results/hostile-cpu.json]``
(default model: the imported pretrained weights, else a random GapNet-PL).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Runs a command and prints its peak memory (the children's max RSS, kB on Linux) as the last line.
_WRAPPER = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def measure(args: list[str]) -> dict:
    """Seconds and peak MB of ``python -m protloc ARGS`` in a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _WRAPPER, sys.executable, "-m", "protloc", *args],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"protloc {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    peak_kb = int(done.stderr.strip().splitlines()[-1])
    return {"seconds": round(seconds, 2), "peak_mb": round(peak_kb / 1024, 1)}


def _pngs(folder: Path, name: str, height: int, width: int, seed: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for colour in ("blue", "red", "yellow", "green"):
        Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8)).save(folder / f"{name}_{colour}.png")
    return folder


def _cell_mask(folder: Path, name: str, size: int, cell: int) -> Path:
    """Square cells of ``cell - 1`` px with one background pixel between them (at most 65,535 ids)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    per_side = size // cell
    ids = np.arange(per_side * per_side, dtype=np.int64).reshape(per_side, per_side) + 1
    labels = np.kron(ids, np.ones((cell, cell), np.int64))
    labels[labels > 65535] = 0
    edge = np.arange(size) % cell == cell - 1
    labels[edge[:, None] | edge[None, :]] = 0
    Image.fromarray(labels.astype(np.uint16)).save(folder / f"{name}_cellmask.png")
    return folder


def run(model: str, work: Path) -> dict:
    thin = _pngs(work / "thin", "thin", 1, 100_000, 0)
    square = _pngs(work / "square", "square", 316, 316, 0)
    field = _pngs(work / "field", "field", 1024, 1024, 1)
    many = _cell_mask(work / "masks-many", "field", 1024, 4)
    few = _cell_mask(work / "masks-few", "field", 1024, 256)
    common = ["--model", model, "--workers", "0"]
    results = {
        "thin_1x100000": measure(["predict", str(thin), "--out", str(work / "thin.csv"), *common]),
        "square_316x316": measure(["predict", str(square), "--out", str(work / "square.csv"), *common]),
        "cells_65535": measure(["predict", "--cells", str(field), "--masks", str(many), "--out", str(work / "many.csv"),
                                "--model", model]),
        "cells_16": measure(["predict", "--cells", str(field), "--masks", str(few), "--out", str(work / "few.csv"),
                             "--model", model]),
    }
    import pandas as pd

    results["cells_65535"]["cells"] = int(len(pd.read_csv(work / "many.csv")))
    results["cells_16"]["cells"] = int(len(pd.read_csv(work / "few.csv")))
    results["load"] = os.getloadavg()[0]
    return results


def markdown(results: dict) -> str:
    thin, square = results["thin_1x100000"], results["square_316x316"]
    many, few = results["cells_65535"], results["cells_16"]
    return "\n".join([
        f"Hostile resources (issue 23); load average {results['load']:.1f} on the machine during the run.",
        "",
        "| case | seconds | peak MB | baseline (same run) | seconds | peak MB |",
        "|---|---:|---:|---|---:|---:|",
        f"| predict, four 1x100000 PNGs | {thin['seconds']} | {thin['peak_mb']} | 316x316 (same pixels) | "
        f"{square['seconds']} | {square['peak_mb']} |",
        f"| predict --cells, {many['cells']:,} cells of 3x3 px, 1024² | {many['seconds']} | {many['peak_mb']} | "
        f"same field, {few['cells']} cells | {few['seconds']} | {few['peak_mb']} |",
        "",
        "Targets: peak <= 500 MB for the thin image; <= 30 s for 65,535 cells (times include the "
        "interpreter's start and the imports).",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protloc.bench.hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pretrained")
    parser.add_argument("--out", default="hostile-bench.json")
    args = parser.parse_args(argv)
    model = args.model
    if model == "pretrained":
        from protloc.pretrained.fetch import resolve_pretrained
        from protloc.errors import ProtlocError

        try:
            resolve_pretrained()
        except ProtlocError:
            import torch

            from protloc.model_file import save_model_file
            from protloc.labels import HPA13
            from protloc.models import create_model

            torch.manual_seed(0)
            model = str(Path(tempfile.mkdtemp()) / "random.pt")
            save_model_file(model, create_model("gapnet-pl"), model_name="gapnet-pl", classes=HPA13.classes,
                            label_set="hpa13", crop_size=1024, thresholds=[0.5] * 13)
    from protloc.bench.common import machine_info

    with tempfile.TemporaryDirectory() as folder:
        results = run(model, Path(folder))
    results["model"] = args.model
    document = {"machine": machine_info(), "sections": {"hostile": results}}  # the layout of `protloc bench`'s files
    Path(args.out).write_text(json.dumps(document, indent=1) + "\n")
    Path(args.out).with_suffix(".md").write_text(markdown(results) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
