"""The HTTP API's predictions over a real uvicorn server on loopback (tiny model, tiny images): uploads in
every input form, model choice, zip batches in the background, history search and the HPA naming."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.helpers.web import (cell_like_sample, expected_probs, make_zip, upload_channels, wait_batch, wait_done,
                               write_channel_files)


def test_service_endpoints_and_openapi(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["worker"] == "running"
    models = client.get("/api/v1/models").json()
    assert [m["key"] for m in models["models"]] == ["tiny", "tiny-b"]
    assert models["default"] == "tiny"
    assert models["models"][0]["patch_size"] == 64 and len(models["models"][0]["classes"]) == 13
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/v1/predictions"]["post"]["requestBody"]["content"]
    assert "files" in body["multipart/form-data"]["schema"]["properties"]
    assert {"/api/v1/predictions/{submission_id}", "/api/v1/models", "/api/v1/batches"} <= set(spec["paths"])


def test_four_channel_upload_gives_the_predictors_result(client, models, tmp_path):
    image = cell_like_sample(96, 112, seed=1)
    paths = write_channel_files(tmp_path, "cellA", image)
    response = upload_channels(client, paths[::-1])  # order does not matter: names say the channel
    assert response.status_code == 202, response.text
    data = wait_done(client, response.json()["id"])
    assert data["status"] == "done", data
    predictor = models["tiny"]
    want = expected_probs(predictor, image)
    got = np.array([data["probabilities"][c] for c in predictor.classes])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert data["predicted"] == predictor.predicted(want)
    # sorted, most probable first
    assert list(data["probabilities"].values()) == sorted(data["probabilities"].values(), reverse=True)
    assert (data["height"], data["width"]) == (96, 112)
    assert set(data["maps"]) == set(data["predicted"] or [predictor.classes[int(np.argmax(want))]])
    from PIL import Image

    for url in [data["images"]["composite"], *data["images"]["channels"].values(), *data["maps"].values()]:
        png = client.get(url)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (112, 96)
    rows = list(csv.DictReader(io.StringIO(client.get(data["links"]["csv"]).text)))
    # the submission's row, then one per cell (tests/web/pictures/test_cells.py checks those)
    assert rows[0]["level"] == "image" and {r["id"] for r in rows} == {data["id"]}
    assert [r["level"] for r in rows[1:]] == ["cell"] * data["cells"]["count"]
    assert float(rows[0]["Nucleus"]) == pytest.approx(data["probabilities"]["Nucleus"], abs=1e-6)
    assert client.get(data["links"]["json"]).json()["probabilities"] == data["probabilities"]
    assert client.get(f"/submissions/{data['id']}").status_code == 200


def test_multichannel_tiff_npz_and_model_choice(client, models, tmp_path):
    image = cell_like_sample(100, 100, seed=2)
    tifffile.imwrite(tmp_path / "sample.tif", image, photometric="minisblack")  # [4, H, W]
    # the authors' release: H x W x 4 in their channel order nucleus, protein, microtubules, ER
    np.savez(tmp_path / "sample.npz", sample=np.moveaxis(image[[0, 3, 1, 2]], 0, -1))
    ids = []
    for name, model in (("sample.tif", "tiny"), ("sample.npz", "tiny-b")):
        response = client.post("/api/v1/predictions", files=[("files", (name, (tmp_path / name).read_bytes()))],
                               data={"model": model})
        assert response.status_code == 202, response.text
        ids.append((response.json()["id"], model))
    for submission_id, model in ids:
        data = wait_done(client, submission_id)
        assert data["status"] == "done" and data["model"] == model and data["input_kind"] == "multichannel"
        got = np.array([data["probabilities"][c] for c in models[model].classes])
        np.testing.assert_allclose(got, expected_probs(models[model], image), atol=1e-5)


def test_channels_field_corrects_names(client, models, tmp_path):
    image = cell_like_sample(96, 96, seed=3)
    names = ["dapi.tif", "tubulin.tif", "calreticulin.tif", "antibody.tif"]
    for index, name in enumerate(names):
        tifffile.imwrite(tmp_path / name, image[index])
    paths = [tmp_path / n for n in names]
    refused = upload_channels(client, paths)
    assert refused.status_code == 422 and "cannot tell the channel of dapi.tif" in refused.json()["detail"]
    # Channels given per file, here deliberately in another file order.
    order = [3, 0, 2, 1]
    response = client.post(
        "/api/v1/predictions",
        files=[("files", (names[i], paths[i].read_bytes())) for i in order],
        data={"channels": [["nucleus", "microtubules", "er", "protein"][i] for i in order]},
    )
    assert response.status_code == 202, response.text
    data = wait_done(client, response.json()["id"])
    got = np.array([data["probabilities"][c] for c in models["tiny"].classes])
    np.testing.assert_allclose(got, expected_probs(models["tiny"], image), atol=1e-5)


def test_zip_batch_runs_in_the_background(client, models, tmp_path):
    members = {}
    images = {}
    for index, sample in enumerate(["plate1/a", "plate1/b"]):
        image = cell_like_sample(96, 96, seed=10 + index)
        images[sample] = image
        for path in write_channel_files(tmp_path / "src" / str(index), Path(sample).name, image):
            members[f"{Path(sample).parent}/{path.name}"] = path.read_bytes()
    single = cell_like_sample(80, 96, seed=12)
    buffer = io.BytesIO()
    np.savez(buffer, sample=np.moveaxis(single, 0, -1))
    members["whole/c.npz"] = buffer.getvalue()
    members["plate1/d_blue.tif"] = members["plate1/a_blue.tif"]  # d lacks three channels
    members["README.txt"] = b"samples from plate 1"
    archive = make_zip(tmp_path / "batch.zip", members)
    response = client.post("/api/v1/batches", files={"file": ("batch.zip", archive.read_bytes())}, data={"model": "tiny"})
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    batch = wait_batch(client, batch_id)
    assert batch["status"] == "finished", batch
    assert (batch["total"], batch["done"], batch["failed"]) == (3, 3, 0)
    assert {s["name"] for s in batch["skipped"]} == {"plate1/d", "README.txt"}
    by_name = {s["name"]: s["id"] for s in batch["submissions"]}
    assert set(by_name) == {"plate1/a", "plate1/b", "whole/c"}  # sample ids, as the command line lists them
    data = client.get(f"/api/v1/predictions/{by_name['plate1/b']}").json()
    got = np.array([data["probabilities"][c] for c in models["tiny"].classes])
    np.testing.assert_allclose(got, expected_probs(models["tiny"], images["plate1/b"]), atol=1e-5)
    assert client.get(f"/batches/{batch_id}").status_code == 200
    # the history finds batch samples by name
    found = client.get("/api/v1/predictions", params={"q": "plate1/"}).json()
    assert {item["id"] for item in found["items"]} >= {by_name["plate1/a"], by_name["plate1/b"]}


def test_history_search_and_class_filter(client, tmp_path):
    paths = write_channel_files(tmp_path, "uniquename42", cell_like_sample(96, 96, seed=20))
    submission_id = upload_channels(client, paths).json()["id"]
    data = wait_done(client, submission_id)
    hits = client.get("/api/v1/predictions", params={"q": "uniquename42"}).json()
    assert [item["id"] for item in hits["items"]] == [submission_id]
    assert client.get("/api/v1/predictions", params={"q": submission_id[:8]}).json()["items"][0]["id"] == submission_id
    top = data["predicted"][0] if data["predicted"] else None
    absent = [c for c in data["classes"] if c not in data["predicted"]][0]
    if top:
        in_class = client.get("/api/v1/predictions", params={"class": top}).json()["items"]
        assert submission_id in {i["id"] for i in in_class}
        assert all(top in i["predicted"] for i in in_class)
    not_in = client.get("/api/v1/predictions", params={"class": absent, "q": "uniquename42"}).json()
    assert not_in["items"] == []
    export = client.get("/api/v1/predictions/export.csv", params={"q": "uniquename42"}).text
    assert list(csv.DictReader(io.StringIO(export)))[0]["id"] == submission_id
    page = client.get("/history", params={"q": "uniquename42"}).text
    assert submission_id in page


def test_hpa_channel_files_are_named_by_their_sample_id(client, tmp_path):
    from PIL import Image

    image = cell_like_sample(96, 96, seed=70)
    paths = []
    for index, colour in enumerate(("blue", "red", "yellow", "green")):
        path = tmp_path / f"57639_1283_B2_10_{colour}.jpg"
        Image.fromarray((image[index] >> 8).astype(np.uint8)).save(path, quality=95)
        paths.append(path)
    response = upload_channels(client, paths[::-1])
    assert response.status_code == 202, response.text
    data = client.get(response.json()["url"]).json()
    assert data["name"] == "57639_1283_B2_10"
    assert data["filenames"] == [p.name for p in paths[::-1]]  # the files keep their own names
    assert "<title>57639_1283_B2_10 · protloc</title>" in client.get(data["links"]["page"]).text
    # names that do not share an id stay the list of file names
    mixed = write_channel_files(tmp_path / "m", "one", cell_like_sample(64, 64, seed=71))
    renamed = mixed[0].rename(mixed[0].with_name("two_blue.tif"))
    other = client.get(upload_channels(client, [renamed, *mixed[1:]]).json()["url"]).json()
    assert other["name"] == "two_blue.tif one_red.tif one_yellow.tif one_green.tif"
