"""``protloc bench --sections platform --precision P``: the platform's uploads/s at P against fp32.

Two ``protloc serve`` processes (the platform as a facility runs it: probabilities first, cells on,
two lanes), one ``--precision fp32`` (the baseline) and one ``--precision P``, start at once with the
same model; 1024² uploads of a field with cells (the centre of the real HPA field, as in the full
platform section; noise with ``--quick`` or without ../shared) go to each in turn, several clients,
alternating so that a change of load on a shared machine hits both alike. The result names the CPU
and its instruction sets, what ``P`` resolved to and why (the servers' own choice, read back from
``GET /api/v1/models``), and each server's uploads/s with the ratio against fp32.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from protloc.bench.common import Progress, Settings


def precision_section(settings: Settings, progress: Progress) -> dict:
    try:
        import httpx
    except ImportError as exc:
        return {"skipped": f"{exc.name} is not installed (pip install -e '.[dev]')"}
    from protloc.bench.platform import Server, bench_model, predict, throughput, wait_idle
    from protloc.bench.platform_inputs import field_files, field_sample, find_field, tiff_payload
    from protloc.inference.precision import detect_capabilities, resolve_precision

    quick = settings.quick
    resolved = resolve_precision(settings.precision, "cpu")
    variants = {"fp32 (baseline)": "fp32", f"{settings.precision}": settings.precision}
    with tempfile.TemporaryDirectory(prefix="protloc-bench-precision-") as tmp:
        tmp = Path(tmp)
        model, weights = bench_model(settings, tmp)
        size = 128 if quick else 1024
        real = find_field() is not None and not quick
        image = field_sample(tmp, field_files(tmp, quick)[0]) if real else None
        payload, sample = tiff_payload(tmp, size, image)
        servers = [Server(name, ["--precision", precision], model, tmp / f"data-{i}")
                   for i, (name, precision) in enumerate(variants.items())]
        load_start = os.getloadavg()[0]
        try:
            for server in servers:
                server.wait_ready(httpx)
            clients = {s.name: httpx.Client(base_url=s.url, timeout=600) for s in servers}
            # warm-up: model loading, the first pass, compiling SELU (a server always compiles it)
            for _ in range(2):
                for server in servers:
                    predict(clients[server.name], [("warm.tif", payload)])
            progress.step("platform precision warm-up")
            answered = {s.name: clients[s.name].get("/api/v1/models").json()["models"][0].get("precision")
                        for s in servers}
            levels = (1, 2) if quick else (1, 4)
            # 32 uploads per measurement: with 4 clients a run of 8 is half ramp-up and drain, which
            # understated the steady rate by up to a fifth on the idle machine (6.8-8.0 against 8.7/s)
            requests = 4 if quick else 64
            through: dict[str, dict[int, dict]] = {s.name: {} for s in servers}
            for level in levels:
                for rounds in range(2):  # each server twice per level, alternating: fp32, P, P, fp32
                    order = servers if rounds % 2 == 0 else servers[::-1]
                    for server in order:
                        for other in servers:
                            wait_idle(clients[other.name], seconds=0.5, pictures=True)
                        row = throughput(server, payload, level, requests // 2, httpx)
                        best = through[server.name].get(level)
                        if best is None or row["per_s"] > best["per_s"]:
                            through[server.name][level] = row
                progress.step(f"platform precision {level} client(s)")
            for client in clients.values():
                client.close()
        finally:
            for server in servers:
                server.stop()
    base = servers[0].name
    return {
        "precision_rows": [{"variant": name, "precision": answered[name], "clients": level, **row,
                            "ratio": round(row["per_s"] / through[base][level]["per_s"], 2)}
                           for name, by_level in through.items() for level, row in by_level.items()],
        "requested": settings.precision, "resolved": resolved.line,
        "cpu": detect_capabilities("cpu").describe(), "sample": sample, "weights": weights,
        "requests_per_round": requests // 2, "load_average_at_start": round(load_start, 2),
        "method": "two `protloc serve` processes at once (probabilities first, cells on, 2 lanes), fp32 and the "
                  "precision asked for; per client count each server is measured twice, alternating, best kept",
    }


def precision_markdown(s: dict) -> list[str]:
    out = ["### Platform: uploads/s by precision", ""]
    if "skipped" in s:
        return out + [f"skipped: {s['skipped']}", ""]
    out += [f"CPU {s['cpu']}. `--precision {s['requested']}`: {s['resolved']}. {s['method']}. Weights: "
            f"{s['weights']}; uploads of a {s['sample']}; load average at start {s['load_average_at_start']}.", ""]
    header = "| variant | answered in | clients | uploads/s | p50 latency s | ratio vs fp32 |"
    out += [header, "|---|---|---|---|---|---|"]
    out += [f"| {r['variant']} | {r['precision']} | {r['clients']} | {r['per_s']} | {r['latency_p50_s']} | "
            f"**{r['ratio']}x** |" for r in s["precision_rows"]]
    return out + [""]
