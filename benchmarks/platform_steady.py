"""Steady uploads/s of one `protloc serve` per configuration, and the server's cores used.

    PYTHONPATH=SRC python benchmarks/platform_steady.py PRECISION:LANES:CLIENTS:UPLOADS [...]
    e.g. fp32:2:4:32 auto:2:4:32

Each configuration starts its own server (cells on, the given lanes and precision, the published
weights from the user cache), warms it with 3 uploads, then twice sends UPLOADS uploads of the
1024² centre of the real HPA field from CLIENTS clients (the `platform` bench section's payload and
client) and prints uploads/s, the median latency and the server's CPU seconds per wall second. Run it
with PYTHONPATH pointing at another tree's src/ (`git archive COMMIT src`) to compare commits the same
way; used for issue 27's before/after on the idle machine
(`benchmarks/results/platform-steady-idle.md`).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for process in [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]:
        fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main(argv: list[str]) -> int:
    import httpx

    from protloc.bench.platform import Server, predict, throughput, wait_idle
    from protloc.bench.platform_inputs import field_files, field_sample, tiff_payload
    from protloc.pretrained.fetch import resolve_pretrained

    model = str(resolve_pretrained())
    configs = [a.split(":") for a in argv]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        payload, _ = tiff_payload(tmp, 1024, field_sample(tmp, field_files(tmp, False)[0]))
        for i, (precision, lanes, clients, uploads) in enumerate(configs):
            server = Server(f"{precision}-{lanes}", ["--precision", precision, "--lanes", lanes], model, tmp / f"d{i}")
            try:
                server.wait_ready(httpx)
                with httpx.Client(base_url=server.url, timeout=600) as client:
                    for _ in range(3):
                        predict(client, [("warm.tif", payload)])
                    wait_idle(client, seconds=0.5, pictures=True)
                    for _ in range(2):
                        before, start = cpu_seconds(server.process.pid), time.perf_counter()
                        row = throughput(server, payload, int(clients), int(uploads), httpx)
                        cores = (cpu_seconds(server.process.pid) - before) / (time.perf_counter() - start)
                        print(f"{precision} lanes {lanes} clients {clients}: {row['per_s']} uploads/s, "
                              f"p50 {row['latency_p50_s']} s, server cores used {cores:.2f}", flush=True)
                        wait_idle(client, seconds=0.5, pictures=True)
            finally:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
