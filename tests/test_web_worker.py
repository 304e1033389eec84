"""The web platform's prediction worker on its own (no HTTP server): a batch that raises leaves no
submission ``running`` (issue 11, defect 7), and the worker goes on with the next."""

from __future__ import annotations

import time

import numpy as np
import pytest

import protloc
from protloc.web import db
from protloc.web import worker as worker_module
from protloc.web.storage import BlobStore
from protloc.web.worker import PredictionWorker

from web_helpers import cell_like_sample, make_model_file


@pytest.fixture()
def platform(tmp_path, monkeypatch):
    predictor = protloc.load_model(make_model_file(tmp_path / "tiny.pt", crop_size=32))
    sessions = db.open_database(f"sqlite:///{tmp_path / 'platform.db'}")
    store = BlobStore(tmp_path / "store")
    # The stored files are the storage module's concern; the worker gets the decoded sample.
    image = cell_like_sample(48, 48, seed=1).astype(np.float32)
    monkeypatch.setattr(worker_module, "load_stored_sample", lambda _store, _kind, _files: image)
    worker = PredictionWorker({"tiny": predictor}, sessions, store, linger_seconds=0.2)
    yield predictor, sessions, worker
    worker.stop()


def add_submissions(sessions, count: int) -> list[str]:
    ids = []
    with sessions.begin() as session:
        for _ in range(count):
            row = db.Submission(model_key="tiny", input_kind="multichannel", files=[], filenames="x.tif",
                                height=48, width=48)
            session.add(row)
            session.flush()
            ids.append(row.id)
    return ids


def wait_finished(sessions, ids: list[str], timeout: float = 60.0) -> dict[str, db.Submission]:
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            rows = {i: session.get(db.Submission, i) for i in ids}
        if all(row.status in (db.DONE, db.FAILED) for row in rows.values()):
            return rows
        assert time.monotonic() < deadline, {i: row.status for i, row in rows.items()}
        time.sleep(0.05)


@pytest.mark.parametrize("where", ["predicted", "network"])
def test_a_batch_that_raises_marks_its_rows_failed_and_the_worker_goes_on(platform, monkeypatch, where):
    predictor, sessions, worker = platform

    def broken(*_args, **_kwargs):
        raise RuntimeError("simulated failure\nwith a second line")

    if where == "predicted":  # after the forward pass, outside every per-step guard before the fix
        monkeypatch.setattr(predictor, "predicted", broken)
    else:  # the batching itself
        monkeypatch.setattr(worker_module, "batched_probabilities", broken)
    ids = add_submissions(sessions, 3)
    worker.start()
    for submission_id in ids:
        worker.submit(submission_id)
    rows = wait_finished(sessions, ids)
    for row in rows.values():
        assert row.status == db.FAILED and row.finished_at is not None
        assert row.error == "prediction failed: RuntimeError: simulated failure"
    assert worker.alive and worker.stats.failures >= 3

    monkeypatch.undo()  # repaired: the next submission is predicted
    monkeypatch.setattr(worker_module, "load_stored_sample",
                        lambda *_: cell_like_sample(48, 48, seed=1).astype(np.float32))
    (good,) = add_submissions(sessions, 1)
    worker.submit(good)
    assert wait_finished(sessions, [good])[good].status == db.DONE
