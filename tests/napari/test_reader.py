"""The napari reader on real files, without a viewer: what it claims, the layers it makes, bad input.

These need neither napari nor a display (the reader is plain protloc); the viewer tests are in
tests/napari/test_viewer.py.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.helpers.napari import shared_path
from protloc.data.channels import AUTHORS_CHANNEL_ORDER, CHANNELS
from protloc.data.formats import discover, read
from protloc.errors import DataError, ProtlocError
from protloc.napari.reader import contrast_limits, get_reader, read_samples

HPA_COLOURS_OF_LAYERS = {"nucleus": "blue", "microtubules": "red", "er": "yellow", "protein": "green"}
HPA_ID = "57639_1283_B2_10"
KAGGLE_ID = "b478cc78-bad4-11e8-b2b8-ac1f6b6435d0"


def check_channel_layers(layers, sample_id: str, expected: np.ndarray) -> None:
    assert [kind for _, _, kind in layers] == ["image"] * 4
    assert [meta["name"] for _, meta, _ in layers] == [f"{c} · {sample_id}" for c in CHANNELS]
    for channel, (data, meta, _), plane in zip(CHANNELS, layers, expected):
        assert meta["colormap"] == HPA_COLOURS_OF_LAYERS[channel]
        assert meta["blending"] == "additive"
        assert meta["metadata"]["protloc"]["channel"] == channel
        assert meta["metadata"]["protloc"]["sample_id"] == sample_id
        np.testing.assert_array_equal(data, plane)
        low, high = meta["contrast_limits"]
        assert data.min() <= low < high <= data.max()


@pytest.mark.parametrize("folder, sample_id", [("hpa-download", HPA_ID), ("kaggle-png", KAGGLE_ID)])
def test_real_field_folder_file_and_file_list_give_four_hpa_coloured_layers(folder, sample_id):
    root = shared_path("real-hpa", folder)
    expected = read(discover([root])[0]).image  # what protloc predict reads
    green = next(root.glob("*_green.*"))
    for path in (str(root), str(green), sorted(str(p) for p in root.iterdir())):
        reader = get_reader(path)
        assert reader is read_samples, path
        check_channel_layers(reader(path), sample_id, expected)


def test_npz_layers_follow_the_authors_channel_order(tmp_path):
    sample = np.zeros((24, 32, 4), dtype=np.uint8)
    for k, channel in enumerate(AUTHORS_CHANNEL_ORDER):
        sample[..., k] = 10 * (CHANNELS.index(channel) + 1)
        sample[0, 0, k] = 255  # contrast needs more than one value
    path = tmp_path / "key.npz"
    np.savez(path, sample=sample)
    layers = get_reader(str(path))(str(path))
    means = {meta["metadata"]["protloc"]["channel"]: np.median(data) for data, meta, _ in layers}
    assert means == {"nucleus": 10, "microtubules": 20, "er": 30, "protein": 40}


def test_four_plane_tiff_is_claimed_and_single_plane_or_unnamed_images_are_not(tmp_path):
    stack = np.random.default_rng(0).integers(0, 4000, (4, 40, 48), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "field.tif", stack, photometric="minisblack")
    layers = get_reader(str(tmp_path / "field.tif"))(str(tmp_path / "field.tif"))
    np.testing.assert_array_equal(np.stack([d for d, _, _ in layers]), stack.astype(np.float32))

    tifffile.imwrite(tmp_path / "plain.tif", stack[0])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "holiday.png")
    (tmp_path / "notes.txt").write_text("hello")
    for other in ("plain.tif", "holiday.png", "notes.txt"):
        assert get_reader(str(tmp_path / other)) is None, other
    unrelated = tmp_path / "series"
    unrelated.mkdir()
    for t in range(3):
        tifffile.imwrite(unrelated / f"t{t}.tif", stack, photometric="minisblack")
    assert get_reader(str(unrelated)) is None  # somebody's time series, not one sample
    empty = tmp_path / "empty"
    empty.mkdir()
    assert get_reader(str(empty)) is None


def test_missing_channel_and_two_samples_are_claimed_with_a_one_line_reason(tmp_path):
    root = shared_path("real-hpa", "kaggle-png")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    for path in root.iterdir():
        if not path.name.endswith("_red.png"):
            shutil.copy(path, incomplete / path.name)
    for target in (str(incomplete), str(incomplete / f"{KAGGLE_ID}_blue.png")):
        reader = get_reader(target)
        assert reader is not None
        with pytest.raises(DataError, match=r"^missing channel red \(microtubules\)$"):
            reader(target)

    two = tmp_path / "two"
    two.mkdir()
    for path in root.iterdir():
        shutil.copy(path, two / path.name)
        shutil.copy(path, two / path.name.replace(KAGGLE_ID, "second"))
    with pytest.raises(ProtlocError, match="holds 2 samples .*: open one sample's channel files") as info:
        get_reader(str(two))(str(two))
    assert "\n" not in str(info.value)


def test_truncated_channel_file_is_a_one_line_error(tmp_path):
    root = shared_path("real-hpa", "kaggle-png")
    for path in root.iterdir():
        shutil.copy(path, tmp_path / path.name)
    damaged = tmp_path / f"{KAGGLE_ID}_green.png"
    damaged.write_bytes(damaged.read_bytes()[:5000])
    with pytest.raises(DataError, match=f"^unreadable {KAGGLE_ID}_green.png: ") as info:
        get_reader(str(tmp_path))(str(tmp_path))
    assert "\n" not in str(info.value)


def test_contrast_limits_ignore_hot_pixels_and_never_collapse():
    plane = np.tile(np.arange(100, dtype=np.float32), (100, 1))
    plane[5, 5] = 60000.0  # one hot pixel
    low, high = contrast_limits(plane)
    assert 0 <= low < 1 and 98 <= high <= 99
    assert contrast_limits(np.full((8, 8), 7.0, dtype=np.float32)) == [7.0, 8.0]
