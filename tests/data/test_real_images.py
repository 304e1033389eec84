"""Real images: pixel size, label-set mappings, `protloc evaluate --model --data`, transfer learning, crossval.

The real files are ../shared/real-hpa/kaggle2018-train-101 (Kaggle 2018 layout, 512² PNGs) and the
published weights in ../shared/pretrained/gapnet-pl; under CI=true a missing one fails the test
(conftest turns the skip into a failure).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from protloc.model_file import model_pixel_size, read_model_file, save_model_file
from protloc.cli import main
from protloc.data.formats.tiff import stated_pixel_size
from protloc.data.index import data_pixel_size, open_dataset
from protloc.data.pixel_size import KAGGLE2018_PIXEL_SIZE_UM, rescale, scale_factor
from protloc.data.synth.dataset import generate_dataset
from protloc.errors import ProtlocError
from protloc.labels import HPA13, KAGGLE28, load_label_mapping
from protloc.models import create_model

from tests.conftest import shared_dir

SHARED = shared_dir()
KAGGLE101 = SHARED / "real-hpa" / "kaggle2018-train-101"
CHECKPOINT_DIR = SHARED / "pretrained" / "gapnet-pl"
FEW = 4  # the first fields of train.csv


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing (../shared beside the repository)")
    return path


@pytest.fixture(scope="module")
def real_few(tmp_path_factory) -> Path:
    """The first FEW real fields of the 101 in their Kaggle layout (a private, writable copy)."""
    source = require(KAGGLE101)
    out = tmp_path_factory.mktemp("kaggle") / "kaggle-few"
    (out / "train").mkdir(parents=True)
    rows = (source / "train.csv").read_text().splitlines()
    keep = rows[1 : FEW + 1]
    (out / "train.csv").write_text("\n".join([rows[0], *keep]) + "\n")
    for row in keep:
        sample_id = row.split(",")[0]
        for colour in ("blue", "green", "red", "yellow"):
            shutil.copy(source / "train" / f"{sample_id}_{colour}.png", out / "train")
    return out


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory) -> Path:
    require(CHECKPOINT_DIR / "gapnet-pl.ckpt.index")
    cache = tmp_path_factory.mktemp("cache")
    out = cache / "pretrained" / "gapnet-pl.pt"
    assert main(["pretrained", "import", str(CHECKPOINT_DIR), "--out", str(out)]) == 0
    return out


@pytest.fixture
def pretrained_cache(pretrained_file, monkeypatch):
    monkeypatch.setenv("PROTLOC_CACHE", str(pretrained_file.parent.parent))
    return pretrained_file


# ---------------------------------------------------------------------------------- pixel size

def test_kaggle_pngs_get_their_pixel_size_from_the_layout(real_few):
    index = open_dataset(real_few)
    assert index.format == "kaggle-hpa" and len(index) == FEW
    size = index.pixel_size(index.samples[0])
    assert size.um == pytest.approx(0.32) and size.um == KAGGLE2018_PIXEL_SIZE_UM
    assert "Kaggle 2018" in size.source
    assert data_pixel_size(index, override=0.5).um == 0.5
    with pytest.raises(ProtlocError, match="pixel-size"):
        data_pixel_size(index, override=-1)


def test_tiff_resolution_tags_give_the_pixel_size(tmp_path):
    image = np.zeros((16, 16), np.uint16)
    tifffile.imwrite(tmp_path / "cm.tif", image, resolution=(1 / 0.2e-4, 1 / 0.2e-4), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "none.tif", image)
    assert stated_pixel_size(tmp_path / "cm.tif").um == pytest.approx(0.2)
    assert stated_pixel_size(tmp_path / "none.tif").um is None


def test_rescale_reaches_the_model_pixel_size():
    image = np.random.default_rng(0).random((4, 32, 48), dtype=np.float32)
    factor = scale_factor(0.32, 0.08)
    assert factor == pytest.approx(4.0)
    assert rescale(image, factor).shape == (4, 128, 192)
    assert rescale(image, scale_factor(0.08, 0.32)).shape == (4, 8, 12)
    assert scale_factor(None, 0.08) == 1.0 and rescale(image, 1.0) is image


def test_published_weights_record_their_pixel_size(pretrained_file):
    payload = read_model_file(pretrained_file)
    assert payload["pixel_size_um"] == pytest.approx(0.08)
    assert "0.08" in payload["pixel_size_source"]
    # a file imported before the field existed: the release's figure
    old = {k: v for k, v in payload.items() if not k.startswith("pixel_size")}
    assert model_pixel_size(old)[0] == pytest.approx(0.08)


# ---------------------------------------------------------------------------------- label mappings

def test_builtin_mapping_says_where_every_kaggle_class_goes():
    mapping = load_label_mapping("kaggle28-to-hpa13")
    assert mapping.source.classes == KAGGLE28.classes and mapping.target.classes == HPA13.classes
    table = {row["from"]: row for row in mapping.table()}
    assert len(table) == 28 and all(row["why"] for row in table.values())
    assert table["Nucleoplasm"]["to"] == "Nucleus" and table["Cell junctions"]["to"] == "Plasma membrane"
    assert table["Microtubule organizing center"]["to"] == "Centrosome"
    assert "Cytokinetic bridge" in mapping.dropped and "Rods & rings" in mapping.dropped
    nucleoplasm, speckles, rods = (KAGGLE28.index(n) for n in ("Nucleoplasm", "Nuclear speckles", "Rods & rings"))
    assert mapping.map_indices([nucleoplasm, speckles, rods]) == (HPA13.index("Nucleus"),)


def _write_mapping(path: Path, rows) -> Path:
    path.write_text(json.dumps({"name": "mine", "from": "kaggle28", "to": "hpa13", "map": rows}))
    return path


def test_user_mapping_file_is_accepted_and_checked(tmp_path):
    rows = [{"from": c, "to": None, "why": "not needed"} for c in KAGGLE28.classes]
    rows[0] = {"from": "nucleoplasm", "to": "nucleus", "why": "mine"}
    mapping = load_label_mapping(_write_mapping(tmp_path / "mine.json", rows))
    assert mapping.map_indices([0, 25]) == (HPA13.index("Nucleus"),)
    with pytest.raises(ProtlocError, match="does not say where"):
        load_label_mapping(_write_mapping(tmp_path / "short.json", rows[:-1]))
    with pytest.raises(ProtlocError, match="unknown class name 'Nucleus-ish'"):
        load_label_mapping(_write_mapping(tmp_path / "typo.json", [*rows[:-1], {"from": "Rods & rings",
                                                                                "to": "Nucleus-ish"}]))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ProtlocError, match="not JSON"):
        load_label_mapping(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------- evaluate

@pytest.mark.slow
def test_evaluate_published_weights_on_real_fields(pretrained_cache, real_few, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", "pretrained", "--data", str(real_few), "--out", str(out),
                 "--batch-size", "4"]) == 0
    printed = capsys.readouterr()
    assert "rescaled 4x" in printed.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == FEW and metrics["classes"] == list(HPA13.classes)
    assert metrics["labels"]["mapping"]["name"] == "kaggle28-to-hpa13"
    assert "Cytokinetic bridge" in metrics["labels"]["dropped_classes"]
    assert metrics["pixel_size"]["samples"]["scale"] == pytest.approx(4.0)
    assert metrics["min_positives"]["min_positives"] == 3
    with open(out / "inputs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["network_input_hw"] for row in rows} == {"2048x2048"}
    assert {float(row["data_pixel_size_um"]) for row in rows} == {0.32}
    report = (out / "report.md").read_text()
    assert "Label mapping `kaggle28-to-hpa13`" in report and "**dropped**" in report
    for name in ("roc_curves.png", "f1_per_class.png", "predictions.csv"):
        assert (out / name).stat().st_size > 0
    # --pixel-size overrides the layout: the same pixel size as the model means no rescale
    out2 = tmp_path / "eval-native"
    assert main(["evaluate", "--model", "pretrained", "--data", str(real_few), "--out", str(out2),
                 "--pixel-size", "0.08", "--whole-image"]) == 0
    assert "matches the model" in capsys.readouterr().err
    with open(out2 / "inputs.csv", newline="") as handle:
        assert {row["network_input_hw"] for row in csv.DictReader(handle)} == {"512x512"}


def test_evaluate_bad_inputs_are_one_line_errors(pretrained_cache, real_few, tmp_path, capsys):
    cases = [
        (["evaluate"], "give a training run folder"),
        (["evaluate", "--model", "pretrained"], "give a training run folder"),
        (["evaluate", str(tmp_path), "--model", "pretrained", "--data", str(real_few)], "not both"),
        (["evaluate", "--model", "pretrained", "--data", str(real_few), "--mapping", "nope"], "no label mapping"),
        (["evaluate", "--model", "pretrained", "--data", str(real_few), "--split", "test"], "no splits file"),
        (["evaluate", "--model", "pretrained", "--data", str(tmp_path / "missing")], "no such folder"),
        (["evaluate", "--model", str(tmp_path / "none.pt"), "--data", str(real_few)], "no model"),
        (["evaluate", "--model", "pretrained", "--data", str(real_few), "--pixel-size", "0"], "pixel-size"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)


def test_evaluate_without_a_mapping_between_label_sets_says_so(real_few, tmp_path, capsys):
    other = tmp_path / "three.json"
    other.write_text(json.dumps({"name": "three", "classes": ["A", "B", "C"]}))
    model = tmp_path / "three.pt"
    save_model_file(model, create_model("gapnet-pl", num_classes=3), model_name="gapnet-pl", classes=["A", "B", "C"],
                    label_set="three", crop_size=64)
    assert main(["evaluate", "--model", str(model), "--data", str(real_few), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "no built-in mapping" in err and "--mapping" in err


# ---------------------------------------------------------------------------------- transfer learning

def test_init_keeps_every_encoder_weight_and_replaces_only_the_head(pretrained_file):
    from protloc.training.transfer import initialise, output_layer

    reference = read_model_file(pretrained_file)["state_dict"]
    torch.manual_seed(1)
    network = create_model("gapnet-pl", num_classes=len(KAGGLE28))
    info = initialise(network, "gapnet-pl", KAGGLE28.classes, str(pretrained_file))
    assert output_layer(network)[0] == "fc3" and sorted(info.replaced) == ["fc3.bias", "fc3.weight"]
    state = network.state_dict()
    for name, tensor in reference.items():
        if name.startswith("fc3."):
            assert state[name].shape[0] == 28
        else:
            assert torch.equal(state[name], tensor), name
    assert info.pixel_size_um == pytest.approx(0.08)
    same = create_model("gapnet-pl", num_classes=13)
    assert initialise(same, "gapnet-pl", HPA13.classes, str(pretrained_file)).replaced == []
    assert all(torch.equal(same.state_dict()[k], v) for k, v in reference.items())
    with pytest.raises(ProtlocError, match="densenet-121"):
        initialise(create_model("m-cnn", num_classes=13), "densenet-121", HPA13.classes, str(pretrained_file))


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(out, samples=12, size=96, seed=5, workers=1)
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_model_file(path, create_model("gapnet-pl"), model_name="gapnet-pl", classes=HPA13.classes,
                    label_set="hpa13", crop_size=64, pixel_size_um=0.5, pixel_size_source="test")
    return path


def test_train_init_freeze_encoder_trains_only_the_head(synth_dir, tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "gapnet-pl", "--data", str(synth_dir), "--out", str(out), "--init",
                 str(tiny_model), "--freeze-encoder", "--head-lr", "0.05", "--epochs", "2", "--crop-size", "64",
                 "--batch-size", "4", "--no-cache", "--pixel-size", "0.5"]) == 0
    err = capsys.readouterr().err
    assert "encoder frozen" in err and "all layers kept" in err
    before = read_model_file(tiny_model)["state_dict"]
    after = read_model_file(out / "model.pt")
    for name, tensor in before.items():
        changed = not torch.equal(after["state_dict"][name], tensor)
        assert changed == name.startswith("fc"), name
    assert after["pixel_size_um"] == 0.5 and after["source"]["transfer"]["init"] == str(tiny_model)


@pytest.mark.slow
def test_crossval_fixed_folds_baseline_and_head(synth_dir, tiny_model, tmp_path):
    from protloc.training.crossval import make_folds

    out = tmp_path / "cv"
    assert main(["crossval", "--model", "gapnet-pl", "--data", str(synth_dir), "--out", str(out), "--folds", "2",
                 "--init", str(tiny_model), "--freeze-encoder", "--epochs", "3", "--crop-size", "64",
                 "--batch-size", "8", "--head-lr", "0.01", "--min-positives", "1"]) == 0
    summary = json.loads((out / "crossval.json").read_text())
    assert [row["method"].split(",")[0] for row in summary["rows"]] == [
        str(tiny_model), "new head on the frozen encoder (precomputed features)"]
    for row in summary["rows"]:
        assert len(row["folds"]) == 2 and row["mean_auc"]["n"] >= 1
    folds = json.loads((out / "folds.json").read_text())["folds"]
    ids = sorted(entry.id for entry in open_dataset(synth_dir).samples)
    assert folds == make_folds(ids, 2, 0) and sorted(folds[0] + folds[1]) == ids
    assert make_folds(list(reversed(ids)), 2, 0) == folds  # listing order does not matter
    # the fold model is a usable model file whose encoder is the starting model's
    fold = read_model_file(out / "fold-1" / "model.pt")
    start = read_model_file(tiny_model)["state_dict"]
    assert all(torch.equal(fold["state_dict"][k], v) for k, v in start.items() if k.startswith("conv"))
    assert (out / "crossval.md").read_text().count("±") >= 4
    # the test fold's probabilities, taken from the cached encoder features, are the fold model's own
    from protloc.inference import load_model

    with open(out / "fold-1" / "evaluation" / "predictions.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    index = open_dataset(synth_dir)
    expected = load_model(out / "fold-1").predict_proba(index.load_image(row["id"]))
    assert [float(row[c]) for c in HPA13.classes] == pytest.approx(expected.tolist(), abs=2e-5)
    assert main(["crossval", "--model", "gapnet-pl", "--data", str(synth_dir), "--out", str(out), "--folds", "3",
                 "--epochs", "1"]) == 2  # other folds into the same folder: refused


@pytest.mark.slow
def test_predict_says_and_records_the_pixel_size(pretrained_cache, real_few, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    one = sorted((real_few / "train").glob("*_green.png"))[0]
    assert main(["predict", str(one), "--out", str(out), "--workers", "0", "--whole-image"]) == 0
    assert "rescaled 4x" in capsys.readouterr().err
    with open(out, newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["pixel_size_um"]) == pytest.approx(0.32) and float(row["scale"]) == pytest.approx(4.0)
    # unknown pixel size: one warning that says how to give it, no rescale
    image = np.random.default_rng(0).integers(0, 255, (4, 64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "x.tif", image, photometric="minisblack")
    out2 = tmp_path / "pred2.csv"
    assert main(["predict", str(tmp_path / "x.tif"), "--out", str(out2), "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("pixel size is unknown") == 1 and "--pixel-size" in err
    with open(out2, newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["pixel_size_um"] == "" and float(row["scale"]) == 1.0


def test_platform_worker_rescales_through_the_same_inferer(tiny_model, tmp_path):
    from protloc.data.formats.channel_files import pixel_size
    from protloc.inference import load_model
    from protloc.web.queue.batching import batched_probabilities

    predictor = load_model(tiny_model)  # trained at 0.5 µm/px, 64² patches
    assert predictor.pixel_size_um == 0.5
    image = np.random.default_rng(2).random((4, 48, 48), dtype=np.float32)
    got = batched_probabilities(predictor, [image, image], 16, pixel_sizes=[1.0, None])
    np.testing.assert_allclose(got[0], predictor.predict_proba(image, pixel_size_um=1.0), atol=1e-6)
    np.testing.assert_allclose(got[1], predictor.predict_proba(image), atol=1e-6)
    assert not np.allclose(got[0], got[1], atol=1e-4)
    # stored blobs keep their original names beside them: the layout is read from those
    blobs = [tmp_path / f"{i}.png" for i in range(4)]
    names = [f"abc_{colour}.png" for colour in ("blue", "red", "yellow", "green")]
    assert pixel_size(blobs, 512, 512, names=names).um == pytest.approx(0.32)
    assert pixel_size(blobs, 512, 512).um is None


def test_ome_tiff_physical_size_reaches_the_model(tiny_model, tmp_path, capsys):
    data = np.random.default_rng(3).integers(0, 4000, (4, 40, 40), dtype=np.uint16)
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata={
        "axes": "CYX", "PhysicalSizeX": 1.0, "PhysicalSizeY": 1.0, "PhysicalSizeXUnit": "µm",
        "PhysicalSizeYUnit": "µm", "Channel": {"Name": ["DAPI", "Tubulin", "Calreticulin", "GFP"]}})
    out = tmp_path / "p.csv"
    assert main(["predict", str(path), "--model", str(tiny_model), "--out", str(out), "--workers", "0"]) == 0
    assert "data 1 µm/px (OME metadata); model 0.5 µm/px: inputs rescaled 2x" in capsys.readouterr().err
    with open(out, newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["pixel_size_um"]) == 1.0 and float(row["scale"]) == 2.0
