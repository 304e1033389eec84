"""The pages in headless Chromium (Debian's /usr/bin/chromium through Playwright) against a live server."""

from __future__ import annotations

import base64
import csv
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"browser tests need Debian's chromium at {CHROMIUM}")]

sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the python playwright package")

from tests.helpers.web import LiveServer, cell_like_sample, make_model_file, write_channel_files  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import protloc
    from protloc.web.settings import WebSettings

    folder = tmp_path_factory.mktemp("browser")
    predictors = {"tiny": protloc.load_model(make_model_file(folder / "tiny.pt", seed=0))}
    with LiveServer(WebSettings(predictors=predictors, data_dir=folder / "data")) as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        yield instance
        instance.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.js_errors = []
    page.on("pageerror", lambda error: page.js_errors.append(str(error)))
    yield page
    context.close()


def drop_files(page, selector: str, paths: list[Path]) -> None:
    """A real drop event carrying File objects, as when files are dragged from a file manager."""
    files = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in paths]
    page.evaluate(
        """([selector, files]) => {
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], f.name, { type: "image/tiff" }));
            }
            const zone = document.querySelector(selector);
            zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: transfer, bubbles: true, cancelable: true }));
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }""",
        [selector, files],
    )


def test_upload_see_annotation_find_in_history_and_download_csv(server, page, tmp_path):
    image = cell_like_sample(112, 128, seed=7)
    paths = write_channel_files(tmp_path, "browsercell", image)
    # One file without an HPA colour in its name: the page must ask for its channel.
    unnamed = tmp_path / "antibody-stain.tif"
    paths[3].rename(unnamed)
    paths[3] = unnamed

    page.goto(server.url + "/")
    drop_files(page, "#drop-zone", paths)
    selects = page.locator("select.channel-select")
    assert selects.count() == 4
    assert [selects.nth(i).input_value() for i in range(4)] == ["nucleus", "microtubules", "er", ""]
    assert page.locator("#submit-button").is_disabled()
    assert "missing: protein" in page.locator("#upload-error").inner_text()
    selects.nth(3).select_option("protein")
    assert page.locator("#submit-button").is_enabled()

    page.click("#submit-button")
    page.wait_for_url("**/submissions/*", timeout=60_000)
    submission_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    api = page.request.get(f"{server.url}/api/v1/predictions/{submission_id}").json()
    assert api["status"] == "done"

    rows = page.locator("#bars tr.bar-row")
    assert rows.count() == 13
    shown = [float(rows.nth(i).get_attribute("data-probability")) for i in range(13)]
    assert shown == sorted(shown, reverse=True)
    highlighted = [rows.nth(i).get_attribute("data-class") for i in range(13)
                   if "predicted" in (rows.nth(i).get_attribute("class") or "")]
    assert sorted(highlighted) == sorted(api["predicted"])
    for cls, p in api["probabilities"].items():
        assert float(page.locator(f'#bars tr[data-class="{cls}"]').get_attribute("data-probability")) == pytest.approx(p, abs=1e-4)
    maps = page.locator(".maps figure.map")
    assert maps.count() == len(api["maps"]) >= 1
    assert sorted(maps.locator("figcaption").all_inner_texts()) == sorted(api["maps"])
    # every image really loaded (composite, four channels, the maps, the cells' overlay if cells were found)
    page.wait_for_load_state("networkidle")
    widths = page.eval_on_selector_all("main img", "imgs => imgs.map((i) => i.complete ? i.naturalWidth : 0)")
    overlay = 1 if api["cells"]["count"] else 0
    assert len(widths) == 5 + len(api["maps"]) + overlay and all(w == 128 for w in widths), widths

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-result-page.png"), full_page=True)

    with page.expect_download() as download_info:
        page.click("#download-csv")
    rows_csv = list(csv.DictReader(io.StringIO(Path(download_info.value.path()).read_text())))
    assert [r["id"] for r in rows_csv if r["level"] == "image"] == [submission_id]
    assert float(rows_csv[0]["Nucleus"]) == pytest.approx(api["probabilities"]["Nucleus"], abs=1e-5)

    page.goto(server.url + "/history")
    page.fill("#search", "antibody-stain")
    page.click(".search button[type=submit]")
    page.wait_for_url("**/history?*")
    assert page.locator("#history tbody tr").count() == 1
    assert page.locator(f'#history tr[data-id="{submission_id}"]').count() == 1
    # the class filter: a predicted class keeps it, a class it was not given drops it
    wanted = api["predicted"][0] if api["predicted"] else None
    absent = next(c for c in api["classes"] if c not in api["predicted"])
    page.select_option("#class-filter", absent)
    page.click(".search button[type=submit]")
    page.wait_for_url("**/history?*")
    assert page.locator(f'#history tr[data-id="{submission_id}"]').count() == 0
    if wanted:
        page.select_option("#class-filter", wanted)
        page.click(".search button[type=submit]")
        page.wait_for_url("**/history?*")
        assert page.locator(f'#history tr[data-id="{submission_id}"]').count() == 1
    page.click(f'#history tr[data-id="{submission_id}"] a')
    page.wait_for_url(f"**/submissions/{submission_id}")
    assert page.js_errors == []


def test_single_multichannel_file_and_wrong_input_message(server, page, tmp_path):
    import tifffile

    image = cell_like_sample(96, 96, seed=8)
    multi = tmp_path / "whole.tif"
    tifffile.imwrite(multi, image, photometric="minisblack")
    three = write_channel_files(tmp_path, "three", image)[:3]

    page.goto(server.url + "/")
    page.set_input_files("#file-input", [str(p) for p in three])
    assert "Give 4 channel files or one multi-channel file (you gave 3)" in page.locator("#upload-error").inner_text()
    assert page.locator("#submit-button").is_disabled()
    for _ in range(3):
        page.locator("#file-table button.link").first.click()
    page.set_input_files("#file-input", [str(multi)])
    assert "multi-channel" in page.locator("#file-table").inner_text()
    page.click("#submit-button")
    page.wait_for_url("**/submissions/*", timeout=60_000)
    assert page.locator("#bars tr.bar-row").count() == 13

    # a file the server refuses: the reason is shown on the page
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    page.goto(server.url + "/")
    page.set_input_files("#file-input", [str(text)])
    page.click("#submit-button")
    page.wait_for_selector("#upload-error:not([hidden])")
    assert "not an image" in page.locator("#upload-error").inner_text()
    assert page.js_errors == []


def test_batch_upload_shows_progress(server, page, tmp_path):
    archive = tmp_path / "plate.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for index in range(3):
            for path in write_channel_files(tmp_path / str(index), f"well{index}", cell_like_sample(96, 96, seed=60 + index)):
                zf.write(path, f"plate/{path.name}")
    page.goto(server.url + "/")
    page.set_input_files("#batch-input", str(archive))
    page.click("#batch-button")
    page.wait_for_url("**/batches/*", timeout=30_000)
    page.wait_for_function("document.querySelector('#batch-summary').textContent.startsWith('finished')", timeout=60_000)
    assert "3 done, 0 failed" in page.locator("#batch-summary").inner_text()
    assert page.locator("#batch-rows tr").count() == 3
    assert np.isclose(float(page.eval_on_selector("#batch-fill", "e => parseFloat(e.style.width)")), 100.0)
    with page.expect_download() as download_info:
        page.click("#download-batch")
    with zipfile.ZipFile(download_info.value.path()) as results:
        assert "results.csv" in results.namelist()
        rows = list(csv.DictReader(io.StringIO(results.read("results.csv").decode())))
    assert sorted(r["name"] for r in rows if r["level"] == "image") == [f"plate/well{i}" for i in range(3)]
    assert page.js_errors == []


def test_api_docs_work_offline(server, page):
    """Swagger UI from the server's own files: every request the page makes stays on the server."""
    from urllib.parse import urlparse

    outside = []

    def only_local(route):
        if urlparse(route.request.url).hostname not in ("127.0.0.1", "localhost"):
            outside.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    page.route("**/*", only_local)
    page.goto(server.url + "/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    assert page.locator(".opblock").count() >= 10
    assert "/api/v1/predictions" in page.locator("#swagger-ui").inner_text()
    assert outside == [] and page.js_errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-api-docs.png"))
