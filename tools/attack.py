"""Try to break protloc as a hostile user would (issue 11's "Done when" check), and count what breaks.

    python tools/attack.py corpus DIR             # build the attack corpus (broken and odd inputs) in DIR
    python tools/attack.py cli DIR --model M.pt   # every CLI entry point over the corpus
    python tools/attack.py resume DIR --model M.pt [--rounds 10]   # kill -9 predict at random points, resume
    python tools/attack.py web DIR --model M.pt [--seconds 60]     # a real `protloc serve` on 127.0.0.1 only

Counts per entry point: tracebacks (any 'Traceback' in stderr), errors longer than one line, lost or
duplicated rows, server errors (5xx) and schema violations. The web attack listens and sends on
127.0.0.1 only. Run it from a checkout: `PYTHONPATH=src python tools/attack.py ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

PROTLOC = [sys.executable, "-m", "protloc"]
COLOURS = ("blue", "red", "yellow", "green")


# ---------------------------------------------------------------------------------------------- corpus
def _png(path: Path, size=(64, 64), seed=0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(path)


def _sample(folder: Path, sample_id: str, size=(64, 64), seed=0, ext=".png") -> list[Path]:
    paths = []
    for i, colour in enumerate(COLOURS):
        path = folder / f"{sample_id}_{colour}{ext}"
        if ext == ".png":
            _png(path, size, seed * 4 + i)
        else:
            import tifffile

            tifffile.imwrite(path, np.random.default_rng(seed * 4 + i).integers(0, 255, size, dtype=np.uint8))
        paths.append(path)
    return paths


def _tiff_claiming(path: Path, width: int, height: int) -> None:
    """A small uncompressed TIFF whose header claims width x height pixels."""
    import tifffile

    tifffile.imwrite(path, np.zeros((16, 16), np.uint8))
    data = bytearray(path.read_bytes())
    offset = int.from_bytes(data[4:8], "little")
    count = int.from_bytes(data[offset:offset + 2], "little")
    for i in range(count):
        entry = offset + 2 + 12 * i
        tag, kind = int.from_bytes(data[entry:entry + 2], "little"), int.from_bytes(data[entry + 2:entry + 4], "little")
        if tag in (256, 257):
            value = width if tag == 256 else height
            size = 2 if kind == 3 else 4
            data[entry + 8:entry + 8 + size] = value.to_bytes(size, "little")
    path.write_bytes(bytes(data))


def build_corpus(root: Path) -> dict[str, list[Path]]:
    """Folders and files of bad and odd inputs; returns {case name: paths to give `predict`}."""
    import tifffile

    root.mkdir(parents=True, exist_ok=True)
    cases: dict[str, list[Path]] = {}
    good = root / "good"
    good.mkdir(exist_ok=True)
    for i in range(4):
        _sample(good, f"g{i}", seed=i)
    (good / "labels.csv").write_text("id,labels\n" + "".join(f"g{i},Nucleus\n" for i in range(4)))
    cases["good folder"] = [good]

    single = root / "single"
    single.mkdir(exist_ok=True)
    valid = _sample(single, "ok", seed=9)
    png = valid[0].read_bytes()
    (single / "trunc_blue.png").write_bytes(png[: len(png) // 2])
    for c in COLOURS[1:]:
        (single / f"trunc_{c}.png").write_bytes(png)
    tifffile.imwrite(single / "stack3.tif", np.zeros((3, 64, 64), np.uint8))
    tifffile.imwrite(single / "stack7.tif", np.zeros((7, 64, 64), np.uint8))
    tifffile.imwrite(single / "stack4.tif", np.ones((4, 64, 64), np.uint8))
    t = (single / "stack4.tif").read_bytes()
    (single / "trunc.tif").write_bytes(t[: len(t) // 2])
    (single / "corrupt.tif").write_bytes(b"II*\x00" + os.urandom(500))
    (single / "zero.tif").write_bytes(b"")
    (single / "zero.npz").write_bytes(b"")
    np.savez(single / "good.npz", image=np.ones((4, 64, 64), np.float32))
    n = (single / "good.npz").read_bytes()
    (single / "trunc.npz").write_bytes(n[: len(n) // 2])
    np.savez(single / "odd.npz", a=np.ones((5,), np.float32))
    _tiff_claiming(single / "bomb.tif", 100_000, 100_000)
    tifffile.imwrite(single / "tiny.tif", np.ones((4, 1, 1), np.uint8))
    tifffile.imwrite(single / "ome3.ome.tif", np.ones((3, 64, 64), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "Tubulin", "GFP"]}})
    tifffile.imwrite(single / "omeodd.ome.tif", np.ones((4, 64, 64), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["foo", "bar", "baz", "qux"]}})
    tifffile.imwrite(single / "omez.ome.tif", np.ones((3, 4, 64, 64), np.uint16), ome=True,
                     metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "Tubulin", "Calreticulin", "GFP"]}})
    for name in ("stack3.tif", "stack7.tif", "stack4.tif", "trunc.tif", "corrupt.tif", "zero.tif", "zero.npz",
                 "good.npz", "trunc.npz", "odd.npz", "bomb.tif", "tiny.tif", "ome3.ome.tif", "omeodd.ome.tif",
                 "omez.ome.tif"):
        cases[f"file {name}"] = [single / name]
    cases["trunc png channels"] = [single / f"trunc_{c}.png" for c in COLOURS]
    for c in COLOURS:
        _png(single / f"one_{c}.png", (1, 1))
    cases["1x1 channels"] = [single / f"one_{c}.png" for c in COLOURS]
    jpg = single / "j_blue.jpg"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(jpg)
    j = jpg.read_bytes()
    jpg.write_bytes(j[: len(j) // 2])
    for c in COLOURS[1:]:
        _png(single / f"j_{c}.png")
    cases["trunc jpeg channels"] = [single / f"j_{c}.{'jpg' if c == 'blue' else 'png'}" for c in COLOURS]

    zarr_dir = root / "nongff.zarr"
    if not zarr_dir.exists():
        import zarr

        group = zarr.open_group(str(zarr_dir), mode="w")
        group.create_array("data", shape=(4, 64, 64), dtype="uint8")
    cases["zarr without NGFF"] = [zarr_dir]
    malformed = root / "malformed.zarr"
    malformed.mkdir(exist_ok=True)
    (malformed / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                     "attributes": {"ome": {"version": "0.5", "multiscales": 5}}}))
    cases["zarr malformed NGFF"] = [malformed]
    tifffile.imwrite(single / "badxml.ome.tif", np.ones((4, 32, 32), np.uint8), metadata=None,
                     description='<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
                                 '<Pixels ID="P:0" SizeC="abc" SizeX="32" SizeY="32" DimensionOrder="XYCZT" '
                                 'Type="uint8"/></Image></OME>')
    cases["file badxml.ome.tif"] = [single / "badxml.ome.tif"]
    bad_dir = root / "baddir"
    bad_dir.mkdir(exist_ok=True)
    cases["a folder of nothing"] = [bad_dir]
    cases["missing path"] = [root / "does-not-exist.tif"]

    # one folder holding everything at once, beside valid samples that must still be predicted
    mixed = root / "mixed"
    mixed.mkdir(exist_ok=True)
    for i in range(3):
        _sample(mixed, f"m{i}", seed=20 + i)
    for sid in ("a_b", "ctl\x01x", "sp ace", "uni\u00e9"):
        _sample(mixed, sid, seed=30)
    sub = mixed / "a"
    sub.mkdir(exist_ok=True)
    _sample(sub, "b", seed=31)  # id a/b beside a_b
    _sample(mixed, "dup", seed=32)
    import shutil

    shutil.copy(mixed / "dup_blue.png", mixed / "dup_blue.tif")  # two files for one channel
    for c in COLOURS:
        os.symlink(single / f"ok_{c}.png", os.fsencode(mixed) + b"/\xff_" + c.encode() + b".png") \
            if not os.path.lexists(os.fsencode(mixed) + b"/\xff_" + c.encode() + b".png") else None
    if not (mixed / "cycle").is_symlink():
        os.symlink(".", mixed / "cycle")
    for name in ("trunc.tif", "stack3.tif", "stack7.tif", "bomb.tif", "tiny.tif", "zero.tif", "trunc.npz",
                 "ome3.ome.tif", "omeodd.ome.tif"):
        shutil.copy(single / name, mixed / name)
    for c in COLOURS:
        _png(mixed / f"one_{c}.png", (1, 1))
    (mixed / "labels.csv").write_bytes(b"id,labels\nm0,Nucleus\nm1,Nucle\xe9oli\n")
    cases["mixed folder"] = [mixed]
    return cases


# ---------------------------------------------------------------------------------------------- running
class Tally:
    def __init__(self):
        self.rows: dict[str, Counter] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, entry: str, kind: str, example: str = "") -> None:
        self.rows.setdefault(entry, Counter())[kind] += 1
        if kind != "runs" and example:
            self.examples.setdefault(f"{entry}: {kind}", []).append(example)

    def report(self) -> str:
        kinds = ["runs", "ok", "refused", "traceback", "multi-line error", "lost rows", "duplicated rows",
                 "timeout", "5xx", "schema violations", "log tracebacks", "token leaks"]
        lines = ["entry point".ljust(26) + " ".join(k[:10].rjust(10) for k in kinds)]
        for entry, counts in self.rows.items():
            lines.append(entry.ljust(26) + " ".join(str(counts.get(k, 0)).rjust(10) for k in kinds))
        for key, examples in self.examples.items():
            if not key.endswith(("ok", "refused")):
                lines.append(f"\n## {key} ({len(examples)})\n" + "\n".join(e[:1500] for e in examples[:3]))
        return "\n".join(lines)


def _env() -> dict:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PROTLOC_MAX_PIXELS", "")
    env.pop("PROTLOC_MAX_PIXELS")
    return env


def run_cli(tally: Tally, entry: str, args: list, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess | None:
    tally.add(entry, "runs")
    try:
        proc = subprocess.run(PROTLOC + [os.fsdecode(a) if isinstance(a, Path) else a for a in args],
                              capture_output=True, timeout=timeout, env=_env(), cwd=cwd)
    except subprocess.TimeoutExpired:
        tally.add(entry, "timeout", " ".join(map(str, args)))
        return None
    err = proc.stderr.decode("utf-8", "replace")
    label = " ".join(os.fsdecode(a) if isinstance(a, (Path, bytes)) else str(a) for a in args)
    if "Traceback" in err:
        tally.add(entry, "traceback", f"$ protloc {label}\n{err[-1200:]}")
    if proc.returncode != 0:
        # the refusal is the last line, one line starting "protloc: error:"; warnings and notes may precede it
        lines = [line for line in err.splitlines() if line.strip() and "it/s" not in line and "%|" not in line]
        if not lines or not lines[-1].startswith("protloc: error: ") or sum("protloc: error" in x for x in lines) > 1:
            tally.add(entry, "multi-line error", f"$ protloc {label}\n" + "\n".join(lines[-8:]))
        else:
            tally.add(entry, "refused", f"{label}: {lines[-1]}")
    else:
        tally.add(entry, "ok", label)
    return proc


def attack_cli(root: Path, model: Path) -> Tally:
    cases = build_corpus(root / "corpus")
    tally = Tally()
    out = root / "out"
    out.mkdir(exist_ok=True)
    for name, inputs in cases.items():
        if name.startswith(("file", "zarr")) or name in ("mixed folder", "good folder", "a folder of nothing"):
            run_cli(tally, "data scan", ["data", "scan", inputs[0], "--out", out / "scan"])
    for name, inputs in cases.items():
        stem = "".join(ch if ch.isalnum() else "-" for ch in name)
        run_cli(tally, "predict", ["predict", "--model", model, "--out", out / f"{stem}.csv", *inputs])
    mixed = cases["mixed folder"]
    for extra, suffix in (([], ".jsonl"), ([], ".parquet"), (["--maps", out / "maps"], ".csv"),
                          (["--whole-image"], ".csv"), (["--whole-image", "--maps", out / "maps2"], ".jsonl")):
        target = out / f"mixed-{len(extra)}{suffix}"
        proc = run_cli(tally, "predict " + " ".join(a for a in extra if isinstance(a, str)) + suffix,
                       ["predict", "--model", model, "--out", target, *extra, *mixed])
        if proc is not None and proc.returncode == 0:
            _check_rows(tally, "predict " + suffix, target, None)
    # outputs that cannot be written: a foreign file, a folder, a file where a folder must go
    good = root / "corpus" / "good"
    blocker = out / "a-file"
    blocker.write_text("x")
    (out / "dir.csv").mkdir(exist_ok=True)
    for name in ("foreign.csv", "foreign.jsonl"):
        (out / name).write_bytes(b"id,x\n\xff\xfe not text\n")
    for target in (out / "foreign.csv", out / "foreign.jsonl", out / "dir.csv", blocker / "p.csv"):
        run_cli(tally, "predict bad --out", ["predict", "--model", model, "--out", target, good])
    run_cli(tally, "predict bad --out", ["predict", "--model", model, "--out", out / "m.csv", "--maps", blocker, good])
    run_cli(tally, "train", ["train", "--model", "gapnet-pl", "--data", good, "--out", blocker / "run", "--epochs", "1"])
    run_cli(tally, "evaluate", ["evaluate", "--model", model, "--data", good, "--out", blocker / "eval"])
    run_cli(tally, "export", ["export", model, "--format", "onnx", "--out", blocker / "m.onnx"])
    # training and evaluation on the good folder, on the mixed one, and on broken data sets
    run_cli(tally, "train", ["train", "--model", "gapnet-pl", "--data", root / "corpus" / "good", "--out", out / "run1",
                             "--epochs", "1", "--crop-size", "32", "--batch-size", "2", "--no-cache"], timeout=600)
    run_cli(tally, "train", ["train", "--model", "gapnet-pl", "--data", mixed[0], "--out", out / "run2",
                             "--epochs", "1", "--crop-size", "32", "--batch-size", "2", "--no-cache"], timeout=600)
    run_cli(tally, "train", ["train", "--model", "gapnet-pl", "--data", root / "corpus" / "single", "--out", out / "run3",
                             "--epochs", "1", "--crop-size", "32", "--no-cache"], timeout=600)
    run_cli(tally, "train", ["train", "--model", "gapnet-pl", "--data", root / "corpus" / "nongff.zarr", "--out",
                             out / "run4", "--epochs", "1"], timeout=600)
    run_cli(tally, "train", ["train", "--resume", "--out", out / "run-none"])
    for data in (root / "corpus" / "good", mixed[0], root / "corpus" / "single", root / "corpus" / "nongff.zarr",
                 root / "corpus" / "baddir"):
        run_cli(tally, "evaluate", ["evaluate", "--model", model, "--data", data, "--out", out / "eval"])
    run_cli(tally, "evaluate", ["evaluate", out / "run1"])
    run_cli(tally, "evaluate", ["evaluate", root / "corpus" / "single"])
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt"), ("bioimageio", ".zip")):
        run_cli(tally, "export", ["export", model, "--format", fmt, "--out", out / f"m{suffix}", "--test-size", "64"]
                if fmt == "bioimageio" else ["export", model, "--format", fmt, "--out", out / f"m{suffix}"], timeout=600)
        run_cli(tally, "export", ["export", cases["file trunc.npz"][0], "--format", fmt, "--out", out / f"x{suffix}"])
        run_cli(tally, "export", ["export", root / "corpus" / "single" / "zero.tif", "--format", fmt, "--out",
                                  out / f"y{suffix}"])
    return tally


# ---------------------------------------------------------------------------------------------- kill -9 resume
def _read_ids(path: Path) -> list[str]:
    if path.suffix == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            return [row[0] for row in list(csv.reader(handle))[1:]]
    if path.suffix == ".jsonl":
        return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    import pandas

    return list(pandas.read_parquet(path)["id"])


def _check_rows(tally: Tally, entry: str, path: Path, expected: set[str] | None) -> None:
    try:
        ids = _read_ids(path)
    except Exception as exc:  # an unreadable output is a lost output
        tally.add(entry, "lost rows", f"{path}: unreadable: {exc!r}")
        return
    counts = Counter(ids)
    duplicated = {i: c for i, c in counts.items() if c > 1}
    if duplicated:
        tally.add(entry, "duplicated rows", f"{path}: {duplicated}")
    if expected is not None and set(ids) != expected:
        tally.add(entry, "lost rows", f"{path}: missing {sorted(expected - set(ids))} extra {sorted(set(ids) - expected)}")


def attack_resume(root: Path, model: Path, rounds: int) -> Tally:
    tally = Tally()
    folder = root / "resume-data"
    if not folder.exists():
        folder.mkdir(parents=True)
        for i in range(30):
            _sample(folder, f"r{i:02d}", (96, 96), seed=100 + i)
    expected = {f"r{i:02d}" for i in range(30)}
    rng = random.Random(0)
    for suffix in (".csv", ".jsonl", ".parquet"):
        entry = f"predict kill -9 {suffix}"
        target = root / f"resume{suffix}"
        target.unlink(missing_ok=True)
        start = time.monotonic()
        run_cli(tally, entry, ["predict", "--model", model, "--out", target, folder])
        full = time.monotonic() - start
        _check_rows(tally, entry, target, expected)
        for _ in range(rounds if suffix != ".parquet" else max(2, rounds // 3)):
            target.unlink(missing_ok=True)
            for _kill in range(rng.randint(1, 3)):
                proc = subprocess.Popen(PROTLOC + ["predict", "--model", str(model), "--out", str(target), str(folder)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                                        start_new_session=True)
                time.sleep(rng.uniform(0.3, full))
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            run_cli(tally, entry, ["predict", "--model", model, "--out", target, folder])
            _check_rows(tally, entry, target, expected)
    return tally


# ---------------------------------------------------------------------------------------------- web
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["corpus", "cli", "resume", "web"])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    if args.what == "corpus":
        for name, paths in build_corpus(args.dir).items():
            print(name, [os.fsdecode(p) for p in paths])
        return 0
    tally = {"cli": lambda: attack_cli(args.dir, args.model), "resume": lambda: attack_resume(args.dir, args.model, args.rounds),
             "web": lambda: attack_web(args.dir, args.model, args.seconds)}[args.what]()
    print(tally.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
