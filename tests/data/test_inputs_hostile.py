"""Values read from files are checked where they enter (issue 23): each hostile input is skipped with
its one-line reason (``protloc predict`` lists skipped inputs on stderr and in ``<out>.errors.csv``;
``data scan`` excludes them with the same reason), never predicted with a wrong answer."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.helpers.formats import chunk_files, field, write_channel_files, write_ngff, write_ome_tiff
from protloc.cli import main

# file (in the hostile folder) -> the one line its sample is skipped with
EXPECTED = {
    "nan": "nan.ome.tif: OME PhysicalSizeX gives nan µm per pixel, not a pixel size (must be between 0.001 and 1000)",
    "negative": "negative.ome.tif: OME PhysicalSizeX gives -1 µm per pixel, not a pixel size",
    "tiny": "tiny.ome.tif: OME PhysicalSizeX gives 2.5e-06 µm per pixel, not a pixel size",
    "huge": "huge.ome.tif: OME PhysicalSizeX gives 5000 µm per pixel, not a pixel size",
    "nanometre-nan": "nanometre-nan.ome.tif: OME PhysicalSizeX gives nan µm per pixel",
    "resolution": "resolution.tif: TIFF XResolution 1/1000000000 px per cm gives 1e+13 µm per pixel, not a pixel size",
    "channels": "channels_blue.tif: TIFF XResolution 1/1000000000 px per cm gives 1e+13 µm per pixel",
    "one": "image of 1x1 pixels is too small to predict (at least 16x16",
    "three": "image of 3x3 pixels is too small to predict (at least 16x16",
    "thin": "image of 3x64 pixels is too small to predict",
    "sparse": "sparse: 4 of 16 chunks are missing from the store (zarr would read them as zeros); restore them, or add "
              "--allow-sparse-zarr",
    "empty": "empty: 16 of 16 chunks are missing from the store",
    "ngff-negative": "ngff-negative: NGFF scale X gives -0.08 µm per pixel, not a pixel size",
}


def _tiff_with_resolution(path: Path, data, resolution) -> None:
    tifffile.imwrite(path, data, resolution=resolution, resolutionunit="CENTIMETER", photometric="minisblack")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    data = field(0)
    tifffile.imwrite(folder / "good.tif", data)
    for name, size in (("nan", "NaN"), ("negative", "-1"), ("tiny", "2.5e-6"), ("huge", "5000")):
        write_ome_tiff(folder / f"{name}.ome.tif", data, size)
    write_ome_tiff(folder / "nanometre-nan.ome.tif", data, "nan", unit="nm")
    _tiff_with_resolution(folder / "resolution.tif", data, ((1, 1_000_000_000), (1, 1_000_000_000)))
    _tiff_with_resolution(folder / "zero-resolution.tif", data, ((0, 1000), (0, 1000)))
    for path in write_channel_files(folder, "channels", data, suffix=".tif"):
        _tiff_with_resolution(path, tifffile.imread(path), ((1, 1_000_000_000), (1, 1_000_000_000)))
    tifffile.imwrite(folder / "one.tif", np.ones((4, 1, 1), np.uint16))
    tifffile.imwrite(folder / "three.tif", np.ones((4, 3, 3), np.uint16))
    tifffile.imwrite(folder / "thin.tif", np.ones((4, 3, 64), np.uint16))
    for name in ("sparse", "empty"):
        write_ngff(folder / f"{name}.ome.zarr", data, chunks=(1, 32, 32))  # 4 x 2 x 2 = 16 chunks
    for path in chunk_files(folder / "sparse.ome.zarr")[::4]:
        path.unlink()
    for path in chunk_files(folder / "empty.ome.zarr"):
        path.unlink()
    write_ngff(folder / "ngff-negative.ome.zarr", data, pixel_um=-0.08)
    return folder


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_skips_each_hostile_input_with_its_reason(hostile, model_file, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(hostile), "--model", str(model_file), "--out", str(out), "--workers", "0"]) == 0
    # the sound inputs are the only answers (a zero resolution is "not set", as image programs write it)
    assert [(row["id"], row["pixel_size_um"]) for row in _rows(out)] == [("good", ""), ("zero-resolution", "")]
    reasons = {row["id"]: row["reason"] for row in _rows(tmp_path / "p.errors.csv")}
    assert set(reasons) == set(EXPECTED)
    for sample_id, expected in EXPECTED.items():
        assert expected in reasons[sample_id] and "\n" not in reasons[sample_id], (sample_id, reasons[sample_id])
    err = capsys.readouterr().err
    assert f"skipped {len(EXPECTED)} unreadable image(s)" in err and "Traceback" not in err


def test_data_scan_excludes_them_with_the_same_reasons(hostile):
    from protloc.data.index import scan_dataset

    index = scan_dataset(hostile)
    assert index.ids() == ["good", "zero-resolution"]
    excluded = {item["id"]: item["reason"] for item in index.excluded}
    assert set(excluded) == set(EXPECTED)
    for sample_id, expected in EXPECTED.items():
        assert expected in excluded[sample_id], (sample_id, excluded[sample_id])


def test_allow_sparse_zarr_reads_a_sparse_store_and_pixel_size_overrides_a_bad_file(hostile, model_file, tmp_path):
    out = tmp_path / "p.csv"
    assert main(["predict", str(hostile / "sparse.ome.zarr"), str(hostile / "nan.ome.tif"), "--model",
                 str(model_file), "--out", str(out), "--workers", "0", "--allow-sparse-zarr", "--pixel-size", "0.08"]) == 0
    rows = _rows(out)
    assert [row["id"] for row in rows] == ["sparse", "nan"] and {row["pixel_size_um"] for row in rows} == {"0.08"}


def test_missing_chunks_are_never_read_as_zeros_by_the_reader(hostile):
    from protloc.data.formats import discover, read
    from protloc.errors import DataError

    (entry,) = discover([hostile / "sparse.ome.zarr"])
    with pytest.raises(DataError, match="chunks are missing"):
        read(entry)
    (sparse,) = discover([hostile / "sparse.ome.zarr"], reader_options={"allow-sparse": "yes"})
    assert (read(sparse).image == 0).any()  # the fill value where chunks are missing, as asked for
