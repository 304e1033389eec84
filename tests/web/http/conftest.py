"""Fixtures of the HTTP API tests (test_api_*.py): two tiny models, a real uvicorn server per module, a client.

Module-scoped as they were in the single test_api.py: each test file gets its own server and data folder.
"""

from __future__ import annotations

import httpx
import pytest

import protloc
from protloc.web.settings import WebSettings

from tests.helpers.web import KB, LiveServer, make_model_file


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
