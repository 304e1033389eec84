"""The HTTP API refuses bad uploads without a trace: unreadable or oversized files, decompression bombs,
streamed bodies past the limit, unknown models, escaping zip paths and zip bombs (real uvicorn server)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from sqlalchemy import func, select

from protloc.web.storage import db

from tests.helpers.web import KB, cell_like_sample, make_zip, upload_channels, write_channel_files


def counts(platform) -> tuple[int, int, int, int]:
    """Rows and stored files: what a rejected upload must leave untouched."""
    with platform.sessions() as session:
        submissions = session.scalar(select(func.count()).select_from(db.Submission))
        batches = session.scalar(select(func.count()).select_from(db.BatchJob))
    blobs = sum(1 for p in platform.store.blobs.rglob("*") if p.is_file())
    temps = sum(1 for _ in platform.store.tmp.iterdir())
    return submissions, batches, blobs, temps


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
