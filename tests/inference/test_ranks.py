"""``protloc predict`` split across ranks: a rank that dies is reported in bounded time instead of
the others waiting forever at the merge (issue 11, defect 7)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from protloc.model_file import save_model_file
from protloc.data.synth.dataset import generate_dataset
from protloc.labels import HPA13
from protloc.models import create_model


@pytest.fixture(scope="module")
def data_and_model(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ranks")
    generate_dataset(root / "data", samples=8, size=96, seed=3, workers=1)
    torch.manual_seed(0)
    model = root / "tiny.pt"
    save_model_file(model, create_model("gapnet-pl"), model_name="gapnet-pl", classes=HPA13.classes,
                    label_set="hpa13", crop_size=64, thresholds=[0.5] * 13)
    return root / "data", model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_a_dead_rank_is_reported_within_the_timeout(data_and_model, tmp_path):
    data, model = data_and_model
    out = tmp_path / "pred.csv"
    port = free_port()
    command = [sys.executable, "-m", "protloc", "predict", str(data), "--model", str(model), "--out", str(out),
               "--workers", "0", "--tta"]

    def start(rank: int) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PROTLOC_RANK_TIMEOUT": "4"}
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    rank0, rank1 = start(0), start(1)
    try:
        alive = tmp_path / "pred.csv.journal.csv.ranks" / "1.alive"
        deadline = time.monotonic() + 120
        while not alive.exists():
            assert rank1.poll() is None and time.monotonic() < deadline, rank1.communicate()
            time.sleep(0.05)
        rank1.send_signal(signal.SIGKILL)  # dies mid-share, as under kill -9 or a lost node
        rank1.wait()
        assert not (tmp_path / "pred.csv.journal.csv.ranks" / "1.done").exists()
        started = time.monotonic()
        _, err = rank0.communicate(timeout=240)
    finally:
        for process in (rank0, rank1):
            if process.poll() is None:
                process.kill()
    assert rank0.returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("protloc: error: rank 1 stopped") and "PROTLOC_RANK_TIMEOUT=4" in last
    assert "Traceback" not in err
    assert time.monotonic() - started < 120  # bounded: the timeout plus rank 0's own share
    assert not out.exists()  # nothing merged from an unfinished rank
    assert (tmp_path / "pred.csv.journal.csv.rank0").is_file()  # rank 0's rows are kept for the rerun
