"""The HTTP server around the API: concurrent uploads batched into shared passes, a responsive event
loop, tokens, restarts that keep or rerun work, the mounted expert study and the `protloc serve` command."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
from sqlalchemy import update

from protloc.web.storage import db
from protloc.web.settings import WebSettings

from tests.helpers.web import (LiveServer, cell_like_sample, expected_probs, make_model_file, make_zip, upload_channels,
                               wait_batch, wait_done, wait_healthy, write_channel_files)


@pytest.fixture()
def no_cells(server):
    """This server's worker as under --no-cells for one test: covering patches, batched across uploads."""
    server.platform.worker.cells.enabled = False
    yield
    server.platform.worker.cells.enabled = True


def test_six_concurrent_uploads_are_batched_and_answered_correctly(client, server, models, tmp_path, no_cells,
                                                                   monkeypatch):
    images = [cell_like_sample(96 + 8 * i, 96, seed=30 + i) for i in range(6)]
    payloads = [write_channel_files(tmp_path / str(i), f"conc{i}", image) for i, image in enumerate(images)]
    passes_before = server.platform.worker.stats.max_samples_per_pass
    # The lanes take nothing until all six wait: on a loaded machine the uploads otherwise trickle in
    # one by one and each is answered alone, which would test the machine's load, not the batching.
    worker, queued = server.platform.worker, threading.Event()
    take = worker.jobs.take

    def take_once_all_queued(most, linger, wait):
        return take(most, linger, wait) if queued.wait(wait) else []

    monkeypatch.setattr(worker.jobs, "take", take_once_all_queued)
    results: dict[int, dict] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def one(index: int) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=60) as own:
                barrier.wait()
                response = upload_channels(own, payloads[index])
                assert response.status_code == 202, response.text
                results[index] = wait_done(own, response.json()["id"])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while worker.pending() < 6 and not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    queued.set()
    for thread in threads:
        thread.join(120)
    elapsed = time.perf_counter() - started
    assert not errors, errors
    assert len({r["id"] for r in results.values()}) == 6
    for index, data in results.items():
        assert data["status"] == "done"
        assert data["height"] == 96 + 8 * index  # each answer belongs to its own upload
        got = np.array([data["probabilities"][c] for c in models["tiny"].classes])
        assert data["image_probabilities"]["method"] == "patches"
        np.testing.assert_allclose(got, models["tiny"].predict_proba(images[index].astype(np.float32)), atol=1e-5)
    stats = client.get("/api/v1/worker").json()
    assert max(stats["max_samples_per_pass"], passes_before) >= 2, stats  # patches of several uploads shared a pass
    print(f"\n6 concurrent uploads answered in {elapsed:.2f} s ({6 / elapsed:.1f} samples/s); worker {stats}")


def test_event_loop_stays_responsive_while_the_worker_runs(client, server, tmp_path):
    paths = [write_channel_files(tmp_path / str(i), f"busy{i}", cell_like_sample(160, 160, seed=40 + i)) for i in range(4)]
    ids = [upload_channels(client, p).json()["id"] for p in paths]
    latencies = []
    while client.get(f"/api/v1/predictions/{ids[-1]}").json()["status"] not in ("done", "failed"):
        started = time.perf_counter()
        assert client.get("/health").status_code == 200
        latencies.append(time.perf_counter() - started)
    assert max(latencies, default=0) < 1.0, latencies


def test_auth_tokens(models, tmp_path):
    settings = WebSettings(predictors=models, data_dir=tmp_path / "data", auth_tokens=["s3cret-token"])
    with LiveServer(settings) as live:
        stored = db.create_token(live.platform.sessions, "alice")
        with httpx.Client(base_url=live.url, timeout=30) as anonymous:
            assert anonymous.get("/health").status_code == 200
            for path in ("/", "/history", "/docs", "/openapi.json", "/api/v1/models", "/api/v1/predictions",
                         "/static/app.js", "/api/v1/predictions/x"):
                response = anonymous.get(path)
                assert response.status_code == 401, path
                assert "token" in response.json()["detail"]
            sample = write_channel_files(tmp_path, "a", cell_like_sample(64, 64))
            assert upload_channels(anonymous, sample).status_code == 401
            assert anonymous.get("/api/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        for token in ("s3cret-token", stored):
            with httpx.Client(base_url=live.url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as user:
                assert user.get("/api/v1/models").status_code == 200
                response = upload_channels(user, sample)
                assert response.status_code == 202
                assert wait_done(user, response.json()["id"])["status"] == "done"
        with httpx.Client(base_url=live.url, timeout=30) as browser:
            link = browser.get("/history", params={"q": "a b", "token": stored})
            assert link.status_code == 303 and "protloc_token" in link.headers["set-cookie"]
            assert link.headers["location"] == "/history?q=a+b"  # the token leaves the address
            assert browser.get(link.headers["location"]).status_code == 200
            assert browser.get("/api/v1/models").status_code == 200  # the cookie now signs in


def test_restart_keeps_finished_results_and_reruns_unfinished(models, tmp_path):
    data_dir = tmp_path / "data"
    database = f"sqlite:///{tmp_path / 'platform.db'}"
    image = cell_like_sample(96, 96, seed=50)
    other = cell_like_sample(96, 104, seed=51)
    with LiveServer(WebSettings(predictors=models, data_dir=data_dir, database_url=database)) as first:
        with httpx.Client(base_url=first.url, timeout=30) as client:
            finished_id = upload_channels(client, write_channel_files(tmp_path / "a", "a", image)).json()["id"]
            finished = wait_done(client, finished_id)
            assert finished["status"] == "done"
    # A server without a worker accepts uploads; they stay queued.
    with LiveServer(WebSettings(predictors=models, data_dir=data_dir, database_url=database, run_worker=False)) as second:
        with httpx.Client(base_url=second.url, timeout=30) as client:
            queued_id = upload_channels(client, write_channel_files(tmp_path / "b", "b", other)).json()["id"]
            running_id = upload_channels(client, write_channel_files(tmp_path / "c", "c", image)).json()["id"]
            lost_id = upload_channels(client, write_channel_files(tmp_path / "d", "d", cell_like_sample(64, 64, seed=52))).json()["id"]
            members = {}
            for index in range(2):
                for path in write_channel_files(tmp_path / f"z{index}", f"well{index}", cell_like_sample(64, 64, seed=60 + index)):
                    members[path.name] = path.read_bytes()
            batch_id = client.post("/api/v1/batches", files={"file": ("b.zip", make_zip(tmp_path / "b.zip", members).read_bytes())}).json()["id"]
            wait_batch(client, batch_id, until=lambda batch: batch["status"] != "extracting", timeout=30)
            time.sleep(0.3)
            assert client.get(f"/api/v1/predictions/{queued_id}").json()["status"] == "queued"
            assert client.get(f"/api/v1/predictions/{finished_id}").json() == finished
        with second.platform.sessions.begin() as session:
            # As if a worker had died mid-prediction: the row says "running".
            session.execute(update(db.Submission).where(db.Submission.id == running_id).values(status=db.RUNNING))
            # As if the process had died while unpacking the zip: its extraction runs again on start.
            session.execute(update(db.BatchJob).where(db.BatchJob.id == batch_id).values(status="extracting"))
            lost = session.get(db.Submission, lost_id)
        for entry in lost.files:  # a stored file gone from disk: the rerun fails with a reason
            second.platform.store.path_of(entry["sha256"], ".tif").unlink()
    with LiveServer(WebSettings(predictors=models, data_dir=data_dir, database_url=database)) as third:
        with httpx.Client(base_url=third.url, timeout=30) as client:
            assert client.get(f"/api/v1/predictions/{finished_id}").json() == finished  # untouched
            assert client.get(finished["images"]["composite"]).status_code == 200
            rerun = wait_done(client, queued_id)
            assert rerun["status"] == "done"
            got = np.array([rerun["probabilities"][c] for c in models["tiny"].classes])
            np.testing.assert_allclose(got, expected_probs(models["tiny"], other), atol=1e-5)
            assert wait_done(client, running_id)["status"] == "done"
            failed = wait_done(client, lost_id)
            assert failed["status"] == "failed" and "cannot read the stored sample" in failed["error"]
            assert "Prediction failed" in client.get(f"/submissions/{lost_id}").text
            batch = wait_batch(client, batch_id, until=lambda batch: batch["status"] == "finished", timeout=30)
            assert (batch["total"], batch["submitted"], batch["done"]) == (2, 2, 2)  # resumed, nothing twice
            with third.platform.sessions() as session:
                assert session.get(db.Submission, finished_id).attempts == 1


def test_expert_study_pages_are_mounted_behind_the_same_tokens(models, tmp_path):
    import tests.expert.test_data as expert_data  # the suite's own helpers: always there, never a reason to skip
    from protloc.expert.study import select_study

    select_study(expert_data.build_dataset(tmp_path / "data", size=40), tmp_path / "study", n=4, seed=1)
    settings = WebSettings(predictors=models, data_dir=tmp_path / "web", expert_study=tmp_path / "study",
                           expert_db_url=f"sqlite:///{tmp_path / 'answers.db'}", auth_tokens=["tok"])
    with LiveServer(settings) as live:
        with httpx.Client(base_url=live.url, timeout=30) as anonymous:
            assert anonymous.get("/expert/").status_code == 401
        with httpx.Client(base_url=live.url, timeout=30, headers={"Authorization": "Bearer tok"}) as user:
            page = user.get("/expert/")
            assert page.status_code == 200 and "<html" in page.text.lower()
            assert user.get("/expert/api/health").status_code == 200
            assert 'href="/expert/"' in user.get("/").text


@pytest.mark.slow
def test_protloc_serve_command(tmp_path, capsys):
    """The command line as the README shows it: a model file, a data folder, a token; then a clean stop."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    model = make_model_file(tmp_path / "served.pt")
    data_dir = tmp_path / "served-data"
    from protloc.cli import main

    assert main(["serve", "--data-dir", str(data_dir), "--create-token", "bob"]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 24
    assert main(["serve", "--model", str(tmp_path / "missing.pt"), "--data-dir", str(data_dir)]) == 2
    assert "no model" in capsys.readouterr().err
    cli = [sys.executable, "-m", "protloc", "serve"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [*cli, "--model", str(model), "--model", str(model), "--data-dir", str(data_dir), "--port", str(port),
         "--require-auth", "--max-upload-mb", "1", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, lambda: process.stdout.read() if process.poll() is not None else "")
        assert httpx.get(url + "/").status_code == 401
        headers = {"Authorization": f"Bearer {token}"}
        assert "<form" in httpx.get(url + "/", headers=headers).text
        keys = [m["key"] for m in httpx.get(url + "/api/v1/models", headers=headers).json()["models"]]
        assert keys == ["served", "served-2"]  # the same file twice gets two keys
        big = httpx.post(url + "/api/v1/predictions", headers=headers,
                         files=[("files", ("x.tif", b"\0" * (2 * 1024 * 1024)))])
        assert big.status_code == 413
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
    assert process.returncode == 0
