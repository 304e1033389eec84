"""Probabilities first (issue 15, part 1): a submission is done when its probabilities are stored;
its pictures are drawn afterwards (on first view, or by the idle worker), at display size unless full
resolution is asked for, and cached; ``eager_render`` keeps the old path (pictures before done)."""

from __future__ import annotations

import io
import threading

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

import protloc
from protloc import visualization
from protloc.web.pictures import renders
from protloc.web.settings import WebSettings

from tests.helpers.web import LiveServer, cell_like_sample, make_model_file, wait_done


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return protloc.load_model(make_model_file(tmp_path_factory.mktemp("models") / "tiny.pt", crop_size=32))


def tiff_payload(height: int, width: int, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, cell_like_sample(height, width, seed=seed), photometric="minisblack")
    return buffer.getvalue()


def post(client, payload: bytes) -> str:
    response = client.post("/api/v1/predictions", files=[("files", ("field.tif", payload))])
    assert response.status_code == 202, response.text
    return response.json()["id"]


def png_size(content: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(content)).size


@pytest.fixture()
def held_back(monkeypatch):
    """The idle worker's rendering waits until released, so that 'done before pictures' is observable."""
    release = threading.Event()
    original = renders.Renderer.render_all

    def waiting(self, submission_id, image=None, keep_going=lambda: True):
        release.wait(60)
        return original(self, submission_id, image, keep_going)

    monkeypatch.setattr(renders.Renderer, "render_all", waiting)
    yield release
    release.set()


def test_done_before_any_picture_then_drawn_on_first_view_at_display_size(predictor, tmp_path, monkeypatch, held_back):
    monkeypatch.setattr(visualization, "DISPLAY_SIZE", 100)
    settings = WebSettings(predictors={"tiny": predictor}, data_dir=tmp_path / "data")
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        sid = post(client, tiff_payload(96, 250, seed=2))
        data = wait_done(client, sid)
        assert data["status"] == "done" and len(data["probabilities"]) == 13
        folder = server.platform.store.render_dir(sid)
        # done, and not one picture drawn yet (the cells' label image, stored with the probabilities, is no picture)
        assert not folder.exists() or not any(renders.is_image_name(p.name) for p in folder.iterdir())

        page = client.get(f"/submissions/{sid}")
        assert page.status_code == 200 and 'class="bar-row' in page.text  # the probabilities, at once

        composite = client.get(data["images"]["composite"])
        assert composite.status_code == 200 and composite.headers["content-type"] == "image/png"
        assert png_size(composite.content) == (250 // 3, 96 // 3)  # display size: 250 px -> factor 3 at 100
        (map_url,) = list(data["maps"].values())[:1]
        assert png_size(client.get(map_url).content) == (83, 32)
        full = client.get(data["images"]["composite"], params={"full": "true"})
        assert png_size(full.content) == (250, 96)
        assert (folder / "composite.png").is_file() and (folder / "full" / "composite.png").is_file()
        # cached: the second answer is the same file, not drawn again
        mtime = (folder / "composite.png").stat().st_mtime_ns
        assert client.get(data["images"]["composite"]).content == composite.content
        assert (folder / "composite.png").stat().st_mtime_ns == mtime


def test_the_idle_worker_draws_the_pictures_before_anyone_looks(predictor, tmp_path):
    settings = WebSettings(predictors={"tiny": predictor}, data_dir=tmp_path / "data")
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        sid = post(client, tiff_payload(64, 64, seed=3))
        data = wait_done(client, sid)
        folder = server.platform.store.render_dir(sid)
        index = data["classes"].index(list(data["maps"])[0])
        expected = ["composite.png", *(f"channel-{c}.png" for c in protloc.data.channels.CHANNELS), f"map-{index}.png"]
        for _ in range(600):  # the count goes up just after the last file is written
            if all((folder / name).is_file() for name in expected) and server.platform.worker.stats.rendered:
                break
            threading.Event().wait(0.1)
        assert all((folder / name).is_file() for name in expected), sorted(p.name for p in folder.iterdir())
        assert server.platform.worker.stats.rendered >= 1


def test_eager_render_draws_full_size_pictures_before_done(predictor, tmp_path, monkeypatch):
    monkeypatch.setattr(visualization, "DISPLAY_SIZE", 100)  # ignored by the old path: it drew at full size
    settings = WebSettings(predictors={"tiny": predictor}, data_dir=tmp_path / "data", eager_render=True)
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        sid = post(client, tiff_payload(96, 250, seed=4))
        data = wait_done(client, sid)
        folder = server.platform.store.render_dir(sid)
        assert data["status"] == "done" and (folder / "composite.png").is_file()
        assert png_size((folder / "composite.png").read_bytes()) == (250, 96)


def test_pictures_of_unfinished_or_unknown_submissions_are_404(predictor, tmp_path):
    settings = WebSettings(predictors={"tiny": predictor}, data_dir=tmp_path / "data", run_worker=False)
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        sid = post(client, tiff_payload(48, 48))
        answer = client.get(f"/api/v1/predictions/{sid}/images/composite.png")
        assert answer.status_code == 404 and "not done" in answer.json()["detail"]
        assert client.get(f"/api/v1/predictions/{sid}/images/map-99.png").status_code == 404
        assert client.get(f"/api/v1/predictions/{sid}/images/other.png").status_code == 404


def test_shrink_is_a_block_mean():
    image = np.arange(4 * 5 * 7, dtype=np.float32).reshape(4, 5, 7)
    small = visualization.shrink(image, 2)
    assert small.shape == (4, 2, 3)
    assert small[1, 1, 2] == pytest.approx(image[1, 2:4, 4:6].mean())
    assert visualization.display_factor(2048, 2048, full=False) == 2 and visualization.display_factor(2048, 2048, full=True) == 1


def test_a_prediction_arriving_mid_drawing_goes_first_and_the_pictures_resume_when_quiet():
    """Between a submission's pictures the drawing thread asks whether the server is still quiet; if
    not, the rest waits at the head of the queue (and the decoded sample is kept for it)."""
    from protloc.web.pictures.idle import IdlePictures

    state = {"busy": False}
    started, finished, forgotten, drawn = [], [], [], []

    class Renderer:
        def render_all(self, submission_id, keep_going):
            started.append(submission_id)
            if len(started) == 1:  # a prediction arrives after the first picture
                state["busy"] = True
                threading.Timer(0.3, lambda: state.update(busy=False)).start()
            if not keep_going():
                return False
            finished.append(submission_id)
            return True

        def forget(self, submission_id):
            forgotten.append(submission_id)

    pictures = IdlePictures(Renderer(), busy=lambda: state["busy"], on_drawn=lambda: drawn.append(1))
    pictures.start()
    try:
        pictures.add("s1")
        for _ in range(100):
            if finished:
                break
            threading.Event().wait(0.05)
    finally:
        pictures.stop()
    assert started == ["s1", "s1"] and finished == ["s1"]  # interrupted once, then completed
    assert forgotten == ["s1"] and drawn == [1]  # the sample was kept until its pictures were all drawn
