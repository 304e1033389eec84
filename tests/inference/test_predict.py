"""Prediction: the Python API, the batch command (formats, resume, bad input, ranks) and maps."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import protloc
from protloc.model_file import save_model_file
from protloc.cli import main
from protloc.data.synth.dataset import generate_dataset
from protloc.labels import HPA13
from protloc.models import create_model

from tests.conftest import shared_dir

SHARED = shared_dir()
CHECKPOINT_DIR = SHARED / "pretrained" / "gapnet-pl"
REAL_HPA = SHARED / "real-hpa"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, samples=6, size=96, seed=3, workers=1)
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_load_model_from_file_and_run_dir(model_file, tmp_path):
    predictor = protloc.load_model(model_file)
    assert predictor.classes == list(HPA13.classes) and predictor.patch_size == 64
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.pt").write_bytes(model_file.read_bytes())
    image = np.random.default_rng(0).random((4, 80, 112), dtype=np.float32) * 1000
    from_file = predictor.predict(image)
    from_run = protloc.load_model(run_dir).predict(image)
    assert list(from_file) == list(HPA13.classes)
    assert all(0.0 <= p <= 1.0 for p in from_file.values())
    assert from_file == pytest.approx(from_run)


def test_whole_image_and_tta(model_file):
    predictor = protloc.load_model(model_file)
    image = np.random.default_rng(1).random((4, 96, 128), dtype=np.float32)
    patches = predictor.predict_proba(image)
    whole = predictor.predict_proba(image, whole_image=True)
    assert patches.shape == whole.shape == (13,)
    assert not np.allclose(patches, whole)  # a 64-px patch grid is not the whole-image pass
    tta = predictor.predict_proba(image, whole_image=True, tta=True)
    # TTA averages all eight flips/rotations, so it must not change when the input is flipped.
    flipped = predictor.predict_proba(np.ascontiguousarray(image[:, ::-1, :]), whole_image=True, tta=True)
    assert np.allclose(tta, flipped, atol=1e-5)
    assert not np.allclose(tta, whole, atol=1e-5)


def test_localization_maps_cover_image(model_file):
    predictor = protloc.load_model(model_file)
    image = np.random.default_rng(2).random((4, 72, 100), dtype=np.float32)
    maps = predictor.localization_maps(image, ["Nucleus", "Golgi apparatus"])
    assert set(maps) == {"Nucleus", "Golgi apparatus"}
    for heat in maps.values():
        assert heat.shape == (72, 100) and heat.dtype == np.float32
        assert 0.0 <= heat.min() and heat.max() <= 1.0
    with pytest.raises(protloc.errors.ProtlocError):
        predictor.localization_maps(image, ["Kidney"])


def test_predict_csv_columns_maps_and_resume(data_dir, model_file, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    maps = tmp_path / "maps"
    first = sorted(data_dir.glob("*_blue.tif"))[:2]
    assert main(["predict", *map(str, first), "--model", str(model_file), "--out", str(out),
                 "--maps", str(maps), "--workers", "0"]) == 0
    rows = read_csv(out)
    assert [r["id"] for r in rows] == [p.name.removesuffix("_blue.tif") for p in first]
    with open(out, newline="") as handle:
        header = next(csv.reader(handle))
    assert header == ["id", *HPA13.classes, "pixel_size_um", "scale", "precision", "predicted"]
    assert {r["precision"] for r in rows} == {"fp32"}  # predict's default stays exact
    for row in rows:
        predicted = [c for c in HPA13.classes if float(row[c]) >= 0.5]
        assert row["predicted"] == ";".join(predicted)
        assert (maps / f"{row['id']}__composite.png").is_file()
    assert len(list(maps.glob("*.png"))) >= 2 * len(rows)

    # Resume: a partial last line from a crash is dropped, finished ids are not redone.
    with open(out, "a") as handle:
        handle.write("synth-broken,0.1,0.2")
    assert main(["predict", str(data_dir), "--model", str(model_file), "--out", str(out), "--workers", "0"]) == 0
    assert "predicted 4 image(s), 2 already done" in capsys.readouterr().out
    ids = [r["id"] for r in read_csv(out)]
    assert sorted(ids) == sorted({*ids}) and len(ids) == 6


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_predict_jsonl_and_parquet(data_dir, model_file, tmp_path, suffix):
    out = tmp_path / f"pred{suffix}"
    assert main(["predict", str(data_dir), "--model", str(model_file), "--out", str(out), "--workers", "0"]) == 0
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert all(isinstance(r["predicted"], list) for r in rows)
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    assert len(rows) == 6 and set(HPA13.classes) <= set(rows[0])


def test_unreadable_images_are_listed_and_skipped(data_dir, model_file, tmp_path, capsys):
    broken = tmp_path / "data"
    broken.mkdir()
    for path in sorted(data_dir.glob("synth-0000[01]_*.tif")):
        (broken / path.name).write_bytes(path.read_bytes())
    damaged = broken / "synth-00001_green.tif"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    out = tmp_path / "pred.csv"
    assert main(["predict", str(broken), "--model", str(model_file), "--out", str(out), "--workers", "0"]) == 0
    assert [r["id"] for r in read_csv(out)] == ["synth-00000"]
    errors = read_csv(out.with_name("pred.errors.csv"))
    assert errors[0]["id"] == "synth-00001" and errors[0]["reason"]
    assert "skipped 1 unreadable image" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "/nonexistent/folder"], "no such file"),
        (["predict", "{data}", "--out", "{tmp}/pred.txt"], "output format"),
        (["predict", "{data}", "--model", "/nonexistent/model.pt"], "no model"),
        (["predict", "{data}", "--model", "{tmp}"], "not a finished training run"),
    ],
)
def test_bad_input_is_one_line_error(data_dir, model_file, tmp_path, args, message, capsys):
    args = [a.format(data=data_dir, tmp=tmp_path) for a in args]
    if "--model" not in args:
        args += ["--model", str(model_file)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_fixed_size_model_refuses_whole_image(data_dir, tmp_path, capsys):
    path = tmp_path / "mcnn.pt"
    save_model_file(path, create_model("m-cnn", input_size=128), model_name="m-cnn", classes=HPA13.classes,
                    label_set="hpa13", model_options={"input_size": 128}, crop_size=128)
    assert main(["predict", str(data_dir), "--model", str(path), "--whole-image", "--out",
                 str(tmp_path / "p.csv")]) == 2
    assert "fixed-size" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_splits_inputs_between_ranks(data_dir, model_file, tmp_path):
    out = tmp_path / "pred.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "protloc", "predict", str(data_dir), "--model", str(model_file), "--out", str(out), "--workers", "0"],
        check=True, env=env, capture_output=True, timeout=300,
    )
    ids = [r["id"] for r in read_csv(out)]
    assert sorted(ids) == sorted(f"synth-0000{i}" for i in range(6))
    # the ranks' parts are merged, then removed with the journal: only the output is left (issue 23)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.csv"]


@pytest.fixture(scope="module")
def pretrained_cache(tmp_path_factory):
    if not CHECKPOINT_DIR.is_dir():
        pytest.skip("../shared/pretrained/gapnet-pl is not beside the repository")
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("PROTLOC_CACHE")
    os.environ["PROTLOC_CACHE"] = str(cache)
    assert main(["pretrained", "import", str(CHECKPOINT_DIR)]) == 0
    yield cache
    if old is None:
        os.environ.pop("PROTLOC_CACHE")
    else:
        os.environ["PROTLOC_CACHE"] = old


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["hpa-download", "kaggle-png"])
def test_pretrained_on_real_hpa_field(pretrained_cache, folder, tmp_path):
    """The real HPA field (a nuclear protein, by eye) in both published formats, as the files come."""
    if not (REAL_HPA / folder).is_dir():
        pytest.skip("../shared/real-hpa is not beside the repository")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(REAL_HPA / folder), "--out", str(out), "--workers", "0", "--whole-image"]) == 0
    (row,) = read_csv(out)
    probabilities = {c: float(row[c]) for c in HPA13.classes}
    assert max(probabilities, key=probabilities.get) == "Nucleus"
    assert row["predicted"] == "Nucleus"
