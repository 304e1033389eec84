"""Multi-process training: the same `protloc train` command under torchrun, two CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_two_gloo_processes(tmp_path):
    from protloc.data.synth.dataset import generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, samples=24, size=96, seed=3, workers=1, progress=False)
    runs = tmp_path / "runs"
    run = runs / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "protloc", "train", "--model", "gapnet-pl", "--data", str(data), "--out", str(run),
        "--epochs", "1", "--crop-size", "64", "--batch-size", "4", "--device", "cpu", "--workers", "0",
        "--cache", str(tmp_path / "cache"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=280, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in runs.iterdir()] == ["ddp"]  # one run directory, written by rank 0 only
    assert done.stdout.count("model: ") == 1
    for name in ("config.yaml", "metrics.csv", "model.pt", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "environment.json").read_text())["world_size"] == 2
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # header + one epoch
    # validation predictions were gathered from both ranks: every validation image once
    splits = json.loads((run / "splits.json").read_text())["splits"]
    with np.load(run / "checkpoints" / "best_val_predictions.npz") as predictions:
        assert sorted(predictions["positions"].tolist()) == list(range(len(splits["val"])))
