"""Readers: channel files in every encoding the data sets use, npz and multichannel files, real HPA images."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL
from protloc.data.formats import discover, read, read_file
from protloc.data.formats.channel_files import read_channel_file
from protloc.data.formats.npz import NPZ_CHANNEL_ORDER
from protloc.data.formats.npz import read_array as read_npz_sample


def read_sample(sources, _format=None, **options):
    return read(sources, **options).image


def read_multichannel_file(path, **options):
    return read_file(path, **options).image
from protloc.errors import DataError, ProtlocError

from tests.conftest import shared_dir

REAL_HPA = shared_dir() / "real-hpa"
needs_real_hpa = pytest.mark.skipif(not REAL_HPA.is_dir(), reason=f"real HPA images not present at {REAL_HPA}")


def rng_image(shape, dtype, seed=0, high=None):
    rng = np.random.default_rng(seed)
    high = high if high is not None else np.iinfo(dtype).max
    return rng.integers(0, high, size=shape, endpoint=True).astype(dtype)


def write_sample(folder: Path, sample_id: str, planes: dict, ext=".tif"):
    """Write one grayscale file per channel; returns the sources dict."""
    sources = {}
    for channel, array in planes.items():
        path = folder / f"{sample_id}_{COLOUR_OF_CHANNEL[channel]}{ext}"
        if ext in (".tif", ".tiff"):
            tifffile.imwrite(path, array)
        else:
            Image.fromarray(array).save(path)
        sources[channel] = str(path)
    return sources


# ---- single channel files -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiff_keeps_native_dtype_and_values(tmp_path, dtype):
    array = rng_image((37, 53), dtype)
    tifffile.imwrite(tmp_path / "a_blue.tif", array)
    out = read_channel_file(tmp_path / "a_blue.tif")
    assert out.dtype == dtype and out.shape == (37, 53)
    np.testing.assert_array_equal(out, array)


def test_png_8_and_16_bit_and_jpeg(tmp_path):
    a8 = rng_image((40, 24), np.uint8, seed=1)
    a16 = rng_image((40, 24), np.uint16, seed=2)
    Image.fromarray(a8).save(tmp_path / "x_red.png")
    Image.fromarray(a16).save(tmp_path / "x_green.png")
    np.testing.assert_array_equal(read_channel_file(tmp_path / "x_red.png"), a8)
    out16 = read_channel_file(tmp_path / "x_green.png")
    assert out16.dtype.itemsize == 2
    np.testing.assert_array_equal(out16, a16)
    smooth = np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (40, 1))
    Image.fromarray(smooth).save(tmp_path / "x_blue.JPG", quality=95)
    out = read_channel_file(tmp_path / "x_blue.JPG")
    assert out.shape == (40, 24)
    assert np.abs(out.astype(int) - smooth).max() <= 8  # lossy, but the same picture


@pytest.mark.parametrize(
    "colour,planes",
    [("blue", (2,)), ("green", (1,)), ("red", (0,)), ("yellow", (0, 1))],
)
def test_rgb_colour_encoded_files_become_grayscale_from_their_planes(tmp_path, colour, planes):
    signal = rng_image((30, 45), np.uint8, seed=3)
    rgb = np.zeros((30, 45, 3), np.uint8)
    for p in planes:
        rgb[..., p] = signal
    # Leakage into the other planes (as JPEG compression produces) must not leak into the channel.
    other = [p for p in range(3) if p not in planes]
    rgb[..., other] = (signal[..., None] // 4)
    Image.fromarray(rgb).save(tmp_path / f"s_{colour}.png")
    out = read_channel_file(tmp_path / f"s_{colour}.png")
    assert out.shape == (30, 45)
    np.testing.assert_allclose(out, signal)


def test_yellow_is_mean_of_red_and_green_planes(tmp_path):
    r = rng_image((20, 20), np.uint8, seed=4)
    g = rng_image((20, 20), np.uint8, seed=5)
    rgb = np.stack([r, g, np.zeros_like(r)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "s_yellow.png")
    out = read_channel_file(tmp_path / "s_yellow.png")
    np.testing.assert_allclose(out, (r.astype(np.float32) + g) / 2)


def test_rgba_and_unknown_colour_use_max_over_planes(tmp_path):
    signal = rng_image((16, 24), np.uint8, seed=6, high=200)
    rgba = np.zeros((16, 24, 4), np.uint8)
    rgba[..., 1] = signal
    rgba[..., 3] = 255  # opaque alpha must be ignored
    Image.fromarray(rgba).save(tmp_path / "plain.png")
    np.testing.assert_array_equal(read_channel_file(tmp_path / "plain.png"), signal)


def test_rgb_with_signal_in_an_unexpected_plane_falls_back_to_it(tmp_path):
    signal = rng_image((16, 16), np.uint8, seed=7, high=250) + 1
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 1] = signal  # "blue" file drawn in green
    Image.fromarray(rgb).save(tmp_path / "s_blue.png")
    np.testing.assert_array_equal(read_channel_file(tmp_path / "s_blue.png"), signal)


def test_planar_rgb_tiff_16_bit(tmp_path):
    signal = rng_image((3, 21, 34), np.uint16, seed=8)
    signal[1:] = 0
    tifffile.imwrite(tmp_path / "t_red.tif", signal, photometric="rgb", planarconfig="separate")
    out = read_channel_file(tmp_path / "t_red.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, signal[0])


def test_truncated_tiff_png_jpeg_are_data_errors(tmp_path):
    array = rng_image((64, 64), np.uint16, seed=9)
    tifffile.imwrite(tmp_path / "t_blue.tif", array)
    Image.fromarray(rng_image((64, 64), np.uint8, seed=10)).save(tmp_path / "t_red.png")
    Image.fromarray(rng_image((64, 64, 3), np.uint8, seed=11)).save(tmp_path / "t_green.jpg")
    for name in ("t_blue.tif", "t_red.png", "t_green.jpg"):
        path = tmp_path / name
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(DataError, match=name.replace(".", r"\.")):
            read_channel_file(path)


def test_not_an_image_and_missing_file(tmp_path):
    (tmp_path / "n_blue.png").write_text("hello")
    with pytest.raises(DataError, match="unreadable n_blue.png"):
        read_channel_file(tmp_path / "n_blue.png")
    with pytest.raises(DataError, match="missing file"):
        read_channel_file(tmp_path / "absent_blue.png")


# ---- whole samples ----------------------------------------------------------------------------------


def test_read_sample_canonical_order_float32_non_square(tmp_path):
    planes = {c: rng_image((48, 80), np.uint16, seed=i) for i, c in enumerate(CHANNELS)}
    sources = write_sample(tmp_path, "s1", planes)
    image = read_sample(sources, "channels")
    assert image.dtype == np.float32 and image.shape == (4, 48, 80)
    for i, channel in enumerate(CHANNELS):
        np.testing.assert_array_equal(image[i], planes[channel].astype(np.float32))


def test_read_sample_mismatched_shapes_and_missing_channel(tmp_path):
    planes = {c: rng_image((32, 32), np.uint8, seed=i) for i, c in enumerate(CHANNELS)}
    planes["er"] = rng_image((32, 40), np.uint8)
    sources = write_sample(tmp_path, "m", planes, ext=".png")
    with pytest.raises(DataError, match="different shapes.*yellow 32x40"):
        read_sample(sources, "channels")
    del sources["protein"]
    with pytest.raises(DataError, match=r"missing channel green \(protein\)"):
        read_sample(sources, "channels")


def test_npz_sample_channel_order(tmp_path):
    hwc = rng_image((24, 36, 4), np.uint8, seed=12)
    np.savez(tmp_path / "k1.npz", sample=hwc)
    image = read_npz_sample(tmp_path / "k1.npz")
    assert image.shape == (4, 24, 36) and image.dtype == np.float32
    for i, channel in enumerate(CHANNELS):
        np.testing.assert_array_equal(image[i], hwc[..., NPZ_CHANNEL_ORDER.index(channel)])
    np.savez(tmp_path / "bad.npz", other=hwc)
    with pytest.raises(DataError, match="no 'sample'"):
        read_npz_sample(tmp_path / "bad.npz")
    np.savez(tmp_path / "three.npz", sample=hwc[..., :3])
    with pytest.raises(DataError, match="4 channels"):
        read_npz_sample(tmp_path / "three.npz")
    data = (tmp_path / "k1.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="unreadable cut.npz"):
        read_npz_sample(tmp_path / "cut.npz")


@pytest.mark.parametrize("layout", ["chw", "hwc"])
def test_multichannel_tiff(tmp_path, layout):
    chw = rng_image((4, 20, 28), np.uint16, seed=13)
    tifffile.imwrite(tmp_path / "m.tif", chw if layout == "chw" else np.moveaxis(chw, 0, -1), photometric="minisblack")
    np.testing.assert_array_equal(read_multichannel_file(tmp_path / "m.tif"), chw.astype(np.float32))


def test_multichannel_rejects_wrong_plane_count(tmp_path):
    tifffile.imwrite(tmp_path / "m.tif", rng_image((3, 20, 28), np.uint8), photometric="minisblack")
    with pytest.raises(DataError, match="4 channels"):
        read_multichannel_file(tmp_path / "m.tif")


def test_discover_inputs_mixes_files_folders_and_multichannel(tmp_path):
    planes = {c: rng_image((16, 24), np.uint8, seed=i) for i, c in enumerate(CHANNELS)}
    flat = tmp_path / "flat"
    flat.mkdir()
    write_sample(flat, "a", planes, ext=".png")
    per_sample = tmp_path / "b"
    per_sample.mkdir()
    for channel, array in planes.items():
        Image.fromarray(array).save(per_sample / f"{COLOUR_OF_CHANNEL[channel]}.png")
    tifffile.imwrite(tmp_path / "c.tif", np.stack([planes[c] for c in CHANNELS]), photometric="minisblack")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    write_sample(dataset, "d1", planes)
    broken = dict(planes)
    del broken["er"]
    write_sample(dataset, "d2", broken)
    (dataset / "labels.csv").write_text("id,labels\nd1,Nucleus\n")
    entries = discover([flat / "a_blue.png", flat / "a_red.png", per_sample, tmp_path / "c.tif", dataset,
                               flat])
    assert [e.id for e in entries] == ["a", "b", "c", "d1", "d2", "a#2"]
    assert entries[3].labels == (10,) and entries[0].labels is None
    for entry in entries[:4]:
        image = read(entry).image
        assert image.shape == (4, 16, 24)
        np.testing.assert_array_equal(image[3], planes["protein"])
    with pytest.raises(DataError, match="missing channel yellow"):  # reported when decoded, not hidden
        read(entries[4]).image
    with pytest.raises(ProtlocError, match="no such file"):
        discover([tmp_path / "nope.png"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ProtlocError, match="not a channel file"):
        discover([tmp_path / "notes.txt"])


# ---- the real HPA field in its two published formats ------------------------------------------------


@needs_real_hpa
def test_real_hpa_download_jpegs():
    folder = REAL_HPA / "hpa-download"
    stem = "57639_1283_B2_10"
    sources = {c: str(folder / f"{stem}_{COLOUR_OF_CHANNEL[c]}.jpg") for c in CHANNELS}
    image = read_sample(sources, "channels")
    assert image.shape == (4, 2048, 2048) and image.dtype == np.float32
    nucleus = image[0]
    assert nucleus.max() > 200 and nucleus.std() > 10  # stained nuclei, not an empty plane
    assert (nucleus > 50).mean() > 0.02
    rgb = np.asarray(Image.open(folder / f"{stem}_yellow.jpg")).astype(np.float32)
    np.testing.assert_allclose(image[2], (rgb[..., 0] + rgb[..., 1]) / 2)
    # Each single-colour file contributes its own plane, not JPEG leakage from the others.
    blue = np.asarray(Image.open(folder / f"{stem}_blue.jpg"))
    np.testing.assert_array_equal(image[0], blue[..., 2])
    green = np.asarray(Image.open(folder / f"{stem}_green.jpg"))
    np.testing.assert_array_equal(image[3], green[..., 1])


@needs_real_hpa
def test_real_kaggle_pngs_match_the_jpeg_field():
    folder = REAL_HPA / "kaggle-png"
    stem = "b478cc78-bad4-11e8-b2b8-ac1f6b6435d0"
    sources = {c: str(folder / f"{stem}_{COLOUR_OF_CHANNEL[c]}.png") for c in CHANNELS}
    image = read_sample(sources, "kaggle-hpa")
    assert image.shape == (4, 512, 512) and image.dtype == np.float32
    assert image[0].std() > 10 and image.min() >= 0 and image.max() <= 255
    # Same field as the 2048² JPEGs: downscaled 4x, every channel correlates strongly with them.
    jpeg = read_sample(
        {c: str(REAL_HPA / "hpa-download" / f"57639_1283_B2_10_{COLOUR_OF_CHANNEL[c]}.jpg") for c in CHANNELS},
        "channels",
    )
    small = jpeg.reshape(4, 512, 4, 512, 4).mean(axis=(2, 4))
    for c in range(4):
        assert np.corrcoef(small[c].ravel(), image[c].ravel())[0, 1] > 0.9, CHANNELS[c]
