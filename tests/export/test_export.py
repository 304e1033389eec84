"""protloc export: ONNX and TorchScript checked against protloc's logits, prediction through
onnxruntime, and the bioimage.io package validated by bioimageio.spec and tested by bioimageio.core."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml

import protloc
from protloc.model_file import save_model_file
from protloc.cli import main
from protloc.inference import normalize
from protloc.labels import HPA13
from protloc.models import create_model

from tests.conftest import shared_dir

SHARED = shared_dir()
CHECKPOINT_DIR = SHARED / "pretrained" / "gapnet-pl"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model_file(path, create_model("gapnet-pl"), model_name="gapnet-pl", classes=HPA13.classes,
                    label_set="hpa13", crop_size=64, thresholds=[0.4] * 13)
    return path


@pytest.fixture(scope="module")
def published_model(tmp_path_factory) -> Path:
    if not CHECKPOINT_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail("../shared/pretrained/gapnet-pl is not beside the repository")
        pytest.skip("../shared/pretrained/gapnet-pl is not beside the repository")
    path = tmp_path_factory.mktemp("published") / "gapnet-pl.pt"
    assert main(["pretrained", "import", str(CHECKPOINT_DIR), "--out", str(path)]) == 0
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("protloc: error: ") and "\n" not in err, err
    return err


@pytest.mark.slow
def test_standalone_architecture_gives_protloc_logits():
    from protloc.export.gapnet_pl_architecture import GapNetPL

    torch.manual_seed(1)
    ours = create_model("gapnet-pl").eval()
    standalone = GapNetPL(num_classes=13, in_channels=4).eval()
    standalone.load_state_dict(ours.state_dict())  # same parameter names, strict
    for shape in [(2, 4, 64, 64), (1, 4, 97, 131)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            assert torch.equal(standalone(x), ours(x))


def test_onnx_export_any_size_matches_protloc_logits(model_file, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert main(["export", str(model_file), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max |difference|" in printed and "dynamic batch, height and width" in printed
    model = onnx.load(str(out))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 4, "height", "width"]
    metadata = json.loads({p.key: p.value for p in model.metadata_props}["protloc"])
    assert metadata["classes"] == list(HPA13.classes) and metadata["thresholds"] == [0.4] * 13
    assert metadata["channels"] == ["nucleus", "microtubules", "er", "protein"]
    network = protloc.load_model(model_file).network
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(1, 4, 64, 64), (3, 4, 123, 77), (1, 4, 300, 260)]:
        x = normalize(torch.rand(*shape) * 1000)
        with torch.no_grad():
            expected = network(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-5  # float32 accuracy


@pytest.mark.slow
def test_predict_through_onnxruntime_equals_protloc(model_file, tmp_path):
    onnx_file = tmp_path / "tiny.onnx"
    assert main(["export", str(model_file), "--format", "onnx", "--out", str(onnx_file)]) == 0
    image = np.random.default_rng(3).integers(0, 4000, (4, 150, 110)).astype(np.uint16)
    import tifffile

    tifffile.imwrite(tmp_path / "sample.tif", image)
    rows = {}
    for name, model in (("pt", model_file), ("onnx", onnx_file)):
        out = tmp_path / f"{name}.csv"
        assert main(["predict", str(tmp_path / "sample.tif"), "--model", str(model), "--out", str(out),
                     "--workers", "0", "--whole-image"]) == 0
        with open(out, newline="") as handle:
            (rows[name],) = list(csv.DictReader(handle))
    for cls in HPA13.classes:
        assert float(rows["onnx"][cls]) == pytest.approx(float(rows["pt"][cls]), abs=2e-6)
    assert rows["onnx"]["predicted"] == rows["pt"]["predicted"]
    # patches, TTA and localisation maps run through the same adapter
    pt, ox = protloc.load_model(model_file), protloc.load_model(onnx_file)
    assert np.abs(pt.predict_proba(image, tta=True) - ox.predict_proba(image, tta=True)).max() < 1e-5
    assert ox.localization_maps(image, ["Nucleus"])["Nucleus"].shape == (150, 110)


def test_torchscript_export_any_size(model_file, tmp_path, capsys):
    out = tmp_path / "tiny.torchscript.pt"
    assert main(["export", str(model_file), "--format", "torchscript", "--out", str(out)]) == 0
    assert "any height and width" in capsys.readouterr().out
    extra = {"protloc.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["protloc.json"])["model"] == "gapnet-pl"
    network = protloc.load_model(model_file).network
    x = torch.randn(2, 4, 141, 93)
    with torch.no_grad():
        assert (scripted(x) - network(x)).abs().max() < 1e-5


def test_bad_exports_are_one_line_errors(model_file, tmp_path, capsys):
    conv_mil = tmp_path / "conv-mil.pt"
    save_model_file(conv_mil, create_model("conv-mil"), model_name="conv-mil", classes=HPA13.classes,
                    label_set="hpa13", crop_size=128)
    assert main(["export", str(conv_mil), "--format", "bioimageio", "--out", str(tmp_path / "m.zip")]) == 2
    assert "bioimage.io package cannot hold conv-mil" in one_line_error(capsys)
    onnx_file = tmp_path / "tiny.onnx"
    assert main(["export", str(model_file), "--format", "onnx", "--out", str(onnx_file)]) == 0
    capsys.readouterr()
    assert main(["export", str(onnx_file), "--format", "torchscript", "--out", str(tmp_path / "t.pt")]) == 2
    assert "is an exported model" in one_line_error(capsys)
    assert main(["export", str(model_file), "--format", "onnx", "--out", str(tmp_path / "m.bin")]) == 2
    assert "a .onnx file" in one_line_error(capsys)
    assert main(["export", str(model_file), "--format", "bioimageio", "--out", str(tmp_path / "m.zip"),
                 "--pixel-size", "0.08"]) == 2
    assert "--author" in one_line_error(capsys)  # weights someone trained: the package must say who
    assert not (tmp_path / "m.zip").exists()
    # an ONNX file that protloc did not write: no classes, no channels, so no guessing
    plain = tmp_path / "plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(create_model("gapnet-pl").eval(), (torch.randn(1, 4, 64, 64),), str(plain), dynamo=False)
    capsys.readouterr()
    assert main(["predict", str(tmp_path), "--model", str(plain), "--out", str(tmp_path / "p.csv")]) == 2
    assert "not a protloc ONNX export" in one_line_error(capsys)


@pytest.mark.slow
def test_bioimageio_package_of_the_published_weights(published_model, tmp_path, capsys):
    """Validated by bioimageio.spec, every weight format reproducing the test output in bioimageio.core."""
    from bioimageio.core import test_model
    from bioimageio.spec import InvalidDescr, load_description

    package = tmp_path / "gapnet-pl.zip"
    assert main(["export", str(published_model), "--format", "bioimageio", "--out", str(package)]) == 0
    assert "format 0.5: valid" in capsys.readouterr().out
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        files = {name: archive.read(name) for name in names}
    assert {"rdf.yaml", "test_input.npy", "test_output.npy", "cover.png", "LICENSE", "weights.pt",
            "weights.onnx", "weights_torchscript.pt", "gapnet_pl_architecture.py", "README.md"} <= names
    assert rdf["format_version"].startswith("0.5.")
    (inp,) = rdf["inputs"]
    assert inp["axes"][1]["channel_names"] == ["nucleus", "microtubules", "er", "protein"]
    space = {a["id"]: a for a in inp["axes"][2:]}
    assert space["y"]["unit"] == space["x"]["unit"] == "micrometer" and space["x"]["scale"] == 0.08
    zmuv = [p for p in inp["preprocessing"] if p["id"] == "zero_mean_unit_variance"]
    assert zmuv and zmuv[0]["kwargs"]["axes"] == ["y", "x"]
    (out,) = rdf["outputs"]
    assert out["axes"][1]["channel_names"] == list(HPA13.classes)
    assert out["postprocessing"][0] == {"id": "sigmoid"}
    for tensor in (inp, out):
        name = tensor["test_tensor"]["source"]
        assert hashlib.sha256(files[name]).hexdigest() == tensor["test_tensor"]["sha256"]
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["callable"] == "GapNetPL"
    assert rdf["license"] == "BSD-2-Clause" and b"Johannes Kepler University Linz" in files["LICENSE"]
    assert "Human-level protein localization" in rdf["cite"][0]["text"]
    assert (CHECKPOINT_DIR / "LICENSE").read_bytes() == files["LICENSE"]

    description = load_description(package)
    assert not isinstance(description, InvalidDescr), description.validation_summary
    summary = test_model(package)
    reproduced = [d.name for d in summary.details if d.name.startswith("Reproduce test outputs")]
    assert summary.status == "passed", [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.errors]
    assert sorted(reproduced) == [f"Reproduce test outputs from test inputs ({w})"
                                  for w in ("onnx", "pytorch_state_dict", "torchscript")]


@pytest.mark.slow
def test_a_network_whose_trace_bakes_in_its_size_is_exported_at_its_crop_size(tmp_path, capsys):
    """Conv MIL's trace holds only at the size it was traced at: the check finds it, the export falls
    back to the crop size, and prediction through onnxruntime uses patches and equals protloc's."""
    torch.manual_seed(2)
    model = tmp_path / "conv-mil.pt"
    save_model_file(model, create_model("conv-mil"), model_name="conv-mil", classes=HPA13.classes,
                    label_set="hpa13", crop_size=96)
    out = tmp_path / "conv-mil.onnx"
    assert main(["export", str(model), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fixed size 96x96" in printed and "exported at the crop size" in printed
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 4, 96, 96]
    image = np.random.default_rng(4).random((4, 150, 170), dtype=np.float32) * 1000
    pt, ox = protloc.load_model(model), protloc.load_model(out)
    assert not ox.fully_convolutional
    assert np.abs(pt.predict_proba(image) - ox.predict_proba(image)).max() < 1e-5
    assert main(["export", str(model), "--format", "torchscript", "--out", str(tmp_path / "cm.pt")]) == 0
    assert "input 96x96" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_onnxruntime_benchmark_section(tmp_path, model_file):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--sections", "onnxruntime", "--model", str(model_file), "--repeats", "1",
                 "--out", str(out)]) == 0
    section = json.loads(out.read_text())["sections"]["onnxruntime"]
    rows = {row["variant"]: row for row in section["rows"]}
    assert rows["protloc fast fp32 (baseline)"]["ratio_vs_fast"] == 1.0
    assert rows["onnxruntime fp32"]["best_s"] > 0 and rows["onnxruntime fp32"]["max_logit_diff_rel"] < 1e-4
    assert "max |difference|" in section["export_checks"][-1]


@pytest.mark.slow
def test_bioimageio_package_of_weights_you_trained(model_file, tmp_path, capsys):
    """Your own weights: your name, your licence, your pixel size; no borrowed LICENSE file."""
    from bioimageio.spec import InvalidDescr, load_description

    package = tmp_path / "mine.zip"
    assert main(["export", str(model_file), "--format", "bioimageio", "--out", str(package), "--author", "A. Person",
                 "--license", "MIT", "--pixel-size", "0.32", "--test-size", "128"]) == 0
    assert "pixel size 0.32 µm" in capsys.readouterr().out
    with zipfile.ZipFile(package) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        assert "LICENSE" not in archive.namelist()
        assert np.load(__import__("io").BytesIO(archive.read("test_input.npy"))).shape == (1, 4, 128, 128)
    assert rdf["authors"] == [{"name": "A. Person"}] and rdf["license"] == "MIT"
    assert rdf["inputs"][0]["axes"][2]["scale"] == 0.32
    assert rdf["config"]["protloc"]["thresholds"] == [0.4] * 13
    assert not isinstance(load_description(package), InvalidDescr)
    assert main(["export", str(model_file), "--format", "bioimageio", "--out", str(package), "--author", "A",
                 "--pixel-size", "0.32", "--test-size", "100"]) == 2
    assert "multiple of 16" in one_line_error(capsys)


def test_pixel_size_travels_with_the_onnx_export(published_model, model_file, tmp_path, capsys):
    out = tmp_path / "published.onnx"
    assert main(["export", str(published_model), "--format", "onnx", "--out", str(out)]) == 0
    predictor = protloc.load_model(out)
    assert predictor.pixel_size_um == 0.08 and predictor.pixel_size_um == protloc.load_model(published_model).pixel_size_um
    # a model that does not record its pixel size cannot be packaged for the zoo without one
    assert main(["export", str(model_file), "--format", "bioimageio", "--out", str(tmp_path / "m.zip"),
                 "--author", "A. Person"]) == 2
    assert "--pixel-size" in one_line_error(capsys)
