"""Cells on the platform: computed with the probabilities by the library call, served by the API
(paginated, sortable), in the CSV/JSON downloads and the batch zip; off with --no-cells; a clear note
(never a failed submission) when scikit-image is missing, the model is not GapNet-PL or the
segmentation fails."""

from __future__ import annotations

import csv
import io
import sys
import zipfile

import httpx
import numpy as np
import pytest
from PIL import Image

import protloc
from protloc.cli import build_parser
from protloc.web.storage import db
from protloc.web.settings import WebSettings
from protloc.web.pictures.cells import OFF_NOTE, PROBABILITIES_FROM, CellsStage

from tests.helpers.web import (LiveServer, cell_like_sample, make_model_file, upload_channels, wait_batch, wait_done,
                               write_channel_files)

pytest.importorskip("skimage", reason="cells need scikit-image (the cells extra)")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return protloc.load_model(make_model_file(tmp_path_factory.mktemp("model") / "tiny.pt", seed=0))


@pytest.fixture(scope="module")
def server(predictor, tmp_path_factory):
    with LiveServer(WebSettings(predictors={"tiny": predictor}, data_dir=tmp_path_factory.mktemp("data"))) as live:
        yield live


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def submit(client, folder, name, image) -> dict:
    answer = upload_channels(client, write_channel_files(folder, name, image))
    assert answer.status_code == 202, answer.text
    data = wait_done(client, answer.json()["id"])
    assert data["status"] == "done", data
    return data


def test_cells_come_with_the_probabilities_as_the_library_gives_them(server, client, predictor, tmp_path):
    from protloc.cells.pipeline import analyse_image, cell_rows

    image = cell_like_sample(256, 256, seed=4)
    data = submit(client, tmp_path, "field", image)
    expected = analyse_image(predictor, image.astype(np.float32), "field")
    ids = expected.predictions.cell_ids.tolist()
    assert len(ids) >= 2 and data["cells"]["count"] == len(ids) and data["cells"]["note"] is None
    assert "items" not in data["cells"]  # the polled answer stays small: the list is its own resource
    # the image's probabilities are those of the cells' one whole-image pass, and the answer says so
    assert data["image_probabilities"] == {"method": "whole-image", "description": PROBABILITIES_FROM["whole-image"]}
    assert [data["probabilities"][c] for c in predictor.classes] == pytest.approx(
        expected.predictions.image_probabilities.tolist(), abs=1e-5)
    assert client.get("/api/v1/models").json()["models"][0]["image_probabilities"]["method"] == "whole-image"

    everything = client.get(f"/api/v1/predictions/{data['id']}/cells").json()
    assert everything["total"] == len(ids) and [c["cell_id"] for c in everything["items"]] == ids
    # the library's own rows (protloc cells writes the same): the per-cell answer, predicted and top classes
    for cell, row in zip(everything["items"], cell_rows(expected, predictor)):
        assert [cell["probabilities"][c] for c in predictor.classes] == pytest.approx([row[c] for c in predictor.classes], abs=1e-5)
        assert (cell["centroid_y"], cell["centroid_x"]) == pytest.approx((row["centroid_y"], row["centroid_x"]), abs=0.01)
        assert (cell["cell_id"], cell["area"], cell["border"]) == (row["cell_id"], row["area"], row["border"])
        assert cell["top_class"] == row["top_class"] and ";".join(cell["predicted"]) == row["predicted"]
        # the outline goes round the cell: its vertices' mean lies near the centroid, inside the image
        outline = np.array(cell["outline"], dtype=float)
        assert len(outline) >= 4 and outline.min() >= 0 and outline[:, 0].max() <= 256 and outline[:, 1].max() <= 256
        assert np.hypot(*(outline.mean(axis=0) - [cell["centroid_x"], cell["centroid_y"]])) < np.sqrt(cell["area"]) / 2

    # pages and sorting
    page = client.get(f"/api/v1/predictions/{data['id']}/cells", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == len(ids) and [c["cell_id"] for c in page["items"]] == ids[1:2]
    by_area = client.get(f"/api/v1/predictions/{data['id']}/cells", params={"sort": "-area"}).json()["items"]
    assert [c["area"] for c in by_area] == sorted((c["area"] for c in everything["items"]), reverse=True)
    by_class = client.get(f"/api/v1/predictions/{data['id']}/cells", params={"sort": "Nucleus"}).json()["items"]
    assert [c["probabilities"]["Nucleus"] for c in by_class] == sorted(c["probabilities"]["Nucleus"] for c in everything["items"])
    for bad, reason in (({"sort": "colour"}, "cannot sort cells by 'colour'"), ({"limit": 0}, None), ({"offset": -1}, None)):
        answer = client.get(f"/api/v1/predictions/{data['id']}/cells", params=bad)
        assert answer.status_code == 422, bad
        if reason:
            assert reason in answer.json()["detail"]
    assert client.get("/api/v1/predictions/0123456789abcdef/cells").status_code == 404

    # the label image: the library's, in the --masks layout
    mask = client.get(data["cells"]["links"]["mask"])
    assert mask.status_code == 200 and 'filename="field_cellmask.png"' in mask.headers["content-disposition"]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(mask.content))), expected.cells)

    # the overlay: display size (the field itself here), outlines in class colours over the composite
    overlay = client.get(data["cells"]["links"]["overlay"])
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(overlay.content)).convert("RGB"))
    assert picture.shape == (256, 256, 3)
    edge = (expected.cells > 0) & (np.roll(expected.cells, 1, axis=0) != expected.cells)
    assert picture[edge].max(axis=1).mean() > 120  # bright outlines where the cells' edges are

    # downloads: the JSON lists every cell, the CSV has a row per cell after the image's row
    listed = client.get(f"/api/v1/predictions/{data['id']}/result.json").json()["cells"]["items"]
    assert [c["cell_id"] for c in listed] == ids
    rows = list(csv.DictReader(io.StringIO(client.get(f"/api/v1/predictions/{data['id']}/result.csv").text)))
    assert [r["level"] for r in rows] == ["image"] + ["cell"] * len(ids)
    assert [int(r["cell_id"]) for r in rows[1:]] == ids
    assert float(rows[1]["Nucleus"]) == pytest.approx(everything["items"][0]["probabilities"]["Nucleus"], abs=1e-6)
    assert float(rows[0]["Nucleus"]) == pytest.approx(data["probabilities"]["Nucleus"], abs=1e-6)

    # the result page: a row per cell and a shape per cell on the picture
    html = client.get(f"/submissions/{data['id']}").text
    assert "Image probabilities: whole image, one pass of the network" in html
    assert html.count('class="cell-row"') == len(ids) and html.count('class="cell-shape"') == len(ids)


def test_an_image_without_cells_is_done_and_says_so(client, tmp_path):
    blank = np.full((4, 96, 96), 500, dtype=np.uint16)
    data = submit(client, tmp_path, "blank", blank)
    assert data["cells"]["count"] == 0 and data["probabilities"]
    assert data["cells"]["note"] == "no cells found in this image"
    mask = client.get(data["cells"]["links"]["mask"])  # the empty label image is stored all the same
    assert mask.status_code == 200 and not np.asarray(Image.open(io.BytesIO(mask.content))).any()
    assert client.get(f"/api/v1/predictions/{data['id']}/cells").json()["items"] == []
    assert client.get(f"/api/v1/predictions/{data['id']}/images/cells.png").status_code == 404
    assert data["cells"]["note"] in client.get(f"/submissions/{data['id']}").text


def test_batch_zip_holds_every_sample_its_cells_and_their_masks(client, tmp_path):
    archive = io.BytesIO()
    images = {f"well{i}": cell_like_sample(128, 128, seed=20 + i) for i in range(2)}
    with zipfile.ZipFile(archive, "w") as zf:
        for name, image in images.items():
            for path in write_channel_files(tmp_path / name, name, image):
                zf.write(path, f"plate/{path.name}")
    batch = client.post("/api/v1/batches", files={"file": ("plate.zip", archive.getvalue())}).json()["id"]
    wait_batch(client, batch, until=lambda answer: answer["status"] == "finished")
    listed = client.get(f"/api/v1/batches/{batch}").json()["submissions"]
    answer = client.get(f"/api/v1/batches/{batch}/results.zip")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(answer.content)) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("results.csv").decode())))
        names = sorted(zf.namelist())
        masks = {n: np.asarray(Image.open(io.BytesIO(zf.read(n)))) for n in names if n.startswith("masks/")}
    assert names == ["masks/plate/well0_cellmask.png", "masks/plate/well1_cellmask.png", "results.csv"]
    for well in images:
        own = [r for r in rows if r["name"] == f"plate/{well}"]
        cells = [r for r in own if r["level"] == "cell"]
        assert own[0]["level"] == "image" and len(cells) == int(masks[f"masks/plate/{well}_cellmask.png"].max()) >= 1
        # the batch page's rows (and its JSON) count each sample's cells
        assert [s["cells"] for s in listed if s["name"] == f"plate/{well}"] == [len(cells)]
    history = client.get("/history").text
    for submission in listed:  # the history page's cell column, row by row
        row = history[history.index(f'<tr data-id="{submission["id"]}">'):]
        row = row[: row.index("</tr>")]
        assert f'<td class="cells-count">{submission["cells"]}</td>' in row
    assert client.get("/api/v1/batches/0123456789abcdef/results.zip").status_code == 404


def test_no_cells_server_and_missing_scikit_image_are_told_not_crashed(predictor, tmp_path, monkeypatch):
    args = build_parser().parse_args(["serve", "--no-cells"])
    from protloc.commands.serve import settings_from_args

    assert settings_from_args(args).cells is False
    assert build_parser().parse_args(["worker", "--db", "sqlite://", "--no-cells"]).no_cells is True

    image = cell_like_sample(128, 128, seed=5)
    with LiveServer(WebSettings(predictors={"tiny": predictor}, data_dir=tmp_path / "off", cells=False)) as live:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            data = submit(client, tmp_path / "a", "off", image)
            assert data["cells"] == {"count": 0, "computed": False, "note": OFF_NOTE, "links": {
                "cells": f"/api/v1/predictions/{data['id']}/cells", "mask": f"/api/v1/predictions/{data['id']}/cells/mask"}}
            history = client.get("/history").text  # no count where none was computed (not a 0)
            assert '<td class="cells-count" title="no cells for this submission' in history
            assert f'title="{OFF_NOTE}"></td>' in history.replace("&#39;", "'")
            missing = client.get(data["cells"]["links"]["mask"])
            assert missing.status_code == 404 and "no cell mask" in missing.json()["detail"]
            page = client.get(f"/submissions/{data['id']}").text
            assert "--no-cells" in page and "Image probabilities: covering patches" in page
            assert data["image_probabilities"]["method"] == "patches"
            assert client.get("/api/v1/models").json()["models"][0]["image_probabilities"]["method"] == "patches"
            np.testing.assert_allclose([data["probabilities"][c] for c in predictor.classes],
                                       predictor.predict_proba(image.astype(np.float32)), atol=1e-5)
        with live.platform.sessions() as session:
            assert session.get(db.CellResult, data["id"]) is None

    monkeypatch.setitem(sys.modules, "skimage", None)  # as if the cells extra were not installed
    with LiveServer(WebSettings(predictors={"tiny": predictor}, data_dir=tmp_path / "bare")) as live:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            data = submit(client, tmp_path / "b", "bare", image)
            assert data["probabilities"] and data["cells"]["count"] == 0
            assert "scikit-image" in data["cells"]["note"] and "protloc[cells]" in data["cells"]["note"]
            page = client.get(f"/submissions/{data['id']}")
            assert page.status_code == 200 and "pip install &#39;protloc[cells]&#39;" in page.text


def test_cells_never_cost_a_submission_its_probabilities(predictor, tmp_path, monkeypatch):
    """A network without GapNet-PL's head, or a segmentation that raises: a note, the row is still written."""
    import protloc.cells.pipeline as pipeline

    stage = CellsStage(store=None)
    image = cell_like_sample(96, 96).astype(np.float32)

    class OtherNetwork:
        model_name = "densenet"
        network = object()

    record = stage.compute(OtherNetwork(), "abc", image)
    assert record.count == 0 and "need a GapNet-PL model (this one is densenet)" in record.note

    def broken(*args, **kwargs):
        raise ValueError("labels overflow\nsecond line")

    monkeypatch.setattr(pipeline, "analyse_image", broken)
    record = stage.compute(predictor, "abc", image)
    assert record.count == 0 and record.note == "cell segmentation failed: labels overflow"
    assert CellsStage(store=None, enabled=False).compute(predictor, "abc", image) is None


def test_a_database_from_before_cells_opens_and_says_no_cells_were_computed(tmp_path):
    """Results written before cells existed gain the cells columns on open; their JSON says why there are none."""
    import sqlite3

    from sqlalchemy import inspect

    path = tmp_path / "old.db"
    connection = sqlite3.connect(path)
    connection.executescript(
        "CREATE TABLE results (submission_id VARCHAR(32) PRIMARY KEY, classes JSON, probabilities JSON, thresholds JSON,"
        " predicted JSON, predicted_text TEXT, maps JSON, seconds FLOAT, created_at DATETIME);")
    connection.close()
    sessions = db.open_database(f"sqlite:///{path}")
    columns = {c["name"] for c in inspect(sessions.kw["bind"]).get_columns("results")}
    assert {"cells_count", "cells_note"} <= columns
    from protloc.web.pictures.cells import summary

    old = db.Result(submission_id="x", classes=["A"], probabilities=[0.5], thresholds=[0.5], predicted=[], maps=[])
    assert summary(old, db.DONE, "/api/v1/predictions/x")["note"] == OFF_NOTE
    assert summary(None, db.QUEUED, "/api/v1/predictions/x")["note"].startswith("cells come with the probabilities")
