"""One folder holding every supported format: every command lists the same samples from it (issue 24).

channel files (PNG), the authors' .npz, a plain 4-plane TIFF, an OME-TIFF naming its channels (labelled
as ``d`` in labels.csv: read as an OME-TIFF, id without ``.ome``), an OME-Zarr image and an HCS plate.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.helpers.formats import field, write_channel_files, write_ngff, write_ome_tiff, write_plate
from protloc.cli import main

IDS = ["a", "b", "c", "d", "e", "plate/B/2/0"]
ZARR_IDS = {"e", "plate/B/2/0"}


@pytest.fixture(scope="module")
def every_format(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("every")
    write_channel_files(folder, "a", field(1))
    np.savez(folder / "b.npz", sample=np.moveaxis(field(2), 0, -1).astype(np.uint8))
    tifffile.imwrite(folder / "c.tif", field(3))
    write_ome_tiff(folder / "d.ome.tif", field(4))
    write_ngff(folder / "e.ome.zarr", field(5))
    write_plate(folder / "plate.zarr", field(6))
    (folder / "labels.csv").write_text("id,labels\na,Nucleus\nb,Cytosol\nc,Nucleus\nd,Cytosol\ne,Nucleus\nplate/B/2/0,Cytosol\n")
    return folder


@pytest.mark.slow
def test_data_scan_lists_and_labels_every_format(every_format):
    from protloc.data.index import scan_dataset

    index = scan_dataset(every_format)
    assert index.ids() == IDS and index.excluded == []
    entry = index.entry("d")
    assert "ome-tiff" in entry.sources and entry.labels is not None  # the labelled x.ome.tif is an OME-TIFF
    assert index.read("d").channel_names == ("DAPI", "anti-Tubulin", "Calreticulin", "GFP")
    assert index.read("d").pixel_size.um == pytest.approx(0.08)


def test_predict_lists_the_same_samples(every_format, model_file, tmp_path):
    out = tmp_path / "p.csv"
    assert main(["predict", str(every_format), "--model", str(model_file), "--out", str(out), "--workers", "0"]) == 0
    with open(out, newline="") as handle:
        assert [row["id"] for row in csv.DictReader(handle)] == IDS


@pytest.mark.slow
def test_cells_lists_the_same_samples(every_format, model_file, tmp_path):
    pytest.importorskip("anndata")
    from protloc.cells.pipeline import run_cells

    result = run_cells([every_format], model_file, tmp_path / "cells.csv")
    with open(tmp_path / "cells.csv", newline="") as handle:
        with_cells = {row["image_id"] for row in csv.DictReader(handle)}
    assert result.failures == [] and sorted(with_cells | set(result.no_cells)) == IDS


def test_the_napari_reader_opens_each_of_them(every_format):
    from protloc.napari.reader import get_reader

    paths = {"a": every_format / "a_blue.png", "b": every_format / "b.npz", "c": every_format / "c.tif",
             "d": every_format / "d.ome.tif", "e": every_format / "e.ome.zarr", "plate/B/2/0": every_format / "plate.zarr"}
    for sample_id, path in paths.items():
        reader = get_reader(str(path))
        assert reader is not None, path
        layers = reader(str(path))
        assert {layer[1]["metadata"]["protloc"]["sample_id"] for layer in layers} == {sample_id}


def test_the_platform_unpacks_the_same_samples_from_a_zip(every_format, tmp_path):
    import shutil

    from protloc.web.uploads.archives import group_samples

    unpacked = tmp_path / "unpacked"
    shutil.copytree(every_format, unpacked)
    files = [p for p in unpacked.rglob("*") if p.is_file()]
    samples, skipped = group_samples(files, unpacked)
    assert [s["name"] for s in samples] == sorted(set(IDS) - ZARR_IDS)
    # a store is a folder, not a file the platform can keep: listed with the reason, never dropped silently
    assert {s["name"] for s in skipped if "OME-Zarr" in s["reason"]} == {"e.ome.zarr", "plate.zarr"}
    assert {s["name"] for s in skipped} == {"e.ome.zarr", "plate.zarr", "labels.csv"}
