"""OME-TIFF and OME-Zarr (NGFF) inputs, label images written back, and their bad inputs.

The files are written here with tifffile and ome-zarr-py, the libraries microscopy tools write them
with; channel names are shuffled so that only the names can tell which channel is which.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

import protloc
from protloc.cli import main
from protloc.data.channels import CHANNELS
from protloc.data.channels import channel_of_name
from protloc.data.formats import discover, read


def ome_inputs(path, options=None):
    return [(e.id, e.sources) for e in discover([path], reader_options=options)]
from protloc.labels import HPA13

import zarr  # the formats extra; in dev, so CI installs it
from ome_zarr import writer as ome_writer

from tests.conftest import shared_dir

SHARED = shared_dir()
# The file's channel order and names: protein first, as a microscope's acquisition order might be.
FILE_NAMES = ["GFP", "DAPI", "anti-Tubulin (Alexa 568)", "Calreticulin"]
FILE_TO_CANONICAL = [1, 2, 3, 0]  # canonical channel i is the file's channel FILE_TO_CANONICAL[i]


def field(seed: int, shape=(4, 72, 56)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)


def write_ome_tiff(path: Path, data: np.ndarray, names=FILE_NAMES, axes="CYX", size_x=80.0, unit="nm", **kwargs):
    metadata = {"axes": axes, "Channel": {"Name": list(names)}, "PhysicalSizeX": size_x, "PhysicalSizeXUnit": unit,
                "PhysicalSizeY": size_x, "PhysicalSizeYUnit": unit}
    tifffile.imwrite(path, data, ome=True, metadata=metadata, **kwargs)
    return path


def write_ngff_image(group, data: np.ndarray, names=FILE_NAMES, pixel_um=0.08):
    ome_writer.write_image(
        data, group, axes="cyx", scale={"c": 1.0, "y": pixel_um, "x": pixel_um}, scale_factors=(2,),
        axes_units={"y": "micrometer", "x": "micrometer"},
        omero={"channels": [{"label": n, "color": "FFFFFF", "window": {"start": 0, "end": 4000, "min": 0,
                                                                          "max": 65535}} for n in names]},
    )


def write_plate(path: Path, fields_per_well=2, wells=("B/2", "B/3"), zarr_format=3) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    ome_writer.write_plate_metadata(root, ["B"], sorted({w.split("/")[1] for w in wells}), list(wells))
    written = {}
    for w, well in enumerate(wells):
        well_group = root.require_group(well)
        ome_writer.write_well_metadata(well_group, [str(f) for f in range(fields_per_well)])
        for f in range(fields_per_well):
            data = field(10 * w + f)
            write_ngff_image(well_group.require_group(str(f)), data)
            written[f"{path.name.removesuffix('.zarr')}/{well}/{f}"] = data
    return written


def canonical(data: np.ndarray) -> np.ndarray:
    return data[FILE_TO_CANONICAL].astype(np.float32)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_channel_names_of_the_field():
    assert channel_of_name("Hoechst 33342") == {"nucleus"}
    assert channel_of_name("anti-alpha-Tubulin") == {"microtubules"}
    assert channel_of_name("Endoplasmic Reticulum") == {"er"}
    assert channel_of_name("ER") == {"er"}
    assert channel_of_name("EGFP") == {"protein"}
    assert channel_of_name("green") == {"protein"}
    assert channel_of_name("Brightfield") == set()
    assert channel_of_name("Tubulin-GFP") == {"microtubules", "protein"}  # ambiguous: needs --channels


def test_ome_tiff_channels_by_name_and_pixel_size(tmp_path):
    data = field(0)
    path = write_ome_tiff(tmp_path / "cells.ome.tif", data)
    ((sample_id, sources),) = ome_inputs(path)
    sample = read(sources)
    assert sample_id == "cells"
    assert sample.image.dtype == np.float32 and sample.image.shape == (4, 72, 56)
    assert np.array_equal(sample.image, canonical(data))
    assert sample.channel_names == ("DAPI", "anti-Tubulin (Alexa 568)", "Calreticulin", "GFP")
    assert sample.pixel_size.um == pytest.approx(0.08)  # 80 nm in µm


def test_ome_tiff_pyramid_reads_full_resolution(tmp_path):
    data = field(1, (4, 128, 96))
    path = tmp_path / "pyramid.ome.tif"
    metadata = {"axes": "CYX", "Channel": {"Name": FILE_NAMES}, "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(data, subifds=2, metadata=metadata)
        tif.write(data[:, ::2, ::2], subfiletype=1)
        tif.write(data[:, ::4, ::4], subfiletype=1)
    with tifffile.TiffFile(path) as check:
        assert len(check.series[0].levels) == 3
    sample = read(ome_inputs(path)[0][1])
    assert np.array_equal(sample.image, canonical(data))
    assert sample.pixel_size.um == 0.5


def test_ome_tiff_z_stack_needs_projection(tmp_path, capsys, model_file):
    stack = np.stack([field(2), field(3), field(4)])  # Z, C, Y, X
    path = write_ome_tiff(tmp_path / "stack.ome.tif", stack, axes="ZCYX")
    assert main(["predict", str(path), "--model", str(model_file), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Z-stack of 3 planes" in err and "--projection" in err
    sample = read(ome_inputs(path, {"projection": "max"})[0][1])
    assert np.array_equal(sample.image, canonical(stack.max(axis=0)))


def test_ome_tiff_time_series_refused(tmp_path, capsys, model_file):
    series = np.stack([field(5), field(6)])  # T, C, Y, X
    path = write_ome_tiff(tmp_path / "movie.ome.tif", series, axes="TCYX")
    assert main(["predict", str(path), "--model", str(model_file), "--out", str(tmp_path / "p.csv")]) == 2
    assert "time series of 2 planes" in capsys.readouterr().err


def test_ome_tiff_three_channels_is_one_line_error(tmp_path, capsys, model_file):
    path = write_ome_tiff(tmp_path / "three.ome.tif", field(7, (3, 40, 40)), names=["DAPI", "Tubulin", "GFP"])
    assert main(["predict", str(path), "--model", str(model_file), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "3 channel(s)" in err and "'DAPI', 'Tubulin', 'GFP'" in err and "needs 4" in err
    assert not (tmp_path / "p.csv").exists()


def test_ome_tiff_unknown_names_then_channels_mapping(tmp_path, capsys, model_file):
    data = field(8)
    names = ["ch-A", "ch-B", "ch-C", "ch-D"]
    path = write_ome_tiff(tmp_path / "odd.ome.tif", data, names=names)
    out = tmp_path / "p.csv"
    assert main(["predict", str(path), "--model", str(model_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no nucleus, microtubules, er, protein channel" in err and "--channels" in err
    # By name, then positionally (the file's channels in order); both give the same sample.
    by_name = "ch-B=nucleus,ch-C=microtubules,ch-D=er,ch-A=protein"
    assert main(["predict", str(path), "--model", str(model_file), "--out", str(out), "--channels", by_name,
                 "--workers", "0"]) == 0
    (row,) = read_csv(out)
    expected = protloc.load_model(model_file).predict_proba(canonical(data))
    assert [float(row[c]) for c in HPA13.classes] == pytest.approx(expected.tolist(), abs=2e-6)
    positional = read(ome_inputs(path, {"channels": "protein,nucleus,microtubules,er"})[0][1])
    assert np.array_equal(positional.image, canonical(data))
    assert main(["predict", str(path), "--model", str(model_file), "--out", str(out), "--channels", "DAPI=nucleus,GFP=golgi"]) == 2
    assert "unknown channel 'golgi'" in capsys.readouterr().err


@pytest.mark.slow
def test_ome_zarr_plate_predicts_every_field(tmp_path, model_file, capsys):
    """Done-when: an OME-Zarr plate of a few fields predicts with nothing but the input."""
    plate = tmp_path / "plate.zarr"
    written = write_plate(plate)
    out = tmp_path / "plate.csv"
    assert main(["predict", str(plate), "--model", str(model_file), "--out", str(out), "--workers", "2"]) == 0
    rows = {row["id"]: row for row in read_csv(out)}
    assert sorted(rows) == ["plate/B/2/0", "plate/B/2/1", "plate/B/3/0", "plate/B/3/1"]
    assert "plate/B/2/0 (and 3 more samples like it): DAPI -> nucleus" in capsys.readouterr().err
    predictor = protloc.load_model(model_file)
    for sample_id, data in written.items():
        expected = predictor.predict_proba(canonical(data))
        assert [float(rows[sample_id][c]) for c in HPA13.classes] == pytest.approx(expected.tolist(), abs=2e-6)
    ((_, sources),) = [s for s in ome_inputs(plate) if s[0] == "plate/B/3/1"]
    sample = read(sources)
    assert sample.pixel_size.um == pytest.approx(0.08)
    assert np.array_equal(sample.image, canonical(written["plate/B/3/1"]))


def test_ome_tiff_predicts_with_nothing_but_the_input(tmp_path, model_file, capsys):
    """Done-when: a 4-channel OME-TIFF with channel names and pixel size predicts without flags."""
    data = field(9)
    path = write_ome_tiff(tmp_path / "field.ome.tiff", data)
    out = tmp_path / "p.csv"
    assert main(["predict", str(path), "--model", str(model_file), "--out", str(out), "--workers", "0"]) == 0
    # nothing assumed silently: which channel became which, and the pixel size, are said
    assert ("field: DAPI -> nucleus, anti-Tubulin (Alexa 568) -> microtubules, Calreticulin -> er, "
            "GFP -> protein; pixel size 0.08 µm") in capsys.readouterr().err
    (row,) = read_csv(out)
    assert row["id"] == "field"
    expected = protloc.load_model(model_file).predict_proba(canonical(data))
    assert [float(row[c]) for c in HPA13.classes] == pytest.approx(expected.tolist(), abs=2e-6)


def test_ngff_04_single_image_and_folder_of_ome_tiffs(tmp_path):
    # NGFF 0.4 lives in zarr v2 stores (.zattrs); a single image is one sample named after the store.
    root = zarr.open_group(str(tmp_path / "one.ome.zarr"), mode="w", zarr_format=2)
    data = field(11)
    write_ngff_image(root, data)
    ((sample_id, sources),) = ome_inputs(tmp_path / "one.ome.zarr")
    assert sample_id == "one" and np.array_equal(read(sources).image, canonical(data))
    # bioformats2raw's container: numbered images under a root that says its layout
    container = zarr.open_group(str(tmp_path / "converted.zarr"), mode="w")
    container.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    for series in ("0", "1"):
        write_ngff_image(container.require_group(series), field(13))
    assert [s[0] for s in ome_inputs(tmp_path / "converted.zarr")] == ["converted/0", "converted/1"]
    folder = tmp_path / "tiffs"
    folder.mkdir()
    for i in range(3):
        write_ome_tiff(folder / f"f{i}.ome.tif", field(20 + i))
    assert [s[0] for s in ome_inputs(folder)] == ["f0", "f1", "f2"]


def test_zarr_without_ngff_metadata_is_one_line_error(tmp_path, capsys, model_file):
    store = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    store.create_array("raw", shape=(4, 32, 32), dtype="uint16")
    assert main(["predict", str(tmp_path / "plain.zarr"), "--model", str(model_file), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "without OME-NGFF metadata" in err


def test_plate_with_unknown_channel_names_is_refused_before_reading(tmp_path, capsys, model_file):
    root = zarr.open_group(str(tmp_path / "p.zarr"), mode="w")
    ome_writer.write_plate_metadata(root, ["A"], ["1"], ["A/1"])
    well = root.require_group("A/1")
    ome_writer.write_well_metadata(well, ["0"])
    write_ngff_image(well.require_group("0"), field(12), names=["a", "b", "c", "d"])
    assert main(["predict", str(tmp_path / "p.zarr"), "--model", str(model_file), "--out", str(tmp_path / "p.csv")]) == 2
    assert "p/A/1/0: no nucleus" in capsys.readouterr().err


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_label_image_written_the_ngff_way(tmp_path, zarr_format):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    from protloc.data.formats.ome_zarr import class_label_image, write_label_image

    plate = tmp_path / "plate.zarr"
    write_plate(plate, fields_per_well=1, wells=("B/2",), zarr_format=zarr_format)
    maps = {"Nucleus": np.zeros((72, 56), np.float32), "Cytosol": np.zeros((72, 56), np.float32)}
    maps["Nucleus"][10:30, 10:30] = 0.9
    maps["Cytosol"][40:60, 5:50] = 0.7
    maps["Cytosol"][20:25, 20:25] = 0.95  # stronger than the nucleus there
    labels, properties = class_label_image(maps, list(HPA13.classes))
    nucleus, cytosol = HPA13.classes.index("Nucleus") + 1, HPA13.classes.index("Cytosol") + 1
    assert labels[15, 15] == nucleus and labels[22, 22] == cytosol and labels[50, 10] == cytosol
    assert labels[0, 0] == 0
    for _ in range(2):  # writing again replaces, never duplicates
        written = write_label_image(plate, "B/2/0", "protloc-localisation", labels, properties=properties)
    image_group = zarr.open_group(str(plate / "B/2/0"), mode="r")
    listing = dict(image_group["labels"].attrs)
    assert listing.get("ome", listing)["labels"] == ["protloc-localisation"]
    label_group = image_group["labels/protloc-localisation"]
    assert written == plate / "B/2/0/labels/protloc-localisation"
    assert np.array_equal(label_group[ngff_first_dataset(label_group)][...], labels)
    nodes = list(Reader(parse_url(str(plate / "B/2/0")))())
    label_nodes = [n for n in nodes if any(isinstance(spec, Label) for spec in n.specs)]
    assert label_nodes, "ome-zarr's reader does not see the label image"
    meta = dict(image_group["labels/protloc-localisation"].attrs)
    meta = meta.get("ome", meta)
    assert {"label-value": nucleus, "class": "Nucleus"} in meta["image-label"]["properties"]
    scale = meta["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([0.08, 0.08])


def ngff_first_dataset(group) -> str:
    meta = dict(group.attrs)
    return meta.get("ome", meta)["multiscales"][0]["datasets"][0]["path"]


@pytest.mark.slow
def test_real_hpa_field_as_ome_tiff_with_published_weights(tmp_path):
    """The real HPA field (a nuclear protein) converted to an OME-TIFF with shuffled, named channels."""
    checkpoint = SHARED / "pretrained" / "gapnet-pl"
    real = SHARED / "real-hpa" / "kaggle-png"
    if not (checkpoint.is_dir() and real.is_dir()):
        if __import__("os").environ.get("CI"):
            pytest.fail("../shared is not beside the repository")
        pytest.skip("../shared is not beside the repository")
    from protloc.data.formats import discover, read

    model = tmp_path / "gapnet-pl.pt"
    assert main(["pretrained", "import", str(checkpoint), "--out", str(model)]) == 0
    (entry,) = discover([str(real)])
    image = read(entry).image
    names = ["Antibody (Alexa 488)", "Hoechst", "Calreticulin", "alpha-Tubulin"]
    order = [CHANNELS.index(c) for c in ("protein", "nucleus", "er", "microtubules")]
    path = write_ome_tiff(tmp_path / "hpa.ome.tif", image[order].astype(np.uint8), names=names, size_x=0.32,
                          unit="µm")
    out = tmp_path / "p.csv"
    assert main(["predict", str(path), "--model", str(model), "--out", str(out), "--workers", "0",
                 "--whole-image"]) == 0
    (row,) = read_csv(out)
    assert row["predicted"] == "Nucleus"


def test_predict_plate_with_maps_writes_ngff_labels(tmp_path, model_file):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    plate = tmp_path / "screen.zarr"
    write_plate(plate, fields_per_well=1, wells=("B/2", "B/3"))
    out = tmp_path / "p.csv"
    assert main(["predict", str(plate), "--model", str(model_file), "--out", str(out), "--workers", "0",
                 "--maps", str(tmp_path / "maps"), "--whole-image"]) == 0
    rows = {row["id"]: row for row in read_csv(out)}
    assert sorted(rows) == ["screen/B/2/0", "screen/B/3/0"]
    for well in ("B/2", "B/3"):
        group = zarr.open_group(str(plate / well / "0"), mode="r")
        listing = dict(group["labels"].attrs)
        assert listing.get("ome", listing)["labels"] == ["protloc-localisation"]
        label_group = group["labels/protloc-localisation"]
        labels = label_group[ngff_first_dataset(label_group)][...]
        assert labels.shape == (72, 56) and labels.dtype == np.uint16 and labels.any()
        meta = dict(label_group.attrs)
        meta = meta.get("ome", meta)["image-label"]
        named = {p["label-value"]: p["class"] for p in meta["properties"]}
        assert set(np.unique(labels)) - {0} <= set(named)  # every painted value names its class
        assert {c["label-value"] for c in meta["colors"]} == set(named)
        predicted = rows[f"screen/{well}/0"]["predicted"].split(";") if rows[f"screen/{well}/0"]["predicted"] else []
        shown = predicted or [max(HPA13.classes, key=lambda c: float(rows[f"screen/{well}/0"][c]))]
        assert sorted(named.values()) == sorted(shown)  # the classes whose maps were drawn
        nodes = list(Reader(parse_url(str(plate / well / "0")))())
        assert any(isinstance(spec, Label) for node in nodes for spec in node.specs)
    from protloc.files import sample_file_stem

    assert (tmp_path / "maps" / f"{sample_file_stem('screen/B/2/0')}__composite.png").is_file()


def test_plate_listing_reads_no_pixels_and_a_damaged_field_is_reported(tmp_path, model_file):
    """Fields are read one by one when their turn comes: a damaged chunk in one field is that field's
    error (in the errors file), the listing never touched it and the other fields are predicted."""
    plate = tmp_path / "plate.zarr"
    write_plate(plate)
    chunks = sorted(p for p in (plate / "B/3/0/s0").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert chunks
    for chunk in chunks:
        chunk.write_bytes(b"not a compressed chunk")
    assert len(ome_inputs(plate)) == 4  # metadata only: the damage is not seen yet
    out = tmp_path / "p.csv"
    assert main(["predict", str(plate), "--model", str(model_file), "--out", str(out), "--workers", "0"]) == 0
    assert sorted(row["id"] for row in read_csv(out)) == ["plate/B/2/0", "plate/B/2/1", "plate/B/3/1"]
    (error,) = read_csv(tmp_path / "p.errors.csv")
    assert error["id"] == "plate/B/3/0" and "unreadable pixels" in error["reason"]


def test_pixel_limit_applies_to_ome_inputs_before_reading(tmp_path):
    from protloc.data.limits import ImageTooLargeError

    path = write_ome_tiff(tmp_path / "big.ome.tif", field(14))  # 72 x 56 = 4032 pixels per plane
    with pytest.raises(ImageTooLargeError, match="exceeds the limit of 4000"):
        read(ome_inputs(path)[0][1], max_pixels=4000)
    assert read(ome_inputs(path)[0][1], max_pixels=4032).image.shape == (4, 72, 56)
    plate = tmp_path / "plate.zarr"
    write_plate(plate, fields_per_well=1, wells=("B/2",))
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        read(ome_inputs(plate)[0][1], max_pixels=4000)


def test_multichannel_upload_of_a_named_ome_tiff_follows_the_names(tmp_path):
    """The web platform and other single-file paths take "a 4-plane TIFF in canonical order"; an
    OME-TIFF naming its channels in another order is read by the names, never by plane order."""
    from protloc.data.formats import read_file

    data = field(15)
    named = write_ome_tiff(tmp_path / "named.ome.tif", data)
    assert np.array_equal(read_file(named).image, canonical(data))
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, data)  # no OME names: the documented canonical plane order
    assert np.array_equal(read_file(plain).image, data.astype(np.float32))
