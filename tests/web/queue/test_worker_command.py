"""`protloc worker` on one machine (SQLite claims) and its bad input; PostgreSQL: tests/web/queue/test_workers_postgres.py."""

from __future__ import annotations

import io
import time

import httpx
import pytest
import tifffile

import protloc
from protloc.cli import main
from protloc.web.storage import db
from protloc.web.settings import WebSettings
from protloc.web.queue.jobs import DatabaseJobs
from protloc.web.queue.worker import PredictionWorker

from tests.helpers.web import LiveServer, cell_like_sample, make_model_file, wait_done


def test_serve_without_worker_queues_and_a_database_worker_finishes_each_once(tmp_path):
    predictor = protloc.load_model(make_model_file(tmp_path / "tiny.pt", crop_size=32))
    settings = WebSettings(predictors={"tiny": predictor}, data_dir=tmp_path / "data", run_worker=False)
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, cell_like_sample(48, 48, seed=1), photometric="minisblack")
        ids = [client.post("/api/v1/predictions", files=[("files", (f"s{i}.tif", buffer.getvalue()))]).json()["id"]
               for i in range(6)]
        time.sleep(0.3)
        assert {client.get(f"/api/v1/predictions/{i}").json()["status"] for i in ids} == {"queued"}
        assert client.get("/health").json()["worker"] == "off"
        sessions = db.open_database(settings.resolved_database_url())
        workers = [PredictionWorker({"tiny": predictor}, sessions, server.platform.store,
                                    jobs=DatabaseJobs(sessions, "", lease_seconds=30, poll_seconds=0.05)) for _ in range(2)]
        for worker in workers:
            worker.start()
        try:
            answers = [wait_done(client, i) for i in ids]
        finally:
            for worker in workers:
                worker.stop()
        assert all(a["status"] == "done" and len(a["probabilities"]) == 13 for a in answers)
        with sessions() as session:
            rows = [session.get(db.Submission, i) for i in ids]
        assert all(row.attempts == 1 and row.worker in {w.name for w in workers} for row in rows)
        assert sum(w.stats.samples for w in workers) == 6


def test_a_worker_leaves_submissions_of_models_it_does_not_have(tmp_path):
    sessions = db.open_database(f"sqlite:///{tmp_path / 'p.db'}")
    with sessions.begin() as session:
        session.add(db.Submission(id="other", model_key="elsewhere", input_kind="multichannel", files=[],
                                  filenames="x", height=8, width=8))
    jobs = DatabaseJobs(sessions, "me")
    jobs.model_keys = ["tiny"]
    assert jobs.claim(10) == []
    jobs.model_keys = ["elsewhere"]
    assert jobs.claim(10) == ["other"]


def test_worker_command_bad_input_is_one_line(tmp_path, capsys):
    assert main(["worker", "--db", "sqlite:///x.db", "--data-dir", str(tmp_path / "none")]) != 0
    err = capsys.readouterr().err.strip()
    assert "not a protloc data folder" in err and "Traceback" not in err and len(err.splitlines()) == 1
    (tmp_path / "data" / "blobs").mkdir(parents=True)
    assert main(["worker", "--db", "nosuchdb://x", "--data-dir", str(tmp_path / "data")]) != 0
    err = capsys.readouterr().err.strip()
    assert "cannot open the database" in err and "Traceback" not in err
    assert main(["worker", "--db", "sqlite:///x.db", "--lease", "0"]) != 0
    assert "must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--no-worker"], ["--render-eagerly"]])
def test_serve_flags_reach_the_settings(flag):
    import argparse

    from protloc.commands import serve

    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    settings = serve.settings_from_args(parser.parse_args(["serve", *flag]))
    assert settings.run_worker is (flag != ["--no-worker"]) and settings.eager_render is (flag == ["--render-eagerly"])
