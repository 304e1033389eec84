"""The store seam (issue 15, part 2): the platform keeps uploads and pictures in the store it is
given (``WebSettings(store=...)``, any ``protloc.web.storage.store.UploadStore``), not beside its database."""

from __future__ import annotations

import hashlib
import io

import httpx
import tifffile

import protloc
from protloc.web.settings import WebSettings
from protloc.web.storage.store import BlobStore

from tests.helpers.web import LiveServer, cell_like_sample, make_model_file, wait_done


class RecordingStore(BlobStore):
    """The directory store, somewhere else, noting what it is asked to keep."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.kept: list[str] = []

    def keep(self, received):
        self.kept.append(received.sha256)
        return super().keep(received)


def test_uploads_and_pictures_go_to_the_store_the_platform_is_given(tmp_path):
    predictor = protloc.load_model(make_model_file(tmp_path / "tiny.pt", crop_size=32))
    store = RecordingStore(tmp_path / "elsewhere")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, cell_like_sample(48, 48, seed=5), photometric="minisblack")
    payload = buffer.getvalue()
    settings = WebSettings(predictors={"tiny": predictor}, data_dir=tmp_path / "data", store=store)
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        assert server.platform.store is store
        answer = client.post("/api/v1/predictions", files=[("files", ("s.tif", payload))])
        assert answer.status_code == 202, answer.text
        data = wait_done(client, answer.json()["id"])
        assert data["status"] == "done", data
        digest = hashlib.sha256(payload).hexdigest()
        assert store.kept == [digest] and store.path_of(digest, ".tif").read_bytes() == payload
        assert client.get(data["images"]["composite"]).status_code == 200
    assert (store.render_dir(data["id"]) / "composite.png").is_file()
    data_dir = tmp_path / "data"
    assert not list((data_dir / "blobs").rglob("*.tif"))  # nothing beside the database
    assert not (data_dir / "renders" / data["id"]).exists()
