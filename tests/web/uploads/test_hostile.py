"""What a hostile client tried (issue 11): each refused with a 4xx and a reason, nothing stored, nothing lost."""

from __future__ import annotations

import csv
import io
import struct
import zipfile

import httpx
import numpy as np
import pytest

import protloc
from protloc.web.http.exports import results_csv
from protloc.web.settings import WebSettings
from protloc.web.uploads.archives import check_zip
from protloc.web.errors import UploadError

from tests.helpers.web import (LiveServer, cell_like_sample, make_model_file, upload_channels, wait_batch, wait_done,
                               write_channel_files)

MB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    predictors = {"tiny": protloc.load_model(make_model_file(folder / "tiny.pt"))}
    # The default limits (8 GB batch zips): the zip-bomb check must hold without a small total limit.
    settings = WebSettings(predictors=predictors, data_dir=folder / "data", auth_tokens=["right-token"])
    with LiveServer(settings) as live:
        yield live


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=60, headers={"Authorization": "Bearer right-token"}) as c:
        yield c


def stored_bytes(platform) -> int:
    """Uploads kept and temporary files; not the pictures, which the idle worker draws at any time."""
    return sum(p.stat().st_size for p in platform.store.root.rglob("*") if p.is_file() and p.suffix != ".db"
               and not p.name.startswith("protloc.db") and not p.is_relative_to(platform.store.renders))


@pytest.mark.parametrize("params", [{"offset": 2**63}, {"offset": 2**64}, {"offset": 10**30}, {"offset": -1}])
def test_offset_beyond_64_bit_is_a_422(client, params):
    response = client.get("/api/v1/predictions", params=params)
    assert response.status_code == 422, response.text
    assert "offset" in str(response.json()["detail"])
    assert client.get("/api/v1/predictions", params={"offset": 2**63 - 1}).json()["items"] == []


@pytest.mark.parametrize("page", [2**58, 2**63, 2**64])
def test_history_page_beyond_64_bit_is_a_422(client, page):
    response = client.get("/history", params={"page": page})
    assert response.status_code == 422, response.text
    assert client.get("/history", params={"page": 3}).status_code == 200


def test_like_wildcards_in_a_search_are_characters(client, tmp_path):
    ids = {}
    for name in ("wild%card", "wildXcard", "under_score"):
        response = upload_channels(client, write_channel_files(tmp_path / name, name, cell_like_sample(64, 64)))
        assert response.status_code == 202, response.text
        ids[name] = response.json()["id"]

    def found(q: str) -> set[str]:
        return {item["id"] for item in client.get("/api/v1/predictions", params={"q": q}).json()["items"]}

    assert found("wild%card") == {ids["wild%card"]}
    assert found("%") == {ids["wild%card"]}
    assert found("wild_card") == set()  # '_' is not "any character"
    assert found("under_score") == {ids["under_score"]}
    assert ids["wildXcard"] in found("wildXcard")
    export = client.get("/api/v1/predictions/export.csv", params={"q": "%"}).text
    assert [row["id"] for row in csv.DictReader(io.StringIO(export))] == [ids["wild%card"]]


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cells_never_start_a_formula(start):
    item = {"id": "abc", "name": f"{start}HYPERLINK(\"http://evil\",\"x\")", "model": f"{start}1", "status": "done",
            "created_at": "2026-01-01T00:00:00Z", "predicted": [f"{start}cmd"], "classes": ["Nucleus"],
            "probabilities": {"Nucleus": 0.25}}
    row = next(csv.DictReader(io.StringIO(results_csv([item]))))
    for column in ("name", "model", "predicted"):
        assert row[column].startswith("'" + start), (column, row[column])
    assert row["Nucleus"] == "0.250000"  # numbers stay numbers


def test_csv_export_of_an_uploaded_formula_name(client, tmp_path):
    paths = write_channel_files(tmp_path, "=1+2", cell_like_sample(64, 64, seed=3))
    submission_id = upload_channels(client, paths).json()["id"]
    rows = list(csv.DictReader(io.StringIO(client.get(f"/api/v1/predictions/{submission_id}/result.csv").text)))
    assert rows[0]["name"] == "'=1+2"  # the sample id of =1+2_blue.tif ... =1+2_green.tif


def zip_of_zeros(path, megabytes: int):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("zeros_blue.tif", "w") as member:
            for _ in range(megabytes):
                member.write(b"\0" * MB)
    return path


def test_zip_bomb_under_the_total_limit_is_refused_before_extraction(client, server, tmp_path):
    bomb = zip_of_zeros(tmp_path / "bomb.zip", 64)  # 64 MB in ~64 KB: 1000:1, well under the 8 GB limit
    assert bomb.stat().st_size < MB
    before = stored_bytes(server.platform)
    response = client.post("/api/v1/batches", files={"file": ("bomb.zip", bomb.read_bytes())})
    assert response.status_code == 413, response.text
    assert "zip bomb refused" in response.json()["detail"] and "at most 100:1" in response.json()["detail"]
    assert stored_bytes(server.platform) == before
    assert not any(server.platform.store.tmp.iterdir())


def test_zip_bomb_is_refused_from_its_central_directory(tmp_path):
    """7 KB claiming 4 GB: refused from the directory alone, whatever the 8 GB total limit allows."""
    path = tmp_path / "claims.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a_blue.tif", b"\0" * 7000)
    raw = bytearray(path.read_bytes())
    directory = raw.rindex(b"PK\x01\x02")
    struct.pack_into("<I", raw, directory + 24, 4_000_000_000)  # the uncompressed size the directory declares
    path.write_bytes(bytes(raw))
    with pytest.raises(UploadError) as refused:
        check_zip(path, 8192 * MB)
    assert refused.value.status == 413 and "zip bomb refused" in refused.value.reason


def test_token_in_the_address_only_opens_pages(server, tmp_path):
    paths = write_channel_files(tmp_path, "q", cell_like_sample(64, 64, seed=4))
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        posted = anonymous.post("/api/v1/predictions", params={"token": "right-token"},
                                files=[("files", (p.name, p.read_bytes())) for p in paths])
        assert posted.status_code == 401 and "only when a page is opened" in posted.json()["detail"]
        api = anonymous.get("/api/v1/models", params={"token": "right-token"})
        assert api.status_code == 401
        link = anonymous.get("/history", params={"token": "right-token"})
        assert link.status_code == 303 and link.headers["location"] == "/history"
        assert anonymous.get("/api/v1/models").status_code == 200  # the cookie the link set


def test_uploads_still_work_for_the_right_client(client, tmp_path):
    response = upload_channels(client, write_channel_files(tmp_path, "fine", cell_like_sample(64, 64, seed=5)))
    assert wait_done(client, response.json()["id"])["status"] == "done"


def test_batch_folders_of_bare_channel_names_are_samples(tmp_path):
    """``well3/blue.png`` ... ``well3/green.png``: the folder is the sample (the readers' rule)."""
    from protloc.web.uploads.archives import group_samples

    files = []
    for folder in ("plate/well3", "plate/well4"):
        for colour in ("blue", "red", "yellow", "green"):
            path = tmp_path / folder / f"{colour}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
            files.append(path)
    samples, skipped = group_samples(files, tmp_path)
    assert [s["name"] for s in samples] == ["plate/well3", "plate/well4"] and skipped == []


# -- issue 23: the platform's minor findings -------------------------------------------------------------

def test_the_worker_counters_are_for_admins_only(server, client):
    """GET /api/v1/worker showed counters across all users to any user."""
    from protloc.web.storage import db

    token = db.create_user(server.platform.sessions, "not-an-admin")
    answer = httpx.get(server.url + "/api/v1/worker", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 403 and answer.json() == {"detail": "the worker's counters cover every user: for admins only"}
    assert client.get("/api/v1/worker").status_code == 200  # the operator's token is an admin's


def test_a_batch_answer_lists_its_skipped_entries_in_pages(client):
    """A batch answer listed all 2,500 skipped entries at once."""

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(2500):
            archive.writestr(f"notes/n{i:04d}.txt", b"not an image")
    created = client.post("/api/v1/batches", files={"file": ("many.zip", buffer.getvalue(), "application/zip")})
    assert created.status_code == 202, created.text
    url = created.json()["url"]
    answer = wait_batch(client, created.json()["id"], until=lambda batch: batch["status"] != "extracting")
    assert answer["skipped_total"] == 2500 and len(answer["skipped"]) == 100 and answer["limit"] == 100
    assert answer["next"] == f"{url}?offset=100&limit=100"
    last = client.get(url, params={"offset": 2400, "limit": 1000}).json()
    assert len(last["skipped"]) == 100 and last["next"] is None and last["skipped"][-1]["name"].endswith("n2499.txt")
    assert client.get(url, params={"limit": 1001}).status_code == 422


@pytest.mark.slow
def test_a_body_trickling_a_byte_every_two_seconds_is_cut(server):
    """Not cut within 50 s before: the read timeout only sees silence, and a byte every 2 s is not silent."""
    import socket
    import time

    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"POST /api/v1/predictions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer right-token\r\n"
                  b"Content-Type: multipart/form-data; boundary=XX\r\nContent-Length: 100000\r\n\r\n")
        started = time.monotonic()
        s.settimeout(2.0)
        closed = None
        while time.monotonic() - started < 50:
            try:
                s.sendall(b"-")
                if s.recv(4096) == b"":  # the server closed the connection
                    closed = time.monotonic() - started
                    break
            except socket.timeout:
                continue
            except OSError:  # reset: closed as well
                closed = time.monotonic() - started
                break
    assert closed is not None and closed < 30, closed  # about BODY_RATE_GRACE_SECONDS (10 s)


def test_a_damaged_image_is_refused_in_protlocs_words(client, tmp_path, monkeypatch):
    """A 422 quoted tifffile's internal IndexError ("list index out of range")."""
    from protloc.data.formats import tiff as tiff_format

    def internal(*_args, **_kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(tiff_format, "read_tiff_array", internal)
    tiff = tmp_path / "sample.tif"
    import tifffile

    tifffile.imwrite(tiff, np.zeros((4, 16, 16), np.uint8))
    answer = client.post("/api/v1/predictions", files=[("files", ("sample.tif", tiff.read_bytes(), "image/tiff"))])
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert "damaged or unsupported image data" in detail and "index" not in detail.lower(), detail


def test_options_and_405_list_every_method_of_a_path(client):
    """OPTIONS answered Allow: POST although GET is served on /api/v1/predictions too."""
    answer = client.options("/api/v1/predictions")
    assert answer.status_code == 204 and answer.headers["allow"] == "GET, POST, OPTIONS"
    refused = client.delete("/api/v1/predictions")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, POST, OPTIONS"
    assert client.options("/api/v1/worker").headers["allow"] == "GET, OPTIONS"
    assert client.options("/no/such/path").status_code == 404


def test_the_schema_states_what_the_server_enforces(server, client):
    """Enforced but not in the schema: the batch file type, an empty multipart, an unknown model, an unknown sort key."""
    paths = client.get("/openapi.json").json()["paths"]
    sample = paths["/api/v1/predictions"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert sample["schema"]["properties"]["model"]["enum"] == ["tiny"]
    assert sample["schema"]["properties"]["files"]["minItems"] == 1 and sample["schema"]["required"] == ["files"]
    batch = paths["/api/v1/batches"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert batch["schema"]["properties"]["file"]["contentMediaType"] == "application/zip"
    assert batch["encoding"]["file"]["contentType"] == "application/zip"
    sort = next(p for p in paths["/api/v1/predictions/{submission_id}/cells"]["get"]["parameters"] if p["name"] == "sort")
    assert {"cell_id", "-area", "Nucleoli", "-Nucleoli"} <= set(sort["schema"]["enum"])
    assert "403" in paths["/api/v1/worker"]["get"]["responses"]
    refused = client.post("/api/v1/predictions", data={"model": "nope"}, files=[("files", ("a.png", b"x", "image/png"))])
    assert refused.status_code == 422
