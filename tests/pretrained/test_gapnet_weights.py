"""The published GapNet-PL weights: TensorBundle reader, importer, equivalence to TensorFlow, fetch.

The checkpoint files are the copy in ../shared/pretrained/gapnet-pl (or $PROTLOC_GAPNET_CKPT); the
reference logits in fixtures/gapnet_pl_reference.json were computed with TensorFlow by
tools/tf_reference_logits.py in a throw-away environment, and are checked here without TensorFlow.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from protloc.model_file import network_from_model_file, read_model_file
from protloc.cli import main as cli_main
from protloc.data.channels import CHANNELS
from protloc.errors import ProtlocError
from protloc.labels import HPA13
from protloc.pretrained import fetch as fetch_module
from protloc.pretrained.fetch import fetch_pretrained, resolve_pretrained
from protloc.pretrained.importer import (
    CHECKPOINT_CHANNEL_ORDER,
    PUBLISHED_FILES,
    canonical_from_checkpoint_order,
    first_conv_channel_norms,
    import_checkpoint,
)
from protloc.pretrained.tensorbundle import mask_crc, read_tensor_bundle

from tests.conftest import shared_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CKPT_DIR = Path(os.environ.get("PROTLOC_GAPNET_CKPT", shared_dir() / "pretrained" / "gapnet-pl"))
INDEX = "gapnet-pl.ckpt.index"
DATA = "gapnet-pl.ckpt.data-00000-of-00001"

needs_checkpoint = pytest.mark.skipif(
    not (CKPT_DIR / INDEX).is_file(), reason=f"published GapNet-PL checkpoint not found in {CKPT_DIR}"
)


@pytest.fixture
def ckpt_copy(tmp_path) -> Path:
    """A private copy of the checkpoint files, free to damage."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in (INDEX, DATA):
        shutil.copy(CKPT_DIR / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "gapnet-pl.pt"
    import_checkpoint(CKPT_DIR, out)
    return out


# ------------------------------------------------------------------------------------------------
# reader
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mask_crc_matches_leveldb_definition():
    crc = 0x12345678
    rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
    assert mask_crc(crc) == (rotated + 0xA282EAD8) % 2**32
    assert mask_crc(0) == 0xA282EAD8


def test_reader_matches_tensorflow_written_bundle_of_many_dtypes():
    bundle = read_tensor_bundle(FIXTURES / "tensorbundle_small")
    expected = json.loads((FIXTURES / "tensorbundle_small" / "expected.json").read_text())["variables"]
    assert sorted(bundle.entries) == sorted(expected)
    dtypes_seen = set()
    for name, spec in expected.items():
        array = bundle.read(name)
        dtypes_seen.add(spec["dtype"])
        assert str(array.dtype) == spec["dtype"], name
        assert list(array.shape) == spec["shape"], name
        assert array.ravel().tolist() == spec["values"], name
    assert {"float32", "float64", "int64", "uint8", "float16", "bool"} <= dtypes_seen


@needs_checkpoint
def test_reader_lists_the_published_variables():
    bundle = read_tensor_bundle(CKPT_DIR)
    assert bundle.header.num_shards == 1
    assert len(bundle.entries) == 23
    shapes = {name: entry.shape for name, entry in bundle.entries.items()}
    assert shapes["ConvLayer-1/W_conv"] == (3, 3, 4, 32)
    assert shapes["ConvLayer-7/W_conv"] == (3, 3, 128, 128)
    assert shapes["FC-1/W_dense"] == (224, 256)
    assert shapes["FC-3/b_dense"] == (13,)
    arrays = bundle.read_all()
    floats = sum(a.size for a in arrays.values() if a.dtype == np.float32)
    assert floats == 626_221
    assert arrays["TeLL/tell_global_step"].dtype == np.int64
    assert int(arrays["TeLL/tell_global_step"]) == 103_400


@needs_checkpoint
def test_first_conv_input_norms_single_out_input_two_as_protein():
    """The evidence for CHECKPOINT_CHANNEL_ORDER, recomputed by protloc's reader."""
    norms = first_conv_channel_norms(read_tensor_bundle(CKPT_DIR))
    assert np.round(norms, 2).tolist() == [4.42, 9.42, 5.25, 5.37]
    # the same as TensorFlow's own reader gave (tools/tf_reference_logits.py)
    reference = json.loads((FIXTURES / "gapnet_pl_reference.json").read_text())["first_conv_input_l2_norms"]
    np.testing.assert_allclose(norms, reference, rtol=1e-12)
    assert int(np.argmax(norms)) == CHECKPOINT_CHANNEL_ORDER.index("protein")
    assert CHECKPOINT_CHANNEL_ORDER == ("nucleus", "protein", "microtubules", "er")


# ------------------------------------------------------------------------------------------------
# damaged checkpoints
# ------------------------------------------------------------------------------------------------


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


@needs_checkpoint
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / INDEX).unlink(), "checkpoint (*.index)"),
        (lambda d: (d / DATA).unlink(), "data file not found"),
        (lambda d: (d / INDEX).write_bytes((d / INDEX).read_bytes()[:500]), "truncated"),
        (lambda d: (d / INDEX).write_bytes(b""), "truncated"),
        (lambda d: _flip_byte(d / INDEX, 40), "crc32c mismatch"),
        (lambda d: (d / DATA).write_bytes((d / DATA).read_bytes()[:1_000_000]), "truncated"),
        (lambda d: _flip_byte(d / DATA, 2_000_000), "crc32c mismatch"),
    ],
    ids=["missing-index", "missing-data", "truncated-index", "empty-index", "corrupt-index",
         "truncated-data", "corrupt-data"],
)
def test_damaged_checkpoint_is_a_clear_error(ckpt_copy, tmp_path, damage, message):
    damage(ckpt_copy)
    out = tmp_path / "w.pt"
    with pytest.raises(ProtlocError) as info:
        import_checkpoint(ckpt_copy, out)
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert str(ckpt_copy) in text  # names the file (or folder) at fault
    assert not out.exists()


@needs_checkpoint
def test_corrupt_data_names_the_variable(ckpt_copy, tmp_path):
    # byte 1,700,000 lies in ConvLayer-8/W_conv (offset 1,407,616, 589,824 bytes)
    _flip_byte(ckpt_copy / DATA, 1_700_000)
    with pytest.raises(ProtlocError, match=r"ConvLayer-8/W_conv.*crc32c mismatch"):
        read_tensor_bundle(ckpt_copy).read("ConvLayer-8/W_conv")


def test_folder_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ProtlocError, match="no TensorFlow checkpoint"):
        read_tensor_bundle(tmp_path)
    (tmp_path / "x.ckpt.index").write_bytes(b"not a table" * 10)
    with pytest.raises(ProtlocError, match="not a TensorFlow checkpoint index"):
        read_tensor_bundle(tmp_path)


def test_non_gapnet_checkpoint_is_refused(tmp_path):
    with pytest.raises(ProtlocError, match="is not GapNet-PL"):
        import_checkpoint(FIXTURES / "tensorbundle_small", tmp_path / "w.pt")
    assert not (tmp_path / "w.pt").exists()


# ------------------------------------------------------------------------------------------------
# import
# ------------------------------------------------------------------------------------------------


@needs_checkpoint
def test_cli_import_writes_model_file_with_metadata(tmp_path, capsys):
    out = tmp_path / "w.pt"
    assert cli_main(["pretrained", "import", str(CKPT_DIR), "--out", str(out)]) == 0
    assert "626,221 parameters" in capsys.readouterr().out
    payload = read_model_file(out)
    assert payload["model"] == "gapnet-pl"
    assert payload["classes"] == list(HPA13.classes)
    assert payload["label_set"] == "hpa13"
    assert payload["channels"] == list(CHANNELS)
    assert payload["normalization"] == {"kind": "per-channel-zscore", "eps": 1e-7}
    assert payload["crop_size"] == 1024
    source = payload["source"]
    assert source["repository"] == "https://github.com/ml-jku/gapnet-pl"
    assert source["commit"] == "6010347c7c1573fc814e8632a98359b62f048af1"
    assert source["published_release"] is True
    assert source["training_step"] == 103_400
    assert source["checkpoint_channel_order"] == ["nucleus", "protein", "microtubules", "er"]
    for name, (size, sha256) in PUBLISHED_FILES.items():
        assert source["files"][name] == {"bytes": size, "sha256": sha256}
        assert hashlib.sha256((CKPT_DIR / name).read_bytes()).hexdigest() == sha256

    assert cli_main(["pretrained", "info", str(out)]) == 0
    assert "nucleus, protein, microtubules, er" in capsys.readouterr().out


@needs_checkpoint
def test_weights_are_mapped_into_torch_layouts_and_canonical_channels(imported):
    arrays = read_tensor_bundle(CKPT_DIR).read_all()
    state = read_model_file(imported)["state_dict"]
    conv1 = state["conv1.weight"].numpy()  # [out, in (canonical), kh, kw]
    tf_conv1 = arrays["ConvLayer-1/W_conv"]  # [kh, kw, in (checkpoint order), out]
    for canonical_index, channel in enumerate(CHANNELS):
        checkpoint_index = CHECKPOINT_CHANNEL_ORDER.index(channel)
        np.testing.assert_array_equal(conv1[:, canonical_index], tf_conv1[:, :, checkpoint_index].transpose(2, 0, 1))
    np.testing.assert_array_equal(state["conv7.weight"].numpy(), arrays["ConvLayer-7/W_conv"].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(state["fc1.weight"].numpy(), arrays["FC-1/W_dense"].T)
    np.testing.assert_array_equal(state["fc3.bias"].numpy(), arrays["FC-3/b_dense"])
    assert canonical_from_checkpoint_order() == [0, 2, 3, 1]


def test_bad_channel_order_is_refused():
    with pytest.raises(ProtlocError, match="not a permutation"):
        canonical_from_checkpoint_order(("nucleus", "protein", "protein", "er"))


def test_cli_import_of_missing_folder_exits_2(tmp_path, capsys):
    assert cli_main(["pretrained", "import", str(tmp_path / "nope"), "--out", str(tmp_path / "w.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("protloc: error:") and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------
# same function as the original (TensorFlow logits in the fixture)
# ------------------------------------------------------------------------------------------------


def reference_input(seed: int, height: int = 1024, width: int = 1024) -> np.ndarray:
    """Rebuild the fixture's input [H, W, 4] in the checkpoint's channel order (see tools/tf_reference_logits.py)."""
    rng = np.random.default_rng(seed)
    u = rng.random((height, width, 4))
    i = np.arange(height, dtype=np.float64)[:, None, None]
    j = np.arange(width, dtype=np.float64)[None, :, None]
    c = np.arange(4, dtype=np.float64)[None, None, :]
    smooth = 1.0 + np.sin(2 * np.pi * (c + 1) * i / height) * np.cos(2 * np.pi * (c + 2) * j / width)
    x = u**3 + 0.5 * smooth
    mean = x.mean(axis=(0, 1), keepdims=True)
    std = x.std(axis=(0, 1), keepdims=True)
    return ((x - mean) / (std + 1e-7)).astype(np.float32)


@pytest.mark.slow
@needs_checkpoint
def test_imported_network_gives_tensorflow_logits(imported):
    reference = json.loads((FIXTURES / "gapnet_pl_reference.json").read_text())
    recipe = reference["input"]
    assert recipe["generator"].startswith("numpy.random.default_rng")
    image = reference_input(recipe["seed"])
    # the same input TensorFlow saw, bit for bit (guards against a change in numpy's generator)
    assert hashlib.sha256(image.tobytes()).hexdigest() == recipe["sha256_float32"]
    assert recipe["channel_order"] == list(CHECKPOINT_CHANNEL_ORDER)
    canonical = [recipe["channel_order"].index(channel) for channel in CHANNELS]
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[canonical]))[None]
    network = network_from_model_file(read_model_file(imported))
    with torch.no_grad():
        logits = network(x)[0].double().numpy()
    expected = np.array(reference["logits"])
    assert reference["classes"] == list(HPA13.classes)
    max_diff = np.abs(logits - expected).max()
    assert max_diff <= 1e-4 * np.abs(expected).max(), f"max |diff| {max_diff:.3g}"
    # and the channel mapping matters: the input fed in the canonical order unpermuted is far off
    with torch.no_grad():
        unpermuted = network(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None])[0].numpy()
    assert np.abs(unpermuted - expected).max() > 0.1


@needs_checkpoint
def test_imported_network_gives_tensorflow_logits_when_sides_are_not_multiples_of_16(imported):
    """Whole-image prediction at any size: 301x457 makes both 2x2 max pools meet odd sizes."""
    odd = json.loads((FIXTURES / "gapnet_pl_reference.json").read_text())["odd_size"]
    image = reference_input(odd["seed"], odd["height"], odd["width"])
    assert hashlib.sha256(image.tobytes()).hexdigest() == odd["sha256_float32"]
    canonical = [CHECKPOINT_CHANNEL_ORDER.index(channel) for channel in CHANNELS]
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[canonical]))[None]
    with torch.no_grad():
        logits = network_from_model_file(read_model_file(imported))(x)[0].double().numpy()
    expected = np.array(odd["logits"])
    assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()


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
