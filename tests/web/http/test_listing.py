"""The fast list and poll routes (issue 15, part 1): the same answers as the ORM listing, finished
submissions' JSON kept (and only theirs), simultaneous identical requests sharing one computation
that started after they arrived; pictures drawn only while the server is quiet."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from protloc.web.storage import db
from protloc.web.http.listing import Coalesced, FinishedItems
from protloc.web.pictures.idle import Activity, IdlePictures
from protloc.web.access import Viewer
from protloc.web.http.service import Platform
from protloc.web.settings import WebSettings

from tests.helpers.web import make_model_file

CLASSES = [f"c{i}" for i in range(13)]


@pytest.fixture()
def platform(tmp_path):
    import protloc

    predictor = protloc.load_model(make_model_file(tmp_path / "tiny.pt", crop_size=32))
    return Platform(WebSettings(predictors={"tiny": predictor}, data_dir=tmp_path / "data", run_worker=False))


def add(platform, name: str, status: str, owner: int | None = None, predicted: tuple[str, ...] = ()) -> str:
    with platform.sessions.begin() as session:
        row = db.Submission(model_key="tiny", input_kind="multichannel", filenames=name, height=8, width=8,
                            files=[{"filename": name, "sha256": "0" * 64, "kind": "tiff", "channel": None}],
                            status=status, owner_id=owner)
        session.add(row)
        session.flush()
        if status == db.DONE:
            session.add(result_of(row.id, predicted))
        return row.id


def result_of(submission_id: str, predicted: tuple[str, ...]) -> db.Result:
    return db.Result(submission_id=submission_id, classes=CLASSES, probabilities=[i / 20 for i in range(13)],
                     thresholds=[0.5] * 13, predicted=list(predicted), predicted_text="|" + "|".join(predicted) + "|",
                     maps=list(predicted[:1]), seconds=0.1)


def users(platform) -> tuple[int, int]:
    with platform.sessions.begin() as session:
        alice, bob = db.User(name="alice"), db.User(name="bob")
        session.add_all([alice, bob])
        session.flush()
        return alice.id, bob.id


def test_the_fast_list_answers_as_the_orm_listing_and_keeps_only_finished_items(platform):
    alice, bob = users(platform)
    done = [add(platform, f"plate1/a{i}.tif", db.DONE, alice, ("c3",) if i % 2 else ("c5", "c7")) for i in range(5)]
    queued = add(platform, "plate2/q.tif", db.QUEUED, alice)
    failed = add(platform, "plate2/f.tif", db.FAILED, bob)
    viewers = [None, Viewer(alice, "alice"), Viewer(bob, "bob"), Viewer(None, "operator", admin=True)]
    queries = [(None, None, None, 50, 0), ("plate1/", None, None, 50, 0), (None, "c3", None, 50, 0),
               (None, None, db.DONE, 2, 1), (None, None, None, 50, 100), ("a1", "c5", None, 50, 0)]
    for viewer in viewers:
        for q, cls, status, limit, offset in queries:
            expected_total, expected_items = platform.list_submissions(q, cls, status, limit, offset, viewer)
            answer = json.loads(platform.list_json(q, cls, status, limit, offset, viewer))
            assert answer == {"total": expected_total, "items": expected_items}, (viewer, q, cls, status)
    cached = {submission_id for submission_id in [*done, queued, failed] if platform.finished_items.get(submission_id)}
    assert cached == {*done, failed}  # the queued one may still change: never kept

    # The queued one finishes: the next list shows it done (nothing stale), and keeps it from now on.
    with platform.sessions.begin() as session:
        session.get(db.Submission, queued).status = db.DONE
        session.add(result_of(queued, ("c9",)))
    items = json.loads(platform.list_json(None, "c9", None, 50, 0, None))["items"]
    assert [(item["id"], item["status"], item["predicted"]) for item in items] == [(queued, "done", ["c9"])]
    assert platform.finished_items.get(queued) is not None


def test_one_submission_from_the_cache_still_hides_another_user_s(platform):
    alice, bob = users(platform)
    mine = add(platform, "mine.tif", db.DONE, alice, ("c1",))
    assert json.loads(platform.submission_json(mine, Viewer(alice, "alice"))) == platform.get_submission(mine)
    assert platform.finished_items.get(mine) is not None  # the second answer comes without a query
    for viewer in (Viewer(bob, "bob"), Viewer(None, "nobody")):
        with pytest.raises(Exception) as refused:
            platform.submission_json(mine, viewer)
        assert getattr(refused.value, "status", None) == 404
    assert json.loads(platform.submission_json(mine, Viewer(None, "operator", admin=True)))["id"] == mine
    with pytest.raises(Exception) as missing:
        platform.submission_json("0" * 16)
    assert getattr(missing.value, "status", None) == 404


def test_simultaneous_identical_requests_share_a_computation_that_started_after_they_came():
    coalesced = Coalesced()
    started, release = threading.Event(), threading.Event()
    calls = []

    def compute():
        calls.append(time.monotonic())
        if len(calls) == 1:
            started.set()
            release.wait(10)
        return len(calls)

    answers: dict[str, int] = {}
    first = threading.Thread(target=lambda: answers.__setitem__("first", coalesced.run("k", compute)))
    first.start()
    assert started.wait(10)
    # These arrive while the first computation runs: they must not get its (older) answer.
    later = [threading.Thread(target=lambda i=i: answers.__setitem__(f"later{i}", coalesced.run("k", compute)))
             for i in range(5)]
    for thread in later:
        thread.start()
    time.sleep(0.2)
    release.set()
    for thread in [first, *later]:
        thread.join(10)
    assert answers["first"] == 1
    assert {answers[f"later{i}"] for i in range(5)} == {2}  # one more computation for all five
    assert len(calls) == 2
    assert coalesced.run("other", lambda: "x") == "x" and not coalesced._slots

    def broken():
        raise ValueError("bad query")

    with pytest.raises(ValueError, match="bad query"):
        coalesced.run("k", broken)
    assert coalesced.run("k", compute) == 3  # an error is not kept either


def test_the_cache_is_bounded():
    items = FinishedItems(limit=3)
    for i in range(5):
        items.put(str(i), None, b"{}")
    assert len(items) == 3 and items.get("0") is None and items.get("4") == (None, b"{}")


class CountingRenderer:
    def __init__(self) -> None:
        self.drawn: list[str] = []
        self.forgotten: list[str] = []

    def render_all(self, submission_id: str, keep_going=lambda: True) -> bool:
        self.drawn.append(submission_id)
        return True

    def forget(self, submission_id: str) -> None:
        self.forgotten.append(submission_id)


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_pictures_wait_while_predictions_or_requests_do():
    renderer, activity = CountingRenderer(), Activity()
    busy = threading.Event()
    pictures = IdlePictures(renderer, busy=busy.is_set, activity=activity)
    pictures.start()
    try:
        if hasattr(os, "setpriority"):  # Linux: the drawing thread yields the CPU to requests
            assert wait_for(lambda: os.getpriority(os.PRIO_PROCESS, pictures._thread.native_id) > os.getpriority(os.PRIO_PROCESS, 0))
        busy.set()
        pictures.add("a")
        time.sleep(0.6)
        assert renderer.drawn == [] and len(pictures) == 1  # a prediction in hand: no picture
        busy.clear()
        activity.enter()  # a request in flight
        time.sleep(0.6)
        assert renderer.drawn == []
        activity.leave()
        assert wait_for(lambda: renderer.drawn == ["a"])
        assert renderer.forgotten == ["a"]  # the kept sample is let go once drawn
        assert wait_for(lambda: len(pictures) == 0)
    finally:
        pictures.stop()
