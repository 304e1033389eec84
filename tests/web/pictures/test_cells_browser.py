"""The result page's cells in headless Chromium (Debian's, through Playwright): the overlay, the
sortable per-cell table, a row click highlighting the cell and a click on the picture selecting the row."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"browser tests need Debian's chromium at {CHROMIUM}")]
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the python playwright package")
pytest.importorskip("skimage", reason="cells need scikit-image (the cells extra)")

from tests.helpers.web import LiveServer, cell_like_sample, make_model_file, upload_channels, wait_done, write_channel_files  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import protloc
    from protloc.web.settings import WebSettings

    folder = tmp_path_factory.mktemp("cells-browser")
    predictors = {"tiny": protloc.load_model(make_model_file(folder / "tiny.pt", seed=0))}
    with LiveServer(WebSettings(predictors=predictors, data_dir=folder / "data")) as live:
        yield live


@pytest.fixture()
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1200, "height": 1000})
        page = context.new_page()
        page.js_errors = []
        page.on("pageerror", lambda error: page.js_errors.append(str(error)))
        yield page
        browser.close()


def shown_column(page, index: int) -> list[str]:
    return page.eval_on_selector_all("#cell-table tbody tr", f"rows => rows.map((r) => r.cells[{index}].textContent.trim())")


def test_cell_overlay_table_sorting_and_selection(server, page, tmp_path):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answer = upload_channels(client, write_channel_files(tmp_path, "cellfield", cell_like_sample(320, 320, seed=11)))
        submission = wait_done(client, answer.json()["id"])
        cells = client.get(f"/api/v1/predictions/{submission['id']}/cells").json()["items"]
    assert len(cells) >= 3

    page.goto(f"{server.url}/submissions/{submission['id']}")
    page.wait_for_load_state("networkidle")
    assert page.locator("#cell-count").inner_text() == str(len(cells))
    assert page.eval_on_selector("#cell-overlay", "i => i.complete ? i.naturalWidth : 0") == 320
    assert page.locator("#cell-table tbody tr").count() == page.locator("#cell-shapes .cell-shape").count() == len(cells)
    assert [int(v) for v in shown_column(page, 0)] == [c["cell_id"] for c in cells]

    # sorting: area ascending, then descending; the top class alphabetically
    page.click('#cell-table th[data-key="area"]')
    assert [int(v) for v in shown_column(page, 4)] == sorted(c["area"] for c in cells)
    page.click('#cell-table th[data-key="area"]')
    assert [int(v) for v in shown_column(page, 4)] == sorted((c["area"] for c in cells), reverse=True)
    assert page.get_attribute('#cell-table th[data-key="area"]', "aria-sort") == "descending"

    # a row click highlights that cell's shape on the picture (and only that one)
    largest = max(cells, key=lambda c: c["area"])
    page.click(f'#cell-table tr[data-cell="{largest["cell_id"]}"]')
    assert page.eval_on_selector_all(".cell-shape.selected", "s => s.map((e) => e.dataset.cell)") == [str(largest["cell_id"])]
    assert page.eval_on_selector_all("tr.cell-row.selected", "s => s.map((e) => e.dataset.cell)") == [str(largest["cell_id"])]

    # a click on the picture, at another cell's centroid, selects that cell's row
    other = next(c for c in cells if c["cell_id"] != largest["cell_id"] and not c["border"])
    box = page.locator("#cell-shapes").bounding_box()
    page.mouse.click(box["x"] + other["centroid_x"] / 320 * box["width"], box["y"] + other["centroid_y"] / 320 * box["height"])
    assert page.eval_on_selector_all("tr.cell-row.selected", "s => s.map((e) => e.dataset.cell)") == [str(other["cell_id"])]
    assert page.eval_on_selector_all(".cell-shape.selected", "s => s.map((e) => e.dataset.cell)") == [str(other["cell_id"])]

    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#cells-card").screenshot(path=str(ARTIFACTS / "web-cells-section.png"))
    assert page.js_errors == []
