"""Workers as their own processes against a real PostgreSQL server (issue 15, part 2).

The tests start a throw-away PostgreSQL cluster under a temporary folder (Debian's ``postgresql``
package: initdb and pg_ctl from /usr/lib/postgresql/*/bin; as root they run as the ``postgres``
user, since PostgreSQL refuses to run as root), then run ``protloc serve --no-worker`` and
``protloc worker`` processes on it: two workers share 50 submissions, each done exactly once, while
the web process is killed and restarted; a worker killed with SIGKILL in the middle of a job gives
it to the other when its lease runs out.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tifffile

from tests.helpers.web import cell_like_sample, make_model_file, wait_healthy

pytestmark = pytest.mark.slow  # a real browser / server / viewer: left to the full run

httpx = pytest.importorskip("httpx")
pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[dev]')")
REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


@pytest.fixture(scope="module")
def postgres_url():
    """A fresh PostgreSQL cluster on a free port; its URL for database ``protloc``; stopped after."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install -y postgresql)")
    as_root = os.geteuid() == 0
    if as_root and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    folder = Path(tempfile.mkdtemp(prefix="protloc-pg-"))
    if as_root:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE protloc")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/protloc"
    finally:
        subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def clean_db(postgres_url):
    from sqlalchemy import create_engine

    from protloc.web.storage import db

    for sessions in _SESSIONS.values():
        sessions.kw["bind"].dispose()
    _SESSIONS.clear()
    engine = create_engine(postgres_url)
    db.Base.metadata.drop_all(engine)
    engine.dispose()
    return postgres_url


def protloc_process(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "protloc", *args], stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"), env=env, cwd=REPO)


def start_server(url: str, model: Path, data: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = protloc_process(["serve", "--no-worker", "--db", url, "--model", str(model), "--data-dir", str(data),
                              "--port", str(port), "--log-level", "warning"], log)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base, server, lambda: log.read_text()[-2000:])
    return server, base


def start_worker(url: str, model: Path, data: Path, log: Path, lease: float = 30.0) -> subprocess.Popen:
    return protloc_process(["worker", "--db", url, "--model", str(model), "--data-dir", str(data),
                            "--lease", str(lease), "--poll", "0.1"], log)


def worker_name_of(log: Path, process: subprocess.Popen, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for line in log.read_text().splitlines():
            if line.startswith("protloc worker "):
                return line.split()[2].rstrip(":")
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)


_SESSIONS: dict = {}


def rows(url: str) -> dict:
    from sqlalchemy import select

    from protloc.web.storage import db

    if url not in _SESSIONS:  # one engine per database: polling must be quick to catch a job while it runs
        _SESSIONS[url] = db.open_database(url)
    with _SESSIONS[url]() as session:
        found = session.execute(select(db.Submission.id, db.Submission.status, db.Submission.worker,
                                       db.Submission.attempts, db.Submission.finished_at)).all()
        results = session.scalars(select(db.Result.submission_id)).all()
    return {"submissions": {r.id: r for r in found}, "results": list(results)}


def upload(base: str, payload: bytes, name: str) -> str:
    response = httpx.post(f"{base}/api/v1/predictions", files=[("files", (name, payload))], timeout=60)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def tiff_bytes(tmp_path: Path, size: int, seed: int) -> bytes:
    path = tmp_path / f"sample-{size}-{seed}.tif"
    tifffile.imwrite(path, cell_like_sample(size, size, seed=seed), photometric="minisblack")
    return path.read_bytes()


def test_two_workers_share_fifty_submissions_each_done_once_and_the_web_restarts(clean_db, tmp_path):
    url, data = clean_db, tmp_path / "data"
    model = make_model_file(tmp_path / "tiny.pt", crop_size=32)
    server, base = start_server(url, model, data, tmp_path / "serve-1.log")
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [start_worker(url, model, data, log) for log in logs]
    names = [worker_name_of(log, w) for log, w in zip(logs, workers)]
    try:
        ids = [upload(base, tiff_bytes(tmp_path, 48, seed=i % 5), f"first-{i}.tif") for i in range(25)]
        server.send_signal(signal.SIGKILL)  # the web process dies with work in flight, and comes back
        server.wait(30)
        server, base = start_server(url, model, data, tmp_path / "serve-2.log")
        ids += [upload(base, tiff_bytes(tmp_path, 48, seed=i % 5), f"second-{i}.tif") for i in range(25)]
        deadline = time.monotonic() + 300
        while True:
            listed = httpx.get(f"{base}/api/v1/predictions", params={"limit": 100}, timeout=60).json()
            if listed["total"] == 50 and all(item["status"] == "done" for item in listed["items"]):
                break
            assert time.monotonic() < deadline, [item["status"] for item in listed["items"]]
            time.sleep(0.5)
        assert sorted(item["id"] for item in listed["items"]) == sorted(ids)
        assert all(len(item["probabilities"]) == 13 for item in listed["items"])
        one = httpx.get(f"{base}/api/v1/predictions/{ids[0]}/images/composite.png", timeout=120)
        assert one.status_code == 200 and one.content.startswith(b"\x89PNG")  # pictures too, from the shared folder
    finally:
        stop(server, *workers)
    state = rows(url)
    assert sorted(state["results"]) == sorted(ids)  # one result per submission
    for submission in state["submissions"].values():
        assert submission.status == "done" and submission.attempts == 1, submission  # claimed once, never twice
    done_lines = [line.split()[-1] for log in logs for line in log.read_text().splitlines()
                  if " protloc.web.worker: done " in line]
    assert sorted(done_lines) == sorted(ids)  # every one finished, by exactly one worker
    by_worker = {name: sum(s.worker == name for s in state["submissions"].values()) for name in names}
    assert sum(by_worker.values()) == 50 and all(count > 0 for count in by_worker.values()), by_worker


def test_a_killed_worker_s_job_is_finished_by_the_other_after_its_lease(clean_db, tmp_path):
    url, data = clean_db, tmp_path / "data"
    model = make_model_file(tmp_path / "tiny.pt", crop_size=32)
    lease = 3.0
    server, base = start_server(url, model, data, tmp_path / "serve.log")
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [start_worker(url, model, data, log, lease=lease) for log in logs]
    try:
        names = [worker_name_of(log, w) for log, w in zip(logs, workers)]
        # big enough that the job takes seconds: the kill lands in the middle of it
        job = upload(base, tiff_bytes(tmp_path, 1024, seed=3), "big.tif")
        deadline = time.monotonic() + 120
        while (row := rows(url)["submissions"][job]).status != "running":
            assert row.status == "queued" and time.monotonic() < deadline, row
            time.sleep(0.02)
        first, second = workers if row.worker == names[0] else workers[::-1]
        name_a, name_b = (names if row.worker == names[0] else names[::-1])
        first.send_signal(signal.SIGKILL)
        killed_at = last_seen_with_a = time.monotonic()
        first.wait(30)
        held = rows(url)["submissions"][job]
        assert (held.status, held.worker) == ("running", name_a), "the job finished before the kill: make it bigger"
        deadline = time.monotonic() + 300
        while (row := rows(url)["submissions"][job]).status != "done":
            assert row.status in ("running", "queued") and time.monotonic() < deadline, row
            if row.worker == name_a:
                last_seen_with_a = time.monotonic()
            time.sleep(0.1)
        assert row.worker == name_b and row.attempts == 2, row
        # B took it only after A's lease (renewed every lease/3 until the kill) had run out
        assert last_seen_with_a - killed_at >= lease / 3 - 0.5
        answer = httpx.get(f"{base}/api/v1/predictions/{job}", timeout=60).json()
        assert answer["status"] == "done" and len(answer["probabilities"]) == 13
    finally:
        stop(server, *workers)
