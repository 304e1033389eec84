"""The platform's HTTP API over a real uvicorn server on loopback (tiny model, tiny images)."""

from __future__ import annotations

import csv
import io
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from sqlalchemy import func, select, update

import protloc
from protloc.web.storage import db
from protloc.web.settings import WebSettings

from tests.helpers.web import (LiveServer, cell_like_sample, make_model_file, upload_channels, wait_batch, wait_done,
                               write_channel_files)

KB = 1024


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {
        "tiny": protloc.load_model(make_model_file(folder / "tiny.pt", seed=0)),
        "tiny-b": protloc.load_model(make_model_file(folder / "tiny-b.pt", seed=1)),
    }


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("web-data")
    settings = WebSettings(predictors=models, data_dir=data_dir, max_upload_bytes=400 * KB, max_pixels=160 * 160,
                           max_batch_bytes=4096 * KB)
    with LiveServer(settings) as live:
        yield live


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def expected_probs(predictor, image: np.ndarray) -> np.ndarray:
    """These servers compute cells (GapNet-PL): the probabilities come from the cells' whole-image pass."""
    return predictor.predict_proba(image.astype(np.float32), whole_image=True)


def counts(platform) -> tuple[int, int, int, int]:
    """Rows and stored files: what a rejected upload must leave untouched."""
    with platform.sessions() as session:
        submissions = session.scalar(select(func.count()).select_from(db.Submission))
        batches = session.scalar(select(func.count()).select_from(db.BatchJob))
    blobs = sum(1 for p in platform.store.blobs.rglob("*") if p.is_file())
    temps = sum(1 for _ in platform.store.tmp.iterdir())
    return submissions, batches, blobs, temps


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


def tiff_bomb(path: Path) -> Path:
    """A valid little TIFF whose header then claims 60000 x 60000 pixels (3.6 GB once decoded)."""
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), photometric="minisblack")
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        for code in (256, 257, 278):  # width, length, rows per strip
            tag = tags[code]
            fmt = "<H" if tag.dtype == 3 else "<I"
            import struct

            struct.pack_into(fmt, raw, tag.valueoffset, 60000)
    path.write_bytes(bytes(raw))
    return path


def png_bomb(path: Path) -> Path:
    """A small PNG whose IHDR then claims 60000 x 60000 pixels (CRC fixed, so the header is valid)."""
    import struct
    import zlib

    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(path)
    raw = bytearray(path.read_bytes())
    struct.pack_into(">II", raw, 16, 60000, 60000)
    struct.pack_into(">I", raw, 29, zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))
    return path


def bad_inputs(tmp: Path) -> dict:
    good = write_channel_files(tmp / "good", "g", cell_like_sample(96, 96, seed=4))
    cases = {}
    text = tmp / "notes_green.tif"
    text.write_text("this is not an image\n" * 20)
    cases["non-image"] = ([*good[:3], text], 415, "not an image")
    small = write_channel_files(tmp / "small", "s", cell_like_sample(64, 80, seed=5))
    cases["different sizes"] = ([*good[:3], small[3]], 422, "channels differ in size")
    cases["wrong channel count"] = (good[:3], 422, "wrong channel count: got 3 files")
    three = tmp / "three.tif"
    tifffile.imwrite(three, cell_like_sample(96, 96)[:3], photometric="minisblack")
    cases["three-plane tiff"] = ([three], 422, "4 channels")
    # float64 planes within the pixel limit: 4 x 176 KB, over the 400 KB per sample
    big = write_channel_files(tmp / "big", "b", np.random.default_rng(0).random((4, 150, 150)))
    cases["over the size limit"] = (big, 413, "exceeds the limit of 0.390625 MB")
    wide = write_channel_files(tmp / "wide", "w", cell_like_sample(96, 400, seed=6))
    cases["over the pixel limit"] = (wide, 413, "400x96 pixels exceeds the limit of 25600 pixels")
    cases["decompression bomb"] = ([*good[:3], tiff_bomb(tmp / "bomb_green.tif")], 413, "60000x60000")
    cases["png decompression bomb"] = ([*good[:3], png_bomb(tmp / "bomb_green.png")], 413, "60000x60000")
    truncated = tmp / "cut_green.tif"
    full = (tmp / "good" / "g_green.tif").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    cases["truncated tiff"] = ([*good[:3], truncated], 422, "truncated")
    doubled = [good[0], good[1], good[2], good[2]]
    cases["a channel twice"] = (doubled, 422, "er given twice")
    return cases


BAD_CASES = ["non-image", "different sizes", "wrong channel count", "three-plane tiff", "over the size limit",
             "over the pixel limit", "decompression bomb", "png decompression bomb", "truncated tiff", "a channel twice"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_refused_without_a_trace(client, server, tmp_path, case):
    paths, status, reason = bad_inputs(tmp_path)[case]
    before = counts(server.platform)
    response = upload_channels(client, paths)
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert counts(server.platform) == before


def test_size_limit_holds_for_a_streamed_body_without_length(client, server):
    """A chunked upload (no Content-Length) is cut off once the limit is passed, not read to the end."""
    boundary = "protlocboundary"
    sent = {"bytes": 0}

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x_green.tif\"\r\n"
               "Content-Type: image/tiff\r\n\r\n").encode()
        for _ in range(200):  # 200 x 64 KB = 12.5 MB, far over the 400 KB limit
            sent["bytes"] += 64 * KB
            yield b"\0" * (64 * KB)
        yield f"\r\n--{boundary}--\r\n".encode()

    before = counts(server.platform)
    try:
        response = client.post("/api/v1/predictions", content=body(),
                               headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 413
        assert "exceeds the limit" in response.json()["detail"]
    except httpx.HTTPError:
        pass  # the server may close the connection while we are still sending: also a refusal
    assert counts(server.platform) == before


def test_unknown_model_and_non_multipart_are_refused(client, server, tmp_path):
    paths = write_channel_files(tmp_path, "m", cell_like_sample(64, 64))
    before = counts(server.platform)
    response = upload_channels(client, paths, model="nonexistent")
    assert response.status_code == 422 and "unknown model 'nonexistent'" in response.json()["detail"]
    response = client.post("/api/v1/predictions", json={"files": []})
    assert response.status_code == 400 and "multipart" in response.json()["detail"]
    assert client.get("/api/v1/predictions/doesnotexist").status_code == 404
    assert counts(server.platform) == before


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def test_zip_with_escaping_paths_and_zip_bomb_are_refused(client, server, tmp_path):
    tif = (write_channel_files(tmp_path, "z", cell_like_sample(64, 64))[0]).read_bytes()
    before = counts(server.platform)
    for name in ("../evil_blue.tif", "/etc/evil_blue.tif", "ok/../../evil_blue.tif"):
        archive = make_zip(tmp_path / "escape.zip", {"fine_blue.tif": tif, name: tif})
        response = client.post("/api/v1/batches", files={"file": ("escape.zip", archive.read_bytes())})
        assert response.status_code == 400, response.text
        assert "escapes the archive's folder" in response.json()["detail"]
    bomb = make_zip(tmp_path / "bomb.zip", {"zeros_blue.tif": b"\0" * (6 * 1024 * KB)})  # 6 MB in ~6 KB
    assert bomb.stat().st_size < 100 * KB
    response = client.post("/api/v1/batches", files={"file": ("bomb.zip", bomb.read_bytes())})
    assert response.status_code == 413 and "unpacks to more than" in response.json()["detail"]
    response = client.post("/api/v1/batches", files={"file": ("x.zip", b"not a zip at all")})
    assert response.status_code == 415
    assert counts(server.platform) == before
    assert not list(tmp_path.parent.glob("evil*"))


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


@pytest.fixture()
def no_cells(server):
    """This server's worker as under --no-cells for one test: covering patches, batched across uploads."""
    server.platform.worker.cells.enabled = False
    yield
    server.platform.worker.cells.enabled = True


def test_six_concurrent_uploads_are_batched_and_answered_correctly(client, server, models, tmp_path, no_cells):
    images = [cell_like_sample(96 + 8 * i, 96, seed=30 + i) for i in range(6)]
    payloads = [write_channel_files(tmp_path / str(i), f"conc{i}", image) for i, image in enumerate(images)]
    passes_before = server.platform.worker.stats.max_samples_per_pass
    results: dict[int, dict] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def one(index: int) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=60) as own:
                barrier.wait()
                response = upload_channels(own, payloads[index])
                assert response.status_code == 202, response.text
                results[index] = wait_done(own, response.json()["id"])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    elapsed = time.perf_counter() - started
    assert not errors, errors
    assert len({r["id"] for r in results.values()}) == 6
    for index, data in results.items():
        assert data["status"] == "done"
        assert data["height"] == 96 + 8 * index  # each answer belongs to its own upload
        got = np.array([data["probabilities"][c] for c in models["tiny"].classes])
        assert data["image_probabilities"]["method"] == "patches"
        np.testing.assert_allclose(got, models["tiny"].predict_proba(images[index].astype(np.float32)), atol=1e-5)
    stats = client.get("/api/v1/worker").json()
    assert max(stats["max_samples_per_pass"], passes_before) >= 2, stats  # patches of several uploads shared a pass
    print(f"\n6 concurrent uploads answered in {elapsed:.2f} s ({6 / elapsed:.1f} samples/s); worker {stats}")


def test_event_loop_stays_responsive_while_the_worker_runs(client, server, tmp_path):
    paths = [write_channel_files(tmp_path / str(i), f"busy{i}", cell_like_sample(160, 160, seed=40 + i)) for i in range(4)]
    ids = [upload_channels(client, p).json()["id"] for p in paths]
    latencies = []
    while client.get(f"/api/v1/predictions/{ids[-1]}").json()["status"] not in ("done", "failed"):
        started = time.perf_counter()
        assert client.get("/health").status_code == 200
        latencies.append(time.perf_counter() - started)
    assert max(latencies, default=0) < 1.0, latencies


def test_auth_tokens(models, tmp_path):
    settings = WebSettings(predictors=models, data_dir=tmp_path / "data", auth_tokens=["s3cret-token"])
    with LiveServer(settings) as live:
        stored = db.create_token(live.platform.sessions, "alice")
        with httpx.Client(base_url=live.url, timeout=30) as anonymous:
            assert anonymous.get("/health").status_code == 200
            for path in ("/", "/history", "/docs", "/openapi.json", "/api/v1/models", "/api/v1/predictions",
                         "/static/app.js", "/api/v1/predictions/x"):
                response = anonymous.get(path)
                assert response.status_code == 401, path
                assert "token" in response.json()["detail"]
            sample = write_channel_files(tmp_path, "a", cell_like_sample(64, 64))
            assert upload_channels(anonymous, sample).status_code == 401
            assert anonymous.get("/api/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        for token in ("s3cret-token", stored):
            with httpx.Client(base_url=live.url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as user:
                assert user.get("/api/v1/models").status_code == 200
                response = upload_channels(user, sample)
                assert response.status_code == 202
                assert wait_done(user, response.json()["id"])["status"] == "done"
        with httpx.Client(base_url=live.url, timeout=30) as browser:
            link = browser.get("/history", params={"q": "a b", "token": stored})
            assert link.status_code == 303 and "protloc_token" in link.headers["set-cookie"]
            assert link.headers["location"] == "/history?q=a+b"  # the token leaves the address
            assert browser.get(link.headers["location"]).status_code == 200
            assert browser.get("/api/v1/models").status_code == 200  # the cookie now signs in


def test_restart_keeps_finished_results_and_reruns_unfinished(models, tmp_path):
    data_dir = tmp_path / "data"
    database = f"sqlite:///{tmp_path / 'platform.db'}"
    image = cell_like_sample(96, 96, seed=50)
    other = cell_like_sample(96, 104, seed=51)
    with LiveServer(WebSettings(predictors=models, data_dir=data_dir, database_url=database)) as first:
        with httpx.Client(base_url=first.url, timeout=30) as client:
            finished_id = upload_channels(client, write_channel_files(tmp_path / "a", "a", image)).json()["id"]
            finished = wait_done(client, finished_id)
            assert finished["status"] == "done"
    # A server without a worker accepts uploads; they stay queued.
    with LiveServer(WebSettings(predictors=models, data_dir=data_dir, database_url=database, run_worker=False)) as second:
        with httpx.Client(base_url=second.url, timeout=30) as client:
            queued_id = upload_channels(client, write_channel_files(tmp_path / "b", "b", other)).json()["id"]
            running_id = upload_channels(client, write_channel_files(tmp_path / "c", "c", image)).json()["id"]
            lost_id = upload_channels(client, write_channel_files(tmp_path / "d", "d", cell_like_sample(64, 64, seed=52))).json()["id"]
            members = {}
            for index in range(2):
                for path in write_channel_files(tmp_path / f"z{index}", f"well{index}", cell_like_sample(64, 64, seed=60 + index)):
                    members[path.name] = path.read_bytes()
            batch_id = client.post("/api/v1/batches", files={"file": ("b.zip", make_zip(tmp_path / "b.zip", members).read_bytes())}).json()["id"]
            wait_batch(client, batch_id, until=lambda batch: batch["status"] != "extracting", timeout=30)
            time.sleep(0.3)
            assert client.get(f"/api/v1/predictions/{queued_id}").json()["status"] == "queued"
            assert client.get(f"/api/v1/predictions/{finished_id}").json() == finished
        with second.platform.sessions.begin() as session:
            # As if a worker had died mid-prediction: the row says "running".
            session.execute(update(db.Submission).where(db.Submission.id == running_id).values(status=db.RUNNING))
            # As if the process had died while unpacking the zip: its extraction runs again on start.
            session.execute(update(db.BatchJob).where(db.BatchJob.id == batch_id).values(status="extracting"))
            lost = session.get(db.Submission, lost_id)
        for entry in lost.files:  # a stored file gone from disk: the rerun fails with a reason
            second.platform.store.path_of(entry["sha256"], ".tif").unlink()
    with LiveServer(WebSettings(predictors=models, data_dir=data_dir, database_url=database)) as third:
        with httpx.Client(base_url=third.url, timeout=30) as client:
            assert client.get(f"/api/v1/predictions/{finished_id}").json() == finished  # untouched
            assert client.get(finished["images"]["composite"]).status_code == 200
            rerun = wait_done(client, queued_id)
            assert rerun["status"] == "done"
            got = np.array([rerun["probabilities"][c] for c in models["tiny"].classes])
            np.testing.assert_allclose(got, expected_probs(models["tiny"], other), atol=1e-5)
            assert wait_done(client, running_id)["status"] == "done"
            failed = wait_done(client, lost_id)
            assert failed["status"] == "failed" and "cannot read the stored sample" in failed["error"]
            assert "Prediction failed" in client.get(f"/submissions/{lost_id}").text
            batch = wait_batch(client, batch_id, until=lambda batch: batch["status"] == "finished", timeout=30)
            assert (batch["total"], batch["submitted"], batch["done"]) == (2, 2, 2)  # resumed, nothing twice
            with third.platform.sessions() as session:
                assert session.get(db.Submission, finished_id).attempts == 1


def test_expert_study_pages_are_mounted_behind_the_same_tokens(models, tmp_path):
    import tests.expert.test_data as expert_data  # the suite's own helpers: always there, never a reason to skip
    from protloc.expert.study import select_study

    select_study(expert_data.build_dataset(tmp_path / "data", size=40), tmp_path / "study", n=4, seed=1)
    settings = WebSettings(predictors=models, data_dir=tmp_path / "web", expert_study=tmp_path / "study",
                           expert_db_url=f"sqlite:///{tmp_path / 'answers.db'}", auth_tokens=["tok"])
    with LiveServer(settings) as live:
        with httpx.Client(base_url=live.url, timeout=30) as anonymous:
            assert anonymous.get("/expert/").status_code == 401
        with httpx.Client(base_url=live.url, timeout=30, headers={"Authorization": "Bearer tok"}) as user:
            page = user.get("/expert/")
            assert page.status_code == 200 and "<html" in page.text.lower()
            assert user.get("/expert/api/health").status_code == 200
            assert 'href="/expert/"' in user.get("/").text


@pytest.mark.slow
def test_protloc_serve_command(tmp_path, capsys):
    """The command line as the README shows it: a model file, a data folder, a token; then a clean stop."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    model = make_model_file(tmp_path / "served.pt")
    data_dir = tmp_path / "served-data"
    from protloc.cli import main

    assert main(["serve", "--data-dir", str(data_dir), "--create-token", "bob"]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 24
    assert main(["serve", "--model", str(tmp_path / "missing.pt"), "--data-dir", str(data_dir)]) == 2
    assert "no model" in capsys.readouterr().err
    cli = [sys.executable, "-m", "protloc", "serve"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [*cli, "--model", str(model), "--model", str(model), "--data-dir", str(data_dir), "--port", str(port),
         "--require-auth", "--max-upload-mb", "1", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read() if process.poll() is not None else "timeout"
            time.sleep(0.2)
        assert httpx.get(url + "/").status_code == 401
        headers = {"Authorization": f"Bearer {token}"}
        assert "<form" in httpx.get(url + "/", headers=headers).text
        keys = [m["key"] for m in httpx.get(url + "/api/v1/models", headers=headers).json()["models"]]
        assert keys == ["served", "served-2"]  # the same file twice gets two keys
        big = httpx.post(url + "/api/v1/predictions", headers=headers,
                         files=[("files", ("x.tif", b"\0" * (2 * 1024 * 1024)))])
        assert big.status_code == 413
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
    assert process.returncode == 0


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
