"""The web platform's prediction worker on its own (no HTTP server): a batch that raises leaves no
submission ``running`` (issue 11, defect 7), and the worker goes on with the next; with cells on, a
GapNet-PL submission costs one whole-image pass, its probabilities those of that pass."""

from __future__ import annotations

import time

import numpy as np
import pytest

import protloc
from protloc.inference.gapnet_pl_fast import FastGapNetPL
from protloc.web.storage import db
from protloc.web.queue import worker as worker_module
from protloc.web.storage.store import BlobStore
from protloc.web.queue.worker import PredictionWorker

from tests.helpers.web import add_submissions, cell_like_sample, make_model_file


@pytest.fixture()
def platform(tmp_path, monkeypatch):
    predictor = protloc.load_model(make_model_file(tmp_path / "tiny.pt", crop_size=32))
    sessions = db.open_database(f"sqlite:///{tmp_path / 'platform.db'}")
    store = BlobStore(tmp_path / "store")
    # The stored files are the storage module's concern; the worker gets the decoded sample.
    image = cell_like_sample(48, 48, seed=1).astype(np.float32)
    monkeypatch.setattr(worker_module, "load_stored_sample", lambda _store, _kind, _files, _max_pixels=None: image)
    worker = PredictionWorker({"tiny": predictor}, sessions, store, linger_seconds=0.2)
    yield predictor, sessions, worker
    worker.stop()


def wait_finished(sessions, ids: list[str], timeout: float = 60.0) -> dict[str, db.Submission]:
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            rows = {i: session.get(db.Submission, i) for i in ids}
        if all(row.status in (db.DONE, db.FAILED) for row in rows.values()):
            return rows
        assert time.monotonic() < deadline, {i: row.status for i, row in rows.items()}
        time.sleep(0.05)


@pytest.mark.parametrize("where", ["predicted", "network", "patches"])
def test_a_batch_that_raises_marks_its_rows_failed_and_the_worker_goes_on(platform, monkeypatch, where):
    predictor, sessions, worker = platform

    def broken(*_args, **_kwargs):
        raise RuntimeError("simulated failure\nwith a second line")

    if where == "predicted":  # after the forward pass, outside every per-step guard before the fix
        monkeypatch.setattr(predictor, "predicted", broken)
    elif where == "network":  # the one whole-image pass (cells on) and its fallback both fail
        monkeypatch.setattr(FastGapNetPL, "_blocks", broken)
    else:  # the batched patches (--no-cells)
        worker.cells.enabled = False
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


def count_network_passes(monkeypatch) -> list[tuple[int, ...]]:
    """The input shape of every pass through GapNet-PL's fast path (patches and whole images alike)
    that the prediction thread makes (the pictures' maps, drawn after done, have their own thread)."""
    import threading

    passes = []
    original = FastGapNetPL._blocks

    def counted(self, x):
        if threading.current_thread().name.startswith("protloc-prediction-worker"):
            passes.append(tuple(x.shape))
        return original(self, x)

    monkeypatch.setattr(FastGapNetPL, "_blocks", counted)
    return passes


def result_of(sessions, submission_id: str) -> db.Result:
    with sessions() as session:
        return session.get(db.Result, submission_id)


def test_cells_on_one_whole_image_pass_gives_the_probabilities_and_the_cells(platform, monkeypatch):
    """GapNet-PL with cells: ONE pass per submission, its probabilities the whole-image ones; with
    --no-cells the covering patches as before (48² image, 32² patches: four of them)."""
    predictor, sessions, worker = platform
    image = cell_like_sample(48, 48, seed=1).astype(np.float32)
    passes = count_network_passes(monkeypatch)
    worker.start()
    (one,) = add_submissions(sessions, 1)
    worker.submit(one)
    assert wait_finished(sessions, [one])[one].status == db.DONE
    assert passes == [(1, 4, 48, 48)] and worker.stats.forward_passes == 1
    result = result_of(sessions, one)
    assert result.probabilities_from == "whole-image" and result.cells_count is not None
    whole = predictor.predict_proba(image, whole_image=True)
    patches = predictor.predict_proba(image)
    np.testing.assert_allclose(result.probabilities, whole, atol=1e-5)
    assert np.abs(whole - patches).max() > 1e-4  # the two modes differ here: the check above can fail

    worker.cells.enabled = False  # --no-cells: the paper's covering patches, no cells row
    passes.clear()
    (two,) = add_submissions(sessions, 1)
    worker.submit(two)
    assert wait_finished(sessions, [two])[two].status == db.DONE
    assert passes and all(shape[1:] == (4, 32, 32) for shape in passes) and sum(s[0] for s in passes) == 4
    result = result_of(sessions, two)
    assert result.probabilities_from == "patches" and result.cells_count is None
    np.testing.assert_allclose(result.probabilities, patches, atol=1e-5)


def test_a_failed_segmentation_still_gives_whole_image_probabilities(platform, monkeypatch):
    """Cells that cannot be found before the pass: a note, and the probabilities of a plain whole-image pass."""
    import protloc.cells.pipeline as pipeline

    predictor, sessions, worker = platform

    def broken(*_args, **_kwargs):
        raise ValueError("segmentation broke")

    monkeypatch.setattr(pipeline, "analyse_image", broken)
    passes = count_network_passes(monkeypatch)
    worker.start()
    (one,) = add_submissions(sessions, 1)
    worker.submit(one)
    assert wait_finished(sessions, [one])[one].status == db.DONE
    result = result_of(sessions, one)
    assert result.cells_note == "cell segmentation failed: segmentation broke" and len(passes) == 1
    assert result.probabilities_from == "whole-image"
    np.testing.assert_allclose(result.probabilities, predictor.predict_proba(
        cell_like_sample(48, 48, seed=1).astype(np.float32), whole_image=True), atol=1e-5)
