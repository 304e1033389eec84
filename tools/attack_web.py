"""The web part of tools/attack.py: a real `protloc serve` on 127.0.0.1 only."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np

from attack_corpus import COLOURS
from attack_tally import PROTLOC, Tally, _env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def attack_web(root: Path, model: Path, seconds: float) -> Tally:
    import httpx

    tally = Tally()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    data_dir = root / "web-data"
    log = open(root / "server.log", "wb")
    token = "SECRET-attack-token"
    server = subprocess.Popen(PROTLOC + ["serve", "--host", "127.0.0.1", "--port", str(port), "--model", str(model),
                                         "--data-dir", str(data_dir), "--auth-token", token, "--max-batch-mb", "8",
                                         "--max-upload-mb", "4"], stdout=log, stderr=subprocess.STDOUT, env=_env())
    try:
        for _ in range(240):
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        headers = {"Authorization": f"Bearer {token}"}
        # the six kinds of token on every route
        schema = httpx.get(base + "/openapi.json", headers=headers).json()
        kinds = {"none": {}, "empty": {"Authorization": "Bearer"}, "wrong": {"Authorization": "Bearer nope"},
                 "malformed": {"Authorization": "Basic Zm9vOmJhcg=="},
                 "huge": {"Authorization": "Bearer " + "x" * 250_000}, "query": {}, "valid": headers}
        for path, methods in schema["paths"].items():
            concrete = path.replace("{submission_id}", "1").replace("{batch_id}", "1").replace("{name}", "x.png")
            for method in methods:
                for kind, h in kinds.items():
                    entry = f"web token {kind}"
                    tally.add(entry, "runs")
                    url = base + concrete + (f"?token={token}" if kind == "query" else "")
                    try:
                        r = httpx.request(method.upper(), url, headers=h, timeout=30)
                    except httpx.HTTPError as exc:
                        tally.add(entry, "5xx", f"{method} {path}: {exc!r}")
                        continue
                    if r.status_code >= 500:
                        tally.add(entry, "5xx", f"{method} {path} -> {r.status_code} {r.text[:200]}")
                    elif kind == "huge" and r.status_code != 431:
                        tally.add(entry, "5xx", f"{method} {path}: a 250 KB header answered {r.status_code}, not 431")
                    elif (kind != "valid" and not (kind == "query" and method == "get") and r.status_code < 400
                          and path.startswith("/api/v1/")):
                        tally.add(entry, "token leaks", f"{method} {path} answered {r.status_code} without a valid token")
        _zip_bomb(tally, base, headers, root / "web-data")
        _disconnects(tally, port, token)
        # 50 concurrent uploads
        _concurrent_uploads(tally, base, headers, root)
        # schemathesis
        _schemathesis(tally, base, headers, seconds)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    text = (root / "server.log").read_text(errors="replace")
    for block in text.split("Traceback")[1:]:
        tally.add("server log", "log tracebacks", "Traceback" + block[:1200])
    if token in text:
        tally.add("server log", "token leaks", f"{text.count(token)} lines")
    return tally


def _concurrent_uploads(tally: Tally, base: str, headers: dict, root: Path) -> None:
    import io
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from PIL import Image

    def one(i: int):
        files = []
        for j, colour in enumerate(COLOURS):
            buf = io.BytesIO()
            Image.fromarray(np.random.default_rng(i * 4 + j).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, "PNG")
            files.append(("files", (f"c{i}_{colour}.png", buf.getvalue(), "image/png")))
        return httpx.post(base + "/api/v1/predictions", files=files, headers=headers, timeout=120)

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda i: _safely(one, i), range(50)))
    ids = []
    for answer in answers:
        tally.add("web 50 uploads", "runs")
        if isinstance(answer, Exception) or answer.status_code >= 500:
            tally.add("web 50 uploads", "5xx", repr(answer) if isinstance(answer, Exception) else answer.text[:300])
        elif answer.status_code >= 400:
            tally.add("web 50 uploads", "refused", answer.text[:200])
        else:
            tally.add("web 50 uploads", "ok")
            ids.append(answer.json().get("id"))
    if len(set(ids)) != len(ids):
        tally.add("web 50 uploads", "duplicated rows", str(ids))
    deadline = time.monotonic() + 300
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for sid in list(pending):
            r = httpx.get(f"{base}/api/v1/predictions/{sid}", headers=headers, timeout=30)
            if r.status_code >= 500:
                tally.add("web 50 uploads", "5xx", r.text[:300])
                pending.discard(sid)
            elif r.json().get("status") in ("done", "failed"):
                if r.json().get("status") == "failed":
                    tally.add("web 50 uploads", "lost rows", r.text[:300])
                pending.discard(sid)
        time.sleep(1)
    for sid in pending:
        tally.add("web 50 uploads", "lost rows", f"{sid} never finished")


def _zip_bomb(tally: Tally, base: str, headers: dict, data_dir: Path) -> None:
    import io

    import httpx

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for colour in COLOURS:
            archive.writestr(f"s1_{colour}.png", b"\0" * (300 << 20))
    entry = "web zip bomb"
    tally.add(entry, "runs")
    r = httpx.post(base + "/api/v1/batches", files={"file": ("bomb.zip", buf.getvalue(), "application/zip")},
                   headers=headers, timeout=120)
    written = sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file())
    if r.status_code >= 500:
        tally.add(entry, "5xx", r.text[:300])
    elif r.status_code < 400:
        tally.add(entry, "5xx", f"a {len(buf.getvalue())} B zip expanding to 1.2 GB accepted: {r.status_code}")
    else:
        tally.add(entry, "refused", r.text[:200])
    if written > 100 << 20:
        tally.add(entry, "5xx", f"{written} bytes on disk after the zip bomb")


def _disconnects(tally: Tally, port: int, token: str) -> None:
    """Clients that vanish mid-upload: each should cost one log line, never a traceback."""
    for _ in range(5):
        tally.add("web disconnects", "runs")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /api/v1/predictions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      + f"Authorization: Bearer {token}\r\n".encode()
                      + b"Content-Type: multipart/form-data; boundary=XX\r\nContent-Length: 1000000\r\n\r\n"
                      + b"--XX\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a_blue.png\"\r\n\r\n"
                      + b"\0" * 5000)
            time.sleep(0.2)
    time.sleep(1)


def _safely(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # reported as a failed request
        return exc


def _schemathesis(tally: Tally, base: str, headers: dict, seconds: float) -> None:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                     status_code_conformance)

    schema = schemathesis.openapi.from_url(base + "/openapi.json", headers=headers)
    checks = {"5xx": [not_a_server_error],
              "schema violations": [response_schema_conformance, content_type_conformance, status_code_conformance]}
    operations = [result.ok() for result in schema.get_all_operations()]
    pairs = [(o, m) for m in schemathesis.GenerationMode for o in operations]
    per_pair = max(2.0, seconds / max(1, len(pairs)))
    max_examples = max(5, int(per_pair * 10))
    for operation, mode in pairs:
        entry = "web schemathesis"
        stop = time.monotonic() + per_pair

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.explicit, Phase.generate], database=None)
        def run(case):
            if time.monotonic() > stop:
                return
            tally.add(entry, "runs")
            case.headers = {**(case.headers or {}), **headers}
            response = case.call()
            for kind, check_list in checks.items():
                try:
                    case.validate_response(response, checks=check_list)
                except (Exception, BaseExceptionGroup) as exc:
                    tally.add(entry, kind, f"{operation.label} ({mode.value}): {str(exc)[:800]}")

        try:
            run()
        except (Exception, BaseExceptionGroup):
            pass


