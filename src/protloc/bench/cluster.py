"""``protloc bench --sections cluster``: the same fields through the single-process path and Dask clusters.

The fields: ``--fields`` (64) real-sized fields (``--size``, 2048²) made from the real HPA field of
../shared/real-hpa/hpa-download (its 8 flips/rotations x circular shifts, so no two are the same
pixels; a synthetic field when it is absent or another size is asked), written as HPA-style channel
JPEGs. Each path predicts all of them into a CSV:

- ``single process``: ``protloc predict`` as today (``run_batch_prediction``, 2 decoding workers);
- ``local:1``, ``local:2``: a LocalCluster of 1 / 2 worker processes sharing the cores;
- ``scheduler + 2 workers``: ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1.

The single-process path runs first and last (its mean is the baseline, the two runs show how the
machine's load moved), the clusters in between; a cluster's start-up is timed apart from its run
(a cluster is started once per job, its cost does not grow with the fields). The scheduler's overhead
per shard: 200 empty tasks through the loopback scheduler (the same submission loop), and in the real
runs the client's wall time beyond the busiest worker's shard seconds (costs paid once per run). Every output is
checked against the single-process one (same rows, probabilities within 1e-6).
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from protloc.bench.common import Progress, Settings

SHARD = 16  # the default for 2048² fields (protloc.distributed.shards); 64 fields = 4 shards


def _fields(folder: Path, count: int, size: int) -> str:
    from PIL import Image

    from protloc.bench.cells import REAL_FIELD
    from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL

    if size == 2048 and REAL_FIELD.exists():
        from protloc.data.formats import discover, read

        entry = discover([REAL_FIELD])[0]
        base, what = read(entry).image, f"the real HPA field {entry.id}"
    else:
        from protloc.data.synth.dataset import draw_sample

        base, what = draw_sample(0, 0, size, size)[1].astype(np.float32), f"a synthetic {size}² field"
    scale = 255.0 / max(1.0, float(base.max()))
    rng = np.random.default_rng(0)
    for i in range(count):
        field = np.rot90(base, k=i % 4, axes=(1, 2))
        field = field[:, ::-1] if (i // 4) % 2 else field
        field = np.roll(field, tuple(rng.integers(0, size, 2)), axis=(1, 2))
        for c, channel in enumerate(CHANNELS):
            plane = np.clip(field[c] * scale, 0, 255).astype(np.uint8)
            Image.fromarray(plane).save(folder / f"field-{i:03d}_{COLOUR_OF_CHANNEL[channel]}.jpg", quality=95)
    return f"{count} fields of {size}² made from {what} (flips, rotations, circular shifts), channel JPEGs"


def _model(settings: Settings, folder: Path) -> tuple[str, str]:
    if settings.model:
        return settings.model, settings.model
    try:
        from protloc.inference.predictor import resolve_model_file

        return str(resolve_model_file("pretrained")), "the imported pretrained GapNet-PL"
    except Exception:  # not imported here: random weights time the same
        import torch

        from protloc.model_file import save_model_file
        from protloc.labels import HPA13
        from protloc.models import create_model

        torch.manual_seed(0)
        path = folder / "random.pt"
        save_model_file(path, create_model("gapnet-pl"), model_name="gapnet-pl", classes=HPA13.classes,
                        label_set="hpa13", crop_size=1024, thresholds=[0.5] * 13)
        return str(path), "GapNet-PL with random weights (no imported pretrained weights found)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _LoopbackScheduler:
    """``dask scheduler`` + two ``dask worker`` processes (1 thread each: the two cores between them)."""

    def __init__(self, logs: Path, workers: int = 2):
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]) + os.pathsep
               + os.environ.get("PYTHONPATH", "")}
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        start = time.perf_counter()
        self.processes = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port",
                                            self.address.rsplit(":", 1)[1], "--no-dashboard"],
                                           stdout=open(logs / "scheduler.log", "wb"), stderr=subprocess.STDOUT, env=env)]
        self.processes += [subprocess.Popen([sys.executable, "-m", "dask", "worker", self.address, "--nthreads", threads,
                                             "--name", f"w{i}", "--no-dashboard"],
                                            stdout=open(logs / f"worker{i}.log", "wb"), stderr=subprocess.STDOUT, env=env)
                           for i in range(workers)]
        from distributed import Client

        while True:
            try:
                with Client(self.address, timeout="5s") as client:
                    client.wait_for_workers(workers, timeout=120)
                    break
            except OSError:
                time.sleep(0.2)
        self.start_s = time.perf_counter() - start

    def close(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _noop(i):
    return i


def _task_overhead(address: str, tasks: int = 200) -> float:
    """Seconds per empty task through the scheduler, submitted as the runner does (a window of futures)."""
    from distributed import Client, as_completed

    with Client(address) as client:
        client.submit(_noop, -1, pure=False).result()
        start = time.perf_counter()
        seq = as_completed([client.submit(_noop, i, pure=False) for i in range(min(6, tasks))])
        submitted = min(6, tasks)
        for future in seq:
            future.result()
            if submitted < tasks:
                seq.add(client.submit(_noop, submitted, pure=False))
                submitted += 1
        return (time.perf_counter() - start) / tasks


def _same(out: Path, baseline: Path) -> bool:
    import csv

    with open(out, newline="") as a, open(baseline, newline="") as b:
        x, y = list(csv.reader(a)), list(csv.reader(b))
    if len(x) != len(y) or x[0] != y[0]:
        return False
    for r, s in zip(x[1:], y[1:]):
        if r[0] != s[0] or any(abs(float(p) - float(q)) > 1e-6 for p, q in zip(r[1:14], s[1:14])):
            return False
    return True


def cluster_section(settings: Settings, progress: Progress) -> dict:
    from protloc.distributed import parse_cluster, predict
    from protloc.distributed.clusters import start_local
    from protloc.inference.batch import run_batch_prediction

    count = settings.fields or (8 if settings.quick else 64)
    size = settings.size or (256 if settings.quick else 2048)
    shard = max(1, count // 4) if settings.quick or size != 2048 else SHARD
    work = Path(tempfile.mkdtemp(prefix="protloc-bench-cluster-"))
    try:
        data = work / "fields"
        data.mkdir()
        fields = _fields(data, count, size)
        model, weights = _model(settings, work)
        progress.step("fields written")
        runs: dict[str, list] = {}

        def single(tag: str) -> None:
            start = time.perf_counter()
            run_batch_prediction([str(data)], model, work / f"{tag}.csv", workers=2, progress=False)
            runs.setdefault("single process", []).append({"run_s": time.perf_counter() - start,
                                                          "out": str(work / f"{tag}.csv")})
            progress.step(f"single process ({tag})")

        def on_cluster(name: str, address: str, start_s: float, workers: int) -> None:
            stats: dict = {}
            out = work / f"{name.replace(' ', '_').replace(':', '')}.csv"
            start = time.perf_counter()
            predict(parse_cluster(address), [str(data)], model, out, shard_size=shard, progress=False, stats=stats)
            wall = time.perf_counter() - start
            busiest = max(sum(s["seconds"] for s in stats["shards"] if s["worker"] == w)
                          for w in {s["worker"] for s in stats["shards"]})
            runs[name] = [{"run_s": wall, "start_s": start_s, "workers": workers, "out": str(out),
                           "shards": len(stats["shards"]), "merge_s": stats["merge_s"],
                           "busiest_worker_s": busiest,
                           "seconds_per_field_per_worker": statistics.median(s["seconds"] / s["images"]
                                                                             for s in stats["shards"]),
                           "beyond_busiest_worker_s": wall - busiest}]
            progress.step(name)

        single("single-first")
        for n in (1, 2):
            start = time.perf_counter()
            local, _ = start_local(parse_cluster(f"local:{n}"))
            started = time.perf_counter() - start
            try:
                on_cluster(f"local:{n}", local.scheduler_address, started, n)
            finally:
                local.close()
        loopback = _LoopbackScheduler(work)
        try:
            on_cluster("scheduler + 2 workers", loopback.address, loopback.start_s, 2)
            overhead = _task_overhead(loopback.address, 50 if settings.quick else 200)
        finally:
            loopback.close()
        progress.step("empty tasks")
        single("single-last")
        baseline_s = statistics.mean(r["run_s"] for r in runs["single process"])
        baseline_out = Path(runs["single process"][0]["out"])
        rows = []
        for name, entries in runs.items():
            for r in entries:
                rows.append({"path": name, "run_s": round(r["run_s"], 2), "start_s": round(r.get("start_s", 0.0), 2),
                             "fields_per_s": round(count / r["run_s"], 3),
                             "ratio_vs_single": round(baseline_s / r["run_s"], 2),
                             "ratio_with_start": round(baseline_s / (r["run_s"] + r.get("start_s", 0.0)), 2),
                             "same_rows": _same(Path(r["out"]), baseline_out),
                             **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()
                                if k in ("shards", "merge_s", "busiest_worker_s", "seconds_per_field_per_worker",
                                         "beyond_busiest_worker_s", "workers")}})
        return {"fields": fields, "count": count, "size": size, "shard_size": shard, "weights": weights,
                "baseline_s": round(baseline_s, 2), "rows": rows, "empty_task_s": round(overhead, 5),
                "uptime": _uptime(), "projection": _projection(rows, overhead, count)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _projection(rows: list[dict], task_s: float, count: int) -> dict:
    """Expected hours for 10⁵ and 10⁶ fields on N workers, from this run's figures (assumptions in
    the returned text)."""
    local1 = next(r for r in rows if r["path"] == "local:1")
    per_field = local1["run_s"] / count  # a worker of this machine's cores, shards, its own overhead included
    # the median run's merge: one sync per run, so a single slow sync on a loaded disk is not a per-row cost
    merge_per_field = statistics.median(r["merge_s"] for r in rows if "merge_s" in r) / count
    start = max(r["start_s"] for r in rows)
    table = []
    for n in (1, 2, 8, 32, 128):
        hours = []
        for fields in (10**5, 10**6):
            shards = fields / SHARD
            seconds = fields * per_field / n + shards * task_s + fields * merge_per_field + start
            hours.append(round(seconds / 3600, 1))
        table.append({"workers": n, "hours_1e5": hours[0], "hours_1e6": hours[1]})
    return {"per_field_s": round(per_field, 3), "merge_per_field_s": round(merge_per_field, 5),
            "start_s": round(start, 1), "table": table,
            "assumptions": "each worker like local:1 here (all of this machine's cores, measured per field with its "
                           "shards' overhead); workers add linearly (the shared filesystem and the network keep up: "
                           "a 2048² field is ~1 MB of JPEGs); the scheduler handles shards one after another at the "
                           "measured empty-task cost; the merge is one process writing rows at the measured rate; "
                           "one cluster start; no queue wait for jobs, no failed nodes"}


def cluster_markdown(s: dict) -> list[str]:
    from protloc.bench.common import markdown_table as _table

    out = [f"### Cluster: {s['fields']}", "",
           f"Weights: {s['weights']}; shards of {s['shard_size']}; baseline: the single-process path (mean of its "
           f"first and last run, {s['baseline_s']} s); ratio = baseline / run (start-up of the cluster apart; "
           f"'with start' adds it). `uptime` at the end: {s['uptime']}.", "",
           "On a machine loaded beyond its cores, more worker processes also win a larger share of the contended "
           "cores from the other users' processes: ratios above 1 measured under load are not a speed-up the "
           "idle machine shows (there the single process already uses every core; expect about 1x).", ""]
    rows = [[r["path"], r["run_s"], r["start_s"], r["fields_per_s"], f"**{r['ratio_vs_single']}x**",
             f"{r['ratio_with_start']}x", r.get("beyond_busiest_worker_s", ""), r.get("merge_s", ""), r["same_rows"]]
            for r in s["rows"]]
    out += [_table(["path", "run s", "cluster start s", "fields/s", "ratio", "ratio with start",
                    "client beyond busiest worker s", "merge s", "same rows"], rows), ""]
    out += [f"Scheduler overhead per shard: {s['empty_task_s'] * 1000:.1f} ms (an empty task through the loopback "
            "scheduler, submitted as the runner submits shards). 'Client beyond busiest worker': the run's wall time "
            "minus the shard seconds of its busiest worker: connecting, listing, the client's model load, the merge "
            "and the last shards' imbalance, paid once per run.", ""]
    p = s["projection"]
    out += [f"Expected hours ({p['per_field_s']} s per field per worker, merge {p['merge_per_field_s']} s per field, "
            f"start {p['start_s']} s). Assumptions: {p['assumptions']}.", ""]
    out += [_table(["workers", "10⁵ fields (h)", "10⁶ fields (h)"],
                   [[r["workers"], r["hours_1e5"], r["hours_1e6"]] for r in p["table"]]), ""]
    return out
