"""What the Dask tests share: a loopback scheduler with two worker processes, the tiny data set, the
single-process outputs, and the row-for-row comparison."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import protloc
from protloc.cli import main

SRC = str(Path(protloc.__file__).resolve().parents[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    # the workers import this tree's protloc; one torch thread each (two workers share the test machine)
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PROTLOC_TORCH_THREADS": "1"}


class LoopbackCluster:
    """``dask scheduler`` + two ``dask worker`` processes (no nanny: SIGKILL kills the worker itself)."""

    def __init__(self, tmp: Path):
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        self.logs = tmp
        self.scheduler = self._start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port",
                                                   self.address.rsplit(":", 1)[1], "--no-dashboard"])
        self.workers = [self._start(f"worker{i}", ["worker", self.address, "--nthreads", "1", "--no-nanny",
                                                   "--name", f"w{i}", "--no-dashboard"]) for i in range(2)]
        self.wait_for(2)

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=_env())

    def wait_for(self, n: int, timeout: float = 90.0) -> None:
        from distributed import Client

        deadline = time.monotonic() + timeout
        while True:
            try:
                with Client(self.address, timeout="5s") as client:
                    client.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))
                    return
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise

    def close(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                process.terminate()
        for process in [*self.workers, self.scheduler]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = LoopbackCluster(tmp_path_factory.mktemp("dask-logs"))
    yield started
    started.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from protloc.data.synth.dataset import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, samples=10, size=96, seed=3, workers=1)
    return out


@pytest.fixture(scope="module")
def single(data_dir, model_file, tmp_path_factory) -> Path:
    """The single-process outputs every cluster run is compared with."""
    out = tmp_path_factory.mktemp("single")
    for name in ("pred.csv", "pred.jsonl", "pred.parquet"):
        assert main(["predict", str(data_dir), "--model", str(model_file), "--out", str(out / name),
                     "--workers", "0"]) == 0
    assert main(["cells", str(data_dir), "--model", str(model_file), "--out", str(out / "cells.csv")]) == 0
    return out


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def assert_same_rows(got: Path, want: Path) -> None:
    """Row for row, in the same order: ids and text equal, numbers within 1e-6."""
    a, b = read_rows(got), read_rows(want)
    assert [r.get("id", r.get("image_id")) for r in a] == [r.get("id", r.get("image_id")) for r in b]
    assert len(a) == len(b) and a and list(a[0]) == list(b[0])
    for x, y in zip(a, b):
        for key in y:
            try:
                assert float(x[key]) == pytest.approx(float(y[key]), abs=1e-6), key
            except (TypeError, ValueError):
                assert x[key] == y[key], key
