"""Cell outlines on the expert study's page: drawn from the sample's own segmentation, shown over all
four views on a key or a button, and a clear message (not a broken page) without scikit-image."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from protloc.visualization import outline_picture
from protloc.expert.study import load_study, select_study
from protloc.expert.web import create_expert_app

from tests.expert.test_data import build_dataset
from tests.expert.test_web import CHROMIUM, CHROMIUM_ARGS, ServerThread, free_port

pytestmark = pytest.mark.slow  # a real browser / server / viewer: left to the full run

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytest.importorskip("skimage", reason="cell outlines need scikit-image (the cells extra)")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("expert-cells")
    select_study(build_dataset(base / "data", size=96), base / "study", n=3, seed=5)
    return base / "study"


def test_outline_picture_is_the_cells_edges_on_transparent():
    cells = np.zeros((20, 30), np.int32)
    cells[2:9, 3:12] = 1
    cells[10:18, 15:28] = 2
    picture = outline_picture(cells)
    drawn = picture[..., 3] > 0
    assert picture.shape == (20, 30, 4) and (picture[drawn][:, :3] == 255).all()
    assert not drawn[cells == 0].any()  # nothing outside the cells
    assert drawn[2, 3:12].all() and drawn[10:18, 15].all()  # their edges
    assert not drawn[4:7, 5:10].any()  # not their insides


def test_cells_route_draws_the_samples_segmentation(study_dir, tmp_path, monkeypatch):
    from protloc.cells.segmentation import segment

    study = load_study(study_dir)
    client = TestClient(create_expert_app(study, f"sqlite:///{tmp_path / 'a.db'}"))
    state = client.post("/api/signin", json={"name": "Ada"}).json()
    assert state["cells_key"] == "c" and state["cells_missing"] is None
    item = client.get("/api/items/0").json()
    answer = client.get(item["cells"])
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(answer.content)))
    cells = segment(study.load_image(study.expert_order("Ada")[0])).cells
    assert cells.max() >= 1 and picture.shape == (*cells.shape, 4)
    assert np.array_equal(picture[..., 3] > 0, outline_picture(cells)[..., 3] > 0)
    assert client.get("/api/cells/0000000000000000.png").status_code == 404

    monkeypatch.setitem(sys.modules, "skimage", None)  # as if the cells extra were not installed
    other = client.get(client.get("/api/items/1").json()["cells"])  # not cached yet
    assert other.status_code == 503 and "pip install 'protloc[cells]'" in other.json()["detail"]
    assert "protloc[cells]" in client.get("/api/session").json()["cells_missing"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed")
def test_key_and_button_toggle_the_outlines_over_every_view(study_dir, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    port = free_port()
    server = ServerThread(create_expert_app(load_study(study_dir), f"sqlite:///{tmp_path / 'a.db'}"), port)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#name", "Grace")
            page.click("#signin")
            page.wait_for_function("document.body.dataset.ready === '1' && document.body.dataset.busy === '0'")
            assert page.locator(".view img.cells").count() == 0
            page.keyboard.press("c")
            page.wait_for_function("[...document.querySelectorAll('.view img.cells')].length === 4 && "
                                   "[...document.querySelectorAll('.view img.cells')].every(i => i.naturalWidth === 96)")
            assert page.get_attribute("#cells-toggle", "aria-pressed") == "true"
            # the outlines follow the views' zoom and pan
            page.locator(".view").first.hover()
            page.mouse.wheel(0, -300)
            transforms = page.eval_on_selector_all(".view img", "imgs => imgs.map(i => i.style.transform)")
            assert len(transforms) == 8 and len(set(transforms)) == 1
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "expert-cell-outlines.png"))
            # they stay on for the next sample, and the button takes them off
            page.keyboard.press("ArrowRight")
            page.wait_for_function("document.body.dataset.position === '1' && document.body.dataset.busy === '0'")
            assert page.locator(".view img.cells").count() == 4
            page.click("#cells-toggle")
            assert page.locator(".view img.cells").count() == 0 and page.get_attribute("#cells-toggle", "aria-pressed") == "false"
            assert errors == []
            browser.close()
    finally:
        server.stop()
