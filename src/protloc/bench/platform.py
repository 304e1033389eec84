"""The platform section: ``protloc serve`` in its own process under concurrent requests."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from protloc.bench.common import Progress, Settings




# A client polls its result this often (the upload page polls every 400 ms).
POLL_SECONDS = 0.05


def platform_section(settings: Settings, progress: Progress) -> dict:
    import socket
    import threading

    try:
        import httpx
    except ImportError as exc:
        return {"skipped": f"{exc.name} is not installed (pip install -e '.[dev]')"}
    import tifffile
    import torch

    from protloc.checkpoint import save_model_file
    from protloc.labels import HPA13
    from protloc.models import create_model

    size = 128 if settings.quick else 1024
    levels = (1, 2) if settings.quick else (1, 4, 8)
    per_level = 4 if settings.quick else 16
    with tempfile.TemporaryDirectory(prefix="protloc-bench-web-") as tmp:
        tmp = Path(tmp)
        if settings.model:
            model = settings.model
        else:
            torch.manual_seed(0)
            save_model_file(tmp / "model.pt", create_model("gapnet-pl"), model_name="gapnet-pl",
                            classes=list(HPA13.classes), label_set="hpa13", crop_size=1024)
            model = str(tmp / "model.pt")
        rng = np.random.default_rng(0)
        sample = (rng.random((size, size, 4)) * 4000).astype(np.uint16)
        tiff = tmp / "sample.tif"
        tifffile.imwrite(tiff, np.moveaxis(sample, -1, 0))
        payload = tiff.read_bytes()
        # The server runs as `protloc serve` in its own process, as a facility would run it: clients in
        # this process then do not share its interpreter lock with the web server and the worker.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "protloc", "serve", "--model", model, "--data-dir", str(tmp / "data"),
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                return {"skipped": f"the server did not start: {(server.communicate()[1] or '').strip()[-300:]}"}
            time.sleep(0.1)
        rows = []
        try:
            with httpx.Client(base_url=url, timeout=600) as client:

                def one() -> float:
                    start = time.perf_counter()
                    response = client.post("/api/v1/predictions", files=[("files", ("sample.tif", payload))])
                    response.raise_for_status()
                    sid = response.json()["id"]
                    while True:
                        data = client.get(f"/api/v1/predictions/{sid}").json()
                        if data["status"] in ("done", "failed"):
                            if data["status"] == "failed":
                                raise RuntimeError(f"prediction failed: {data}")
                            return time.perf_counter() - start
                        time.sleep(POLL_SECONDS)

                one()  # warm-up: model loading, first forward
                for level in levels:
                    latencies: list[float] = []
                    lock = threading.Lock()

                    def worker(count: int) -> None:
                        for _ in range(count):
                            latency = one()
                            with lock:
                                latencies.append(latency)

                    start = time.perf_counter()
                    threads = [threading.Thread(target=worker, args=(per_level // level,)) for _ in range(level)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    wall = time.perf_counter() - start
                    rows.append({"concurrent_clients": level, "requests": len(latencies),
                                 "throughput_per_s": round(len(latencies) / wall, 2),
                                 "latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
                                 "latency_p95_s": round(float(np.percentile(latencies, 95)), 3)})
                    progress.step(f"platform x{level}")
                stats = client.get("/api/v1/worker").json()
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    base = rows[0]["throughput_per_s"]
    for row in rows:
        row["throughput_ratio_vs_one_client"] = round(row["throughput_per_s"] / base, 2)
    return {"sample": f"{size}x{size}x4 uint16 TIFF upload, covering patches of 1024", "rows": rows,
            "worker": stats, "latency": f"POST /api/v1/predictions until GET says done (polled every {POLL_SECONDS * 1000:.0f} ms); "
                       "server: `protloc serve` in its own process"}
