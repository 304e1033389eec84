"""The platform section: ``protloc serve`` processes side by side, today's path against the old one.

The baseline is the platform as it was (``--render-eagerly --lanes 1``: full-size composite, channels
and maps drawn before a submission is done, by one worker thread); the other servers run
probabilities first (pictures at display size, on first view or when the worker is idle; two lanes),
with cells (the default: one whole-image pass gives the probabilities and the cells) and without
(``--no-cells``: the covering patches alone). All run at
once, each in its own process, with the same model and data, and every measurement alternates between
them, so a change of load on a shared machine hits them alike. Measured (issue 15's targets):

* ``field``: one real 2048² HPA field (four JPEGs) from the POST to the probabilities, and to the
  result page with every picture loaded (six connections, as a browser);
* ``throughput``: 1024² uploads with several clients, requests per second: the centre of the real
  field as one four-plane TIFF stating its pixel size (a field with cells, as a lab uploads; random
  noise, where segmentation finds hundreds of fragments, only without ../shared or with --quick);
* ``list``: 200 concurrent ``GET /api/v1/predictions``, latency percentiles;
* ``memory``: the server's resident memory over rounds of 50 uploads (settled after each round).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from protloc.bench.common import Progress, Settings
from protloc.bench.platform_inputs import field_files, field_sample, find_field, tiff_payload

# Clients wait with long polls (``?wait=``): answered when the submission is finished, one request
# instead of one every few tens of milliseconds.
WAIT_SECONDS = 30
# With cells on (the default) a GapNet-PL submission's probabilities come from the cells' one
# whole-image pass; "no cells" is the patch pass alone (``--no-cells``), the platform without cells.
VARIANTS = {"today (eager pictures, baseline)": ["--render-eagerly", "--lanes", "1"], "probabilities first": [],
            "probabilities first, no cells": ["--no-cells"]}
MEMORY_VARIANT = "probabilities first"


def resident_mib(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


class Server:
    """``protloc serve`` in its own process, as a facility runs it."""

    def __init__(self, name: str, flags: list[str], model: str, folder: Path) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.name, self.url = name, f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "protloc", "serve", "--model", model, "--data-dir", str(folder), "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, httpx) -> None:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"{self.name}: the server did not start: {(self.process.communicate()[1] or '')[-300:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def predict(client, files: list[tuple[str, bytes]]) -> tuple[str, float]:
    """POST a sample; (id, seconds until GET says done: a long poll, answered when it is)."""
    start = time.perf_counter()
    response = client.post("/api/v1/predictions", files=[("files", item) for item in files])
    response.raise_for_status()
    sid = response.json()["id"]
    while True:
        data = client.get(f"/api/v1/predictions/{sid}", params={"wait": WAIT_SECONDS}).json()
        if data["status"] == "done":
            return sid, time.perf_counter() - start
        if data["status"] == "failed":
            raise RuntimeError(f"prediction failed: {data['error']}")


def page_complete(client, sid: str) -> None:
    """The result page and every picture on it, six at a time (a browser's connections per host)."""
    from concurrent.futures import ThreadPoolExecutor

    page = client.get(f"/submissions/{sid}")
    page.raise_for_status()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page.text)

    def fetch(url: str) -> int:
        answer = client.get(url)
        answer.raise_for_status()
        return len(answer.content)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(fetch, sources))
    return len(sources)


def field_rounds(servers, clients, files, rounds: int, progress: Progress, reference=None) -> list[dict]:
    times: dict[str, dict[str, list[float]]] = {s.name: {"probabilities": [], "page": [], "pictures": []} for s in servers}
    floor: list[float] = []
    for index in range(rounds):
        if reference is not None:  # the same field through Predictor.predict_proba in this process: the floor
            start = time.perf_counter()
            reference()
            floor.append(time.perf_counter() - start)
        order = servers if index % 2 == 0 else servers[::-1]
        for server in order:
            client = clients[server.name]
            start = time.perf_counter()
            sid, seconds = predict(client, files)
            pictures = page_complete(client, sid)
            times[server.name]["probabilities"].append(seconds)
            times[server.name]["page"].append(time.perf_counter() - start)
            times[server.name]["pictures"].append(pictures)
        progress.step(f"platform field {index + 1}/{rounds}")
    rows = [{"variant": "Predictor.predict_proba alone (no server, no upload, no decoding)",
             "probabilities_best_s": round(min(floor), 3), "probabilities_median_s": round(float(np.median(floor)), 3),
             "page_best_s": None, "page_median_s": None, "pictures_on_page": 0}] if floor else []
    return rows + [{"variant": name, "probabilities_best_s": round(min(t["probabilities"]), 3),
             "probabilities_median_s": round(float(np.median(t["probabilities"])), 3),
             "page_best_s": round(min(t["page"]), 3), "page_median_s": round(float(np.median(t["page"])), 3),
             "pictures_on_page": t["pictures"][0]} for name, t in times.items()]


def throughput(server, payload: bytes, clients: int, requests: int, httpx) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()

    def work(count: int) -> None:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            for _ in range(count):
                _, latency = predict(client, [("sample.tif", payload)])
                with lock:
                    latencies.append(latency)

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(requests // clients,)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"requests": len(latencies), "per_s": round(len(latencies) / wall, 2),
            "latency_p50_s": round(float(np.percentile(latencies, 50)), 3)}


async def raw_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    """One GET on a fresh connection with a minimal HTTP/1.1 client (asyncio streams): httpx's
    AsyncClient spends ~12 ms of CPU per request on this machine, three times what the server spends
    on a list, so 200 of them would measure the client. (status, body)."""
    import asyncio

    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await reader.read()  # the server closes after its answer
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def list_burst(server, concurrent: int) -> dict:
    """``concurrent`` simultaneous ``GET /api/v1/predictions`` on their own connections; each answer is
    checked (200, JSON with items)."""
    import asyncio
    import json
    from urllib.parse import urlsplit

    address = urlsplit(server.url)

    async def burst() -> list[float]:
        async def one() -> float:
            start = time.perf_counter()
            status, body = await raw_get(address.hostname, address.port, "/api/v1/predictions")
            seconds = time.perf_counter() - start
            assert status == 200 and json.loads(body)["items"], f"the list answered {status}: {body[:200]!r}"
            return seconds

        return await asyncio.gather(*(one() for _ in range(concurrent)))

    cpu = time.process_time()
    latencies = asyncio.run(burst())
    return {"p50_s": round(float(np.percentile(latencies, 50)), 3), "p95_s": round(float(np.percentile(latencies, 95)), 3),
            "max_s": round(max(latencies), 3), "client_cpu_ms_per_request": round((time.process_time() - cpu) * 1000 / concurrent, 2)}


def wait_idle(client, seconds: float = 1.0, pictures: bool = False, timeout: float = 300.0) -> None:
    """Until the server's queue is empty and nothing is running (and, with ``pictures``, no picture
    waits to be drawn), then ``seconds`` more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = client.get("/api/v1/predictions", params={"status": "queued", "limit": 1}).json()["total"]
        running = client.get("/api/v1/predictions", params={"status": "running", "limit": 1}).json()["total"]
        drawing = client.get("/api/v1/worker").json().get("pictures_waiting", 0) if pictures else 0
        if listed == 0 and running == 0 and drawing == 0:
            break
        time.sleep(0.5)
    time.sleep(seconds)


def memory_rounds(server, client, payload: bytes, rounds: int, per_round: int, progress: Progress) -> dict:
    """Resident memory over ``rounds`` rounds of ``per_round`` uploads, after one uncounted warm-up
    round (the lanes' and threads' first allocations, the caches filling: growth that stops)."""
    from concurrent.futures import ThreadPoolExecutor

    pid = server.process.pid
    settled, peaks = [], []
    for index in range(rounds + 1):
        peak = [resident_mib(pid)]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], resident_mib(pid))

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: client.post("/api/v1/predictions", files=[("files", ("s.tif", payload))]).raise_for_status(),
                          range(per_round)))
        # Settled: the round's predictions and their pictures all done (the picture thread starts
        # drawing once the server is quiet, and a half-drawn map's buffers are no leak).
        wait_idle(client, seconds=2.0, pictures=True)
        done.set()
        watcher.join()
        settled.append(round(resident_mib(pid), 1))
        peaks.append(round(peak[0], 1))
        progress.step(f"platform memory {server.name[:12]} {index}/{rounds}")
    warm_up, settled, peaks = settled[0], settled[1:], peaks[1:]
    growth = (settled[-1] - settled[0]) / settled[0] * 100
    spread = (max(settled) - min(settled)) / min(settled) * 100
    return {"warm_up_settled_mib": warm_up, "settled_mib": settled, "peak_mib": peaks,
            "growth_first_to_last_pct": round(growth, 1), "spread_pct": round(spread, 1)}


def platform_section(settings: Settings, progress: Progress) -> dict:
    try:
        import httpx
    except ImportError as exc:
        return {"skipped": f"{exc.name} is not installed (pip install -e '.[dev]')"}

    quick = settings.quick
    with tempfile.TemporaryDirectory(prefix="protloc-bench-web-") as tmp:
        tmp = Path(tmp)
        model, weights = bench_model(settings, tmp)
        files, field = field_files(tmp, quick)
        size = 128 if quick else 1024
        image = field_sample(tmp, files)
        payload, sample = tiff_payload(tmp, size, image if find_field() is not None and not quick else None)
        servers = [Server(name, flags, model, tmp / f"data-{i}") for i, (name, flags) in enumerate(VARIANTS.items())]
        load_start = os.getloadavg()[0]
        try:
            for server in servers:
                server.wait_ready(httpx)
            clients = {s.name: httpx.Client(base_url=s.url, timeout=600) for s in servers}
            for server in servers:  # warm-up: model loading, the first forward pass
                predict(clients[server.name], [("warm.tif", payload)])
            from protloc.inference.predictor import load_model

            predictor = load_model(model)
            field_rows = field_rounds(servers, clients, files, 2 if quick else 3, progress,
                                      reference=lambda: predictor.predict_proba(image))
            del predictor, image
            levels = (1, 2) if quick else (1, 4)
            requests = 4 if quick else 32  # with 4 clients fewer are mostly ramp-up and drain
            # The baseline takes seconds per upload: half as many keep the section within minutes.
            baseline_requests = 4 if quick else 8
            through = {s.name: {} for s in servers}
            for level in levels:
                for server in servers:
                    # Every server quiet first: another's picture thread, drawing while it is idle,
                    # would be measured against this one.
                    for other in servers:
                        wait_idle(clients[other.name], seconds=0.5, pictures=True)
                    count = baseline_requests if server is servers[0] else requests
                    through[server.name][level] = throughput(server, payload, level, count, httpx)
            progress.step("platform throughput")
            for server in servers:  # the list on a quiet server: the uploads' pictures drawn first
                wait_idle(clients[server.name], seconds=0.5, pictures=True)
            lists = {s.name: list_burst(s, 20 if quick else 200) for s in servers}
            progress.step("platform list")
            rounds, per_round = (2, 5) if quick else (5, 50)
            # Memory over 250 uploads: today's path only (the baseline's full-size pictures would take
            # ten minutes, and the target is about today's path).
            memory = {s.name: memory_rounds(s, clients[s.name], payload, rounds, per_round, progress)
                      for s in servers if s.name == MEMORY_VARIANT}
            stats = {s.name: clients[s.name].get("/api/v1/worker").json() for s in servers}
            computed = {s.name: clients[s.name].get("/api/v1/models").json()["models"][0]["image_probabilities"]["description"]
                        for s in servers}
            for client in clients.values():
                client.close()
        finally:
            for server in servers:
                server.stop()
    base = servers[0].name
    baseline = next(row for row in field_rows if row["variant"] == base)
    for row in field_rows:
        row["probabilities_ratio"] = round(baseline["probabilities_best_s"] / row["probabilities_best_s"], 2)
        row["page_ratio"] = round(baseline["page_best_s"] / row["page_best_s"], 2) if row["page_best_s"] else None
    return {
        "field": field, "weights": weights, "load_average_at_start": round(load_start, 2),
        "field_rows": field_rows,
        "throughput": {"sample": sample, "requests_per_level": requests,
                       "baseline_requests_per_level": baseline_requests,
                       "rows": [{"variant": name, "clients": level, **row,
                                 "ratio": round(row["per_s"] / through[base][level]["per_s"], 2)}
                                for name, by_level in through.items() for level, row in by_level.items()]},
        "list": {"concurrent": 20 if quick else 200,
                 "rows": [{"variant": name, **row, "p95_ratio": round(lists[base]["p95_s"] / row["p95_s"], 2)}
                          for name, row in lists.items()]},
        "memory": {"rounds": rounds, "uploads_per_round": per_round, "sample": sample,
                   "rows": [{"variant": name, **row} for name, row in memory.items()]},
        "worker": stats,
        "image_probabilities": computed,
        "method": "both servers run at once, each `protloc serve` in its own process; measurements alternate between "
                  f"them; probabilities: POST until GET says done (long polls, `?wait={WAIT_SECONDS}`); page: "
                  "that, then the result page and all its pictures (6 connections)",
    }


def bench_model(settings: Settings, tmp: Path) -> tuple[str, str]:
    """The model both servers load: --model, the imported published weights, else random GapNet-PL weights."""
    if settings.model:
        return settings.model, settings.model
    try:
        from protloc.pretrained.fetch import resolve_pretrained

        return str(resolve_pretrained()), "published GapNet-PL weights"
    except Exception:
        import torch

        from protloc.model_file import save_model_file
        from protloc.labels import HPA13
        from protloc.models import create_model

        torch.manual_seed(0)
        save_model_file(tmp / "model.pt", create_model("gapnet-pl"), model_name="gapnet-pl",
                        classes=list(HPA13.classes), label_set="hpa13", crop_size=1024)
        return str(tmp / "model.pt"), "random GapNet-PL weights (no imported published weights found)"
