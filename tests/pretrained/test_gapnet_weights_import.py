"""The published GapNet-PL weights: TensorBundle reader, damaged checkpoints, importer, equivalence to TensorFlow.

The checkpoint files are the copy in ../shared/pretrained/gapnet-pl (or $PROTLOC_GAPNET_CKPT); the
reference logits in fixtures/gapnet_pl_reference.json were computed with TensorFlow by
tools/tf_reference_logits.py in a throw-away environment, and are checked here without TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from protloc.model_file import network_from_model_file, read_model_file
from protloc.cli import main as cli_main
from protloc.data.channels import CHANNELS
from protloc.errors import ProtlocError
from protloc.labels import HPA13
from protloc.pretrained.importer import (
    CHECKPOINT_CHANNEL_ORDER,
    PUBLISHED_FILES,
    canonical_from_checkpoint_order,
    first_conv_channel_norms,
    import_checkpoint,
)
from protloc.pretrained.tensorbundle import mask_crc, read_tensor_bundle

from tests.helpers.pretrained import CKPT_DIR, DATA, INDEX, needs_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


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
