"""What inference checks and says instead of failing silently (issue 11, defect 7): a model file's
channels and normalisation, bf16 where it is emulated, map file names that cannot collide."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch

from protloc.model_file import read_model_file, save_model_file
from protloc.cli import main
from protloc.errors import ProtlocError
from protloc.inference import precision as precision_module
from protloc.files import sample_file_stem
from protloc.inference.maps import write_maps
from protloc.inference.predictor import load_model
from protloc.labels import HPA13
from protloc.models import create_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model_file(path, create_model("gapnet-pl"), model_name="gapnet-pl", classes=HPA13.classes,
                    label_set="hpa13", crop_size=32, thresholds=[0.5] * 13)
    return path


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "a.npz"
    np.savez(path, sample=np.random.default_rng(0).integers(0, 255, (40, 40, 4), dtype=np.uint8))
    return path


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("channels", ["protein", "nucleus", "microtubules", "er"], "the model takes channels"),
        ("channels", ["nucleus", "microtubules", "er"], "the model takes channels"),
        ("normalization", {"kind": "per-channel-zscore", "eps": 1e-5}, "expects input normalisation"),
        ("normalization", {"kind": "min-max"}, "expects input normalisation"),
        ("normalization", None, "expects input normalisation"),
    ],
)
def test_a_model_file_with_other_inputs_is_refused(model_file, sample_file, tmp_path, capsys, field, value, message):
    payload = torch.load(model_file, weights_only=True)
    payload[field] = value
    other = tmp_path / "other.pt"
    torch.save(payload, other)
    with pytest.raises(ProtlocError, match=message):
        load_model(other)
    with pytest.raises(ProtlocError, match=message):
        read_model_file(other)
    assert main(["predict", str(sample_file), "--model", str(other), "--out", str(tmp_path / "p.csv"),
                 "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("protloc: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "p.csv").exists()
    read_model_file(model_file)  # protloc's own file passes


def test_bf16_without_native_support_warns_once(model_file, sample_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(precision_module, "_warned", set())
    monkeypatch.setattr(precision_module, "bf16_supported", lambda device="cpu": False)
    for run in range(2):
        assert main(["predict", str(sample_file), "--model", str(model_file), "--out", str(tmp_path / f"{run}.csv"),
                     "--workers", "0", "--precision", "bf16"]) == 0
        err = capsys.readouterr().err
        warnings = [line for line in err.splitlines() if line.startswith("protloc: warning:")]
        if run == 0:
            assert len(warnings) == 1 and "no native bfloat16" in warnings[0] and "Use fp32" in warnings[0]
        else:
            assert warnings == []  # said once per process
    monkeypatch.setattr(precision_module, "_warned", set())
    monkeypatch.setattr(precision_module, "bf16_supported", lambda device="cpu": True)
    assert main(["predict", str(sample_file), "--model", str(model_file), "--out", str(tmp_path / "n.csv"),
                 "--workers", "0", "--precision", "bf16"]) == 0
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setattr(precision_module, "bf16_supported", lambda device="cpu": False)
    assert main(["predict", str(sample_file), "--model", str(model_file), "--out", str(tmp_path / "f.csv"),
                 "--workers", "0"]) == 0
    assert "warning" not in capsys.readouterr().err  # fp32: nothing to say


def test_map_file_names_are_distinct_and_give_the_id_back(model_file, tmp_path):
    ids = ["a/b", "a_b", "a b", "a%2Fb", "a__b", "a", "ü/ß", "x" * 300, "x" * 299 + "y", "bad-\udcff-bytes"]
    stems = [sample_file_stem(sample_id) for sample_id in ids]
    assert len(set(stems)) == len(ids)
    assert all("/" not in stem and len(stem.encode()) <= 200 for stem in stems)
    for sample_id, stem in zip(ids, stems):
        if len(stem) < 150:
            assert unquote(stem, errors="surrogateescape") == sample_id
    assert sample_file_stem("a_b") == "a_b" and sample_file_stem("a/b") == "a%2Fb"
    assert sample_file_stem("x" * 300) == sample_file_stem("x" * 300)  # stable

    predictor = load_model(model_file)
    image = np.random.default_rng(1).random((4, 40, 40)).astype(np.float32)
    probs = predictor.predict_proba(image)
    written = [path for sample_id in ("a/b", "a_b") for path in
               write_maps(predictor, sample_id, image, probs, ["Nucleus"], tmp_path)]
    assert len(written) == len(set(written)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a%2Fb__composite.png", "a%2Fb__Nucleus.png", "a_b__composite.png", "a_b__Nucleus.png"])
