"""Issue 15's upload throughput: worker lanes side by side, the segmentation beside the forward
pass, and long polls (``GET /api/v1/predictions/{id}?wait=S``) instead of many short ones."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

import protloc
from protloc.cells.pipeline import analyse_image
from protloc.web.storage import db
from protloc.web.queue import worker as worker_module
from protloc.web.settings import WebSettings
from protloc.web.queue.completion import Completions
from protloc.web.storage.store import BlobStore
from protloc.web.queue.worker import PredictionWorker

from tests.helpers.web import (LiveServer, add_submissions, cell_like_sample, make_model_file, upload_channels,
                         write_channel_files)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return protloc.load_model(make_model_file(tmp_path_factory.mktemp("model") / "tiny.pt", crop_size=32))


def test_segmenting_beside_the_forward_pass_gives_the_same_cells_and_probabilities(predictor):
    image = cell_like_sample(160, 160, seed=0).astype(np.float32)
    alone = analyse_image(predictor, image, "a", pixel_size_um=0.1)
    with ThreadPoolExecutor(1) as beside:
        together = analyse_image(predictor, image, "a", pixel_size_um=0.1, segment_beside=beside)
    assert alone.cells.max() >= 2
    np.testing.assert_array_equal(together.cells, alone.cells)
    np.testing.assert_array_equal(together.predictions.cell_ids, alone.predictions.cell_ids)
    np.testing.assert_allclose(together.predictions.probabilities, alone.predictions.probabilities, rtol=1e-6)
    np.testing.assert_allclose(together.predictions.image_probabilities, alone.predictions.image_probabilities,
                               rtol=1e-6)


def test_a_failing_segmentation_beside_the_pass_is_raised(predictor, monkeypatch):
    from protloc.cells import segmentation

    def broken(*_args, **_kwargs):
        raise ValueError("segmentation broke")

    monkeypatch.setattr(segmentation, "segment", broken)
    with ThreadPoolExecutor(1) as beside, pytest.raises(ValueError, match="segmentation broke"):
        analyse_image(predictor, cell_like_sample(64, 64).astype(np.float32), segment_beside=beside)


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_lanes_take_submissions_side_by_side_and_finish_each_once(predictor, tmp_path, monkeypatch, lanes):
    sessions = db.open_database(f"sqlite:///{tmp_path / 'platform.db'}")
    image = cell_like_sample(48, 48, seed=1).astype(np.float32)
    monkeypatch.setattr(worker_module, "load_stored_sample", lambda _store, _kind, _files, _max_pixels=None: image)
    running, most, seen, lock = [0], [0], [], threading.Lock()
    finished = []
    worker = PredictionWorker({"tiny": predictor}, sessions, BlobStore(tmp_path / "store"), lanes=lanes,
                              on_finished=finished.append)
    original = worker.cells.compute_with_probabilities

    def slow(predictor_, submission_id, *args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            seen.append(submission_id)
        try:
            time.sleep(0.3)  # long enough that every lane holds one at once
            return original(predictor_, submission_id, *args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(worker.cells, "compute_with_probabilities", slow)
    ids = add_submissions(sessions, 2 * lanes)
    worker.start()
    try:
        for submission_id in ids:
            worker.submit(submission_id)
        deadline = time.monotonic() + 60
        while worker.stats.samples < len(ids) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    assert not worker.alive  # every lane stopped
    with sessions() as session:
        assert {session.get(db.Submission, i).status for i in ids} == {db.DONE}
    assert sorted(seen) == sorted(ids) and worker.stats.samples == len(ids)  # each exactly once
    assert sorted(finished) == sorted(ids)  # and announced once
    assert most[0] == lanes


def test_a_worker_needs_a_lane(predictor, tmp_path):
    sessions = db.open_database(f"sqlite:///{tmp_path / 'platform.db'}")
    with pytest.raises(ValueError, match="at least one lane"):
        PredictionWorker({"tiny": predictor}, sessions, BlobStore(tmp_path / "store"), lanes=0)


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_long_poll_wakes_when_announced_and_not_before():
    completions = Completions()
    state = {"finished": False, "looks": 0}

    def look():
        state["looks"] += 1
        return (b"done" if state["finished"] else b"running"), state["finished"]

    def finish_later():
        time.sleep(0.3)
        state["finished"] = True
        completions.announce("s1")

    async def main():
        threading.Thread(target=finish_later).start()
        start = time.monotonic()
        answer = await completions.wait("s1", 10, look)
        return answer, time.monotonic() - start

    answer, seconds = run(main())
    assert answer == b"done" and 0.25 < seconds < 5
    assert state["looks"] == 2  # one look at first, one after the announcement: no polling in between
    assert completions.waiting() == 0


def test_a_long_poll_answers_after_its_time_with_the_state_then():
    completions = Completions()

    async def main():
        start = time.monotonic()
        answer = await completions.wait("s2", 0.3, lambda: (b"queued", False))
        return answer, time.monotonic() - start

    answer, seconds = run(main())
    assert answer == b"queued" and 0.25 < seconds < 3


def test_a_long_poll_looks_again_when_other_processes_finish_without_announcing():
    completions = Completions(recheck_seconds=0.05)
    started = time.monotonic()

    def look():
        finished = time.monotonic() - started > 0.3
        return (b"done" if finished else b"running"), finished

    async def main():
        return await completions.wait("s3", 20, look)

    assert run(main()) == b"done"
    assert time.monotonic() - started < 5


@pytest.fixture(scope="module")
def server(predictor, tmp_path_factory):
    settings = WebSettings(predictors={"tiny": predictor}, data_dir=tmp_path_factory.mktemp("web-data"))
    with LiveServer(settings) as live:
        yield live


def test_one_long_poll_gets_the_finished_submission(server, tmp_path):
    paths = write_channel_files(tmp_path, "57639_1283_B2_10", cell_like_sample(64, 64, seed=2))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        created = upload_channels(client, paths)
        assert created.status_code in (200, 201, 202), created.text
        sid = created.json()["id"]
        start = time.monotonic()
        answer = client.get(f"/api/v1/predictions/{sid}", params={"wait": 30})
        assert answer.status_code == 200
        assert answer.json()["status"] == "done" and time.monotonic() - start < 25
        assert answer.json()["probabilities"]


@pytest.mark.parametrize("wait", ["-1", "61", "soon"])
def test_a_bad_wait_is_refused_with_a_reason(server, wait):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answer = client.get("/api/v1/predictions/abc", params={"wait": wait})
    assert answer.status_code == 422 and "wait" in answer.text


def test_a_long_poll_on_no_submission_is_404_at_once(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        start = time.monotonic()
        answer = client.get("/api/v1/predictions/nosuchthing", params={"wait": 30})
    assert answer.status_code == 404 and time.monotonic() - start < 10


def test_a_lane_takes_one_when_others_could_start_and_a_fair_share_of_a_backlog(predictor, tmp_path):
    sessions = db.open_database(f"sqlite:///{tmp_path / 'platform.db'}")
    store = BlobStore(tmp_path / "store")
    single = PredictionWorker({"tiny": predictor}, sessions, store, lanes=1, max_samples=16)
    assert single._take_at_most() == 16  # one lane: batch across uploads as before
    two = PredictionWorker({"tiny": predictor}, sessions, store, lanes=2, max_samples=16)
    assert two._take_at_most() == 1  # cells on, GapNet-PL: one pass per sample, nothing to batch
    two.cells.enabled = False  # --no-cells: covering patches, which batch
    assert two._take_at_most() == 1  # nothing waits: the next submission alone, to the free lane
    for index in range(6):
        two.jobs.put(f"s{index}")
    assert two._take_at_most() == 3  # a backlog: half of it each


def test_a_waiting_long_poll_does_not_count_as_server_activity():
    """The picture thread draws once no request is in flight: one that only waits must not hold it back."""
    from protloc.web.pictures.idle import Activity

    activity = Activity()
    completions = Completions(activity=activity)
    seen = []

    async def main():
        activity.enter()  # the request, as the middleware counts it
        waiting = asyncio.ensure_future(completions.wait("s4", 0.5, lambda: (b"running", False)))
        await asyncio.sleep(0.2)
        seen.append(activity.in_flight)  # while it waits
        await waiting
        seen.append(activity.in_flight)  # answered: in flight again until the middleware's leave
        activity.leave()

    run(main())
    assert seen == [0, 1] and activity.in_flight == 0


def test_workers_with_a_database_queue_share_a_backlog_too(predictor, tmp_path):
    from protloc.web.queue.jobs import DatabaseJobs

    sessions = db.open_database(f"sqlite:///{tmp_path / 'platform.db'}")
    worker = PredictionWorker({"tiny": predictor}, sessions, BlobStore(tmp_path / "store"), lanes=2, max_samples=16,
                              jobs=DatabaseJobs(sessions, ""), cells=False)
    assert worker._take_at_most() == 1
    add_submissions(sessions, 6)
    assert worker._take_at_most() == 3  # not all 16 to the first lane that looks


def test_blas_stays_at_one_thread_while_any_worker_with_lanes_runs(tmp_path):
    """In a fresh process, as a server is (BLAS limits are process-wide state)."""
    import subprocess
    import sys

    script = tmp_path / "blas.py"
    script.write_text(
        "from threadpoolctl import threadpool_info\n"
        "from protloc.web.queue.lanes import Lanes\n"
        "def blas():\n"
        "    return sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'})\n"
        "first, second = Lanes(2), Lanes(2)\n"
        "first.start(lambda lane: None, 'a')\n"
        "second.start(lambda lane: None, 'b')\n"
        "during = blas()\n"
        "first.stop(5)\n"
        "one_left = blas()\n"
        "second.stop(5)\n"
        "print(during, one_left, blas())\n")
    import os

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}  # a known starting point on any machine
    answer = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert answer.returncode == 0, answer.stderr[-2000:]
    during, one_left, after = answer.stdout.strip().split("] ")
    assert during == "[1" and one_left == "[1"  # held while any worker with lanes runs
    assert after == "[2]"  # restored once the last one stopped
