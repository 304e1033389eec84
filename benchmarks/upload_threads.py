"""A `protloc serve` (cells on, 2 lanes) under a client loop, its CPU per upload split by thread.

    PYTHONPATH=src python benchmarks/upload_threads.py --model gapnet-pl.pt --precision auto --clients 1 --uploads 24

Python's threads get their names as OS thread names (the server runs through this file, which sets
them with prctl), so /proc/PID/task/*/stat gives each one's CPU: the lanes
(``protloc-prediction-worker``: forward pass, per-cell step, outlines, label PNG, database), the
segmentation threads, OpenMP's worker threads (started by a lane: ``omp``), the event loop
(``main``: HTTP), AnyIO's threads (the upload's endpoint: multipart, store, decoding) and the
picture thread. The uploads are the platform benchmark's (1024² centre of the real field).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path


def _serve_with_named_threads(argv: list[str]) -> None:
    """``protloc serve ...`` with each Python thread's name set as its OS thread name."""
    import runpy

    libc = ctypes.CDLL(None)
    names = Path(os.environ["PROTLOC_THREAD_NAMES"])
    original = threading.Thread._bootstrap_inner

    def named(self):
        libc.prctl(15, self.name[:15].encode(), 0, 0, 0)  # PR_SET_NAME
        with names.open("a") as handle:
            handle.write(f"{threading.get_native_id()} {self.name}\n")
        return original(self)

    threading.Thread._bootstrap_inner = named
    sys.argv = ["protloc", *argv]
    runpy.run_module("protloc", run_name="__main__")


def _cpu_by_thread(pid: int) -> dict[str, int]:
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--uploads", type=int, default=24)
    args = parser.parse_args()
    import httpx

    import protloc.bench.platform as platform
    from protloc.bench.platform import Server, predict, throughput, wait_idle
    from protloc.bench.platform_inputs import field_files, field_sample, find_field, tiff_payload

    tmp = Path(tempfile.mkdtemp(prefix="upload-threads-"))
    names = tmp / "threads.txt"
    os.environ["PROTLOC_THREAD_NAMES"] = str(names)
    image = field_sample(tmp, field_files(tmp, False)[0]) if find_field() is not None else None
    payload, sample = tiff_payload(tmp, 1024, image)
    plain = subprocess.Popen

    def popen(command, *rest, **options):  # the server through this file, to name its threads
        if command[1:3] == ["-m", "protloc"]:
            command = [command[0], __file__, "--serve", *command[3:]]
        return plain(command, *rest, **options)

    platform.subprocess.Popen = popen
    server = Server("server", ["--precision", args.precision], args.model, tmp / "data")
    try:
        server.wait_ready(httpx)
        with httpx.Client(base_url=server.url, timeout=600) as client:
            for _ in range(3):  # model, compiled SELU, first passes
                predict(client, [("warm.tif", payload)])
            wait_idle(client, 0.5, pictures=True)
            before, load = _cpu_by_thread(server.process.pid), os.getloadavg()[0]
            row = throughput(server, payload, args.clients, args.uploads, httpx)
            after = _cpu_by_thread(server.process.pid)
    finally:
        server.stop()
    known = dict(line.split(" ", 1) for line in names.read_text().splitlines())
    tick, count = os.sysconf("SC_CLK_TCK"), row["requests"]
    groups: collections.Counter = collections.Counter()
    for tid, used in after.items():
        name = ("main" if tid == str(server.process.pid) else
                re.sub(r"[-_]?\d+( \(.*\))?$", "", known[tid]) if tid in known else "omp")
        groups[name] += (used - before.get(tid, 0)) / tick / count
    print(json.dumps({"sample": sample, "precision": args.precision, "clients": args.clients, **row,
                      "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
                      "core_s_per_upload": round(sum(groups.values()), 4),
                      "by_thread": {name: round(value, 4) for name, value in groups.most_common() if value > 0}}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        _serve_with_named_threads(sys.argv[2:])
    else:
        main()
