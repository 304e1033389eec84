"""`protloc pretrained fetch` of the published GapNet-PL weights against a loopback HTTP server: download,
sha256 check, import into the cache, resume of a broken transfer, and the clear errors when it goes wrong.

The served files are the checkpoint copy in ../shared/pretrained/gapnet-pl (or $PROTLOC_GAPNET_CKPT).
"""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from protloc.model_file import read_model_file
from protloc.cli import main as cli_main
from protloc.errors import ProtlocError
from protloc.pretrained import fetch as fetch_module
from protloc.pretrained.fetch import fetch_pretrained, resolve_pretrained

from tests.helpers.pretrained import CKPT_DIR, DATA, INDEX, needs_checkpoint


# ------------------------------------------------------------------------------------------------
# fetch against a local HTTP server
# ------------------------------------------------------------------------------------------------


class _Server:
    """A loopback HTTP server for the checkpoint files; ``mode`` picks its behaviour."""

    def __init__(self, files: dict[str, bytes], mode: str = "good") -> None:
        self.files = files
        self.mode = mode
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                range_header = self.headers.get("Range")
                if range_header and server.mode in ("flaky", "good"):
                    start = int(range_header.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                first_try = sum(1 for p, _ in server.requests if p == self.path) == 1
                if server.mode == "broken" or (server.mode == "flaky" and first_try and len(body) > 10_000):
                    # promise the whole file, send half, hang up
                    self.wfile.write(body[start:start + len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/models/"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def published_files() -> dict[str, bytes]:
    return {name: (CKPT_DIR / name).read_bytes() for name in (INDEX, DATA)}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PROTLOC_CACHE", str(root))
    monkeypatch.delenv("PROTLOC_PRETRAINED_URL", raising=False)
    return root


def _files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_resolve_pretrained_without_cache_says_what_to_run(cache, capsys):
    with pytest.raises(ProtlocError, match="run `protloc pretrained fetch`"):
        resolve_pretrained()
    assert cli_main(["pretrained", "info"]) == 2
    assert "protloc pretrained fetch" in capsys.readouterr().err


@needs_checkpoint
def test_cli_import_without_out_fills_the_cache(cache):
    assert cli_main(["pretrained", "import", str(CKPT_DIR / INDEX)]) == 0
    assert resolve_pretrained() == cache / "pretrained" / "gapnet-pl.pt"
    assert read_model_file(resolve_pretrained())["model"] == "gapnet-pl"


@needs_checkpoint
def test_fetch_downloads_verifies_and_imports_into_cache(cache, published_files, capsys):
    with _Server(published_files) as server:
        assert cli_main(["pretrained", "fetch", "--url", server.url]) == 0
        assert "sha256 verified" in capsys.readouterr().out
        target = resolve_pretrained()
        assert target == cache / "pretrained" / "gapnet-pl.pt"
        assert _files_in(cache) == [target]  # no download leftovers
        payload = read_model_file(target)
        assert payload["source"]["published_release"] is True
        assert payload["source"]["training_step"] == 103_400
        requested = len(server.requests)
        # already cached: nothing downloaded again unless --force
        assert fetch_pretrained(server.url)["downloaded"] is False
        assert len(server.requests) == requested
        assert fetch_pretrained(server.url, force=True, progress=False)["downloaded"] is True
        assert len(server.requests) == requested + 2


@needs_checkpoint
def test_fetch_takes_base_url_from_environment(cache, published_files, monkeypatch):
    with _Server(published_files) as server:
        monkeypatch.setenv("PROTLOC_PRETRAINED_URL", server.url.rstrip("/"))
        summary = fetch_pretrained(progress=False)
        assert summary["downloaded"] and summary["url"] == server.url
        assert resolve_pretrained().is_file()


@needs_checkpoint
def test_fetch_resumes_a_transfer_that_broke_once(cache, published_files):
    with _Server(published_files, mode="flaky") as server:
        fetch_pretrained(server.url, retries=2, retry_wait=0, progress=False)
        data_requests = [r for r in server.requests if r[0].endswith(DATA)]
        assert len(data_requests) == 2
        assert data_requests[1][1] == f"bytes={len(published_files[DATA]) // 2}-"  # resumed, not restarted
    assert resolve_pretrained().is_file()


@needs_checkpoint
def test_fetch_broken_connection_is_a_clear_error_and_leaves_nothing(cache, published_files):
    with _Server(published_files, mode="broken") as server:
        with pytest.raises(ProtlocError, match=r"failed after 3 attempts: connection (broke|closed)") as info:
            fetch_pretrained(server.url, retries=2, retry_wait=0, progress=False)
    assert "\n" not in str(info.value)
    assert _files_in(cache) == []
    with pytest.raises(ProtlocError, match="run `protloc pretrained fetch`"):
        resolve_pretrained()


@needs_checkpoint
def test_fetch_wrong_checksum_is_refused_and_nothing_imported(cache, published_files):
    tampered = dict(published_files)
    data = bytearray(tampered[DATA])
    data[123_456] ^= 0xFF  # same size, different bytes
    tampered[DATA] = bytes(data)
    with _Server(tampered) as server:
        with pytest.raises(ProtlocError, match="sha256 .* refusing to import"):
            fetch_pretrained(server.url, retry_wait=0, progress=False)
    assert _files_in(cache) == []


@needs_checkpoint
def test_fetch_wrong_size_and_missing_file_fail_without_retrying(cache, published_files):
    with _Server({INDEX: published_files[INDEX], DATA: published_files[DATA][:-10]}) as server:
        with pytest.raises(ProtlocError, match="not the published checkpoint"):
            fetch_pretrained(server.url, retry_wait=0, progress=False)
    with _Server({}) as server:
        with pytest.raises(ProtlocError, match="HTTP 404"):
            fetch_pretrained(server.url, retry_wait=0, progress=False)
        assert len(server.requests) == 1
    assert _files_in(cache) == []


def test_fetch_unreachable_server_is_a_clear_error(cache, monkeypatch):
    monkeypatch.setattr(fetch_module.time, "sleep", lambda seconds: None)
    with _Server({}) as server:
        url = server.url
    # the server is closed now: connection refused on every attempt
    with pytest.raises(ProtlocError, match="failed after 2 attempts"):
        fetch_pretrained(url, retries=1, progress=False)
    assert _files_in(cache) == []
