"""`protloc realism`: the class mapping, the real-set reader, the per-class AUC table, rescaling, and
the command end to end on small inputs (a random-weight model: the figures are not the point here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protloc.cli import main
from protloc.data.pixel_size import rescale
from protloc.evaluation import realism
from protloc.labels import HPA13, load_label_set


def test_the_shared_kaggle_mapping_is_used() -> None:
    kaggle = load_label_set("kaggle28")
    mapping = realism.kaggle_to_hpa13()
    assert len(mapping) == 28
    for name in HPA13.classes:  # the classes both sets share map onto themselves
        if name in kaggle.classes:
            assert mapping[kaggle.index(name)] == HPA13.index(name)
    assert mapping[kaggle.index("Cell junctions")] == HPA13.index("Plasma membrane")
    assert mapping[kaggle.index("Nucleoplasm")] == HPA13.index("Nucleus")
    assert mapping[kaggle.index("Rods & rings")] is None


def write_real_set(root: Path, targets: list[str], size: int = 48) -> Path:
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["Id,Target"]
    for i, target in enumerate(targets):
        sid = f"real{i}"
        rows.append(f"{sid},{target}")
        for colour in ("blue", "red", "yellow", "green"):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / "train" / f"{sid}_{colour}.png")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


def test_real_set_labels_are_mapped(tmp_path: Path) -> None:
    real = realism.read_real_set(write_real_set(tmp_path / "real", ["0 4", "22", "23 25", "27"]))
    assert real.ids == ["real0", "real1", "real2"] and real.left_out == ["real3"]  # rods & rings: dropped
    assert HPA13.names(np.flatnonzero(real.labels[0])) == ["Nucleus"]
    assert HPA13.names(np.flatnonzero(real.labels[1])) == ["Plasma membrane"]
    assert HPA13.names(np.flatnonzero(real.labels[2])) == ["Cytosol", "Mitochondria"]


@pytest.mark.parametrize("damage, message", [
    ("no-csv", "no train.csv"),
    ("missing-png", "is missing"),
    ("bad-target", "bad row"),
])
def test_bad_real_sets_are_one_line_errors(tmp_path: Path, capsys, damage, message) -> None:
    root = write_real_set(tmp_path / "real", ["0", "2"])
    if damage == "no-csv":
        (root / "train.csv").unlink()
    elif damage == "missing-png":
        (root / "train" / "real1_green.png").unlink()
    else:
        (root / "train.csv").write_text("Id,Target\nreal0,31\n")
    assert main(["realism", "--trained", "x.pt", "--real", str(root), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_per_class_auc_matches_a_hand_count() -> None:
    y = np.zeros((6, 13), dtype=np.float32)
    p = np.zeros((6, 13), dtype=np.float32)
    y[:3, 0] = 1
    # positives 0.9, 0.8, 0.1 against negatives 0.7, 0.2, 0.05: 3 + 3 + 1 of 9 pairs ranked right
    p[:, 0] = [0.9, 0.8, 0.1, 0.7, 0.2, 0.05]
    y[0, 1] = 1
    result = realism.per_class_auc(y, p, min_positives=2)
    assert result["classes"][HPA13.classes[0]]["auc"] == pytest.approx(7 / 9)
    assert result["classes"][HPA13.classes[1]]["positives"] == 1
    assert result["classes"][HPA13.classes[2]]["auc"] is None  # no positives
    assert result["headline_classes"] == 1
    assert result["mean_auc_headline"] == pytest.approx(7 / 9)
    assert result["mean_auc"] == pytest.approx((7 / 9 + 0.5) / 2)


def test_rescale_changes_the_pixel_grid_not_the_intensities() -> None:
    image = np.full((4, 40, 60), 7.0, dtype=np.float32)
    bigger = rescale(image, 2.5)
    smaller = rescale(image, 0.5)
    assert bigger.shape == (4, 100, 150) and smaller.shape == (4, 20, 30)
    assert np.allclose(bigger, 7.0) and np.allclose(smaller, 7.0)


def test_realism_command_writes_both_tables(tmp_path: Path, model_file: Path, capsys) -> None:
    real = write_real_set(tmp_path / "real", ["0", "0 23", "25", "21", "2", "7"])
    out = tmp_path / "out"
    # tiny synthetic fields at a pretend network pixel size that keeps them small
    code = main(["realism", "--published", str(model_file), "--trained", str(model_file), "--real", str(real),
                 "--fields", "6", "--size", "48", "--network-pixel-size", "1.0", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "realism.json").read_text())
    assert set(results) == {"published_on_synthetic", "published_on_real", "trained_on_real"}
    synthetic = results["published_on_synthetic"]
    assert synthetic["fields"] == 6 and synthetic["rescale_factor"] == pytest.approx(realism_pixel_size() / 1.0)
    assert results["trained_on_real"]["samples"] == 6
    assert results["trained_on_real"]["classes"]["Nucleus"]["positives"] == 2
    saved = np.load(out / "trained_on_real.npz")
    assert saved["probs"].shape == (6, 13)
    table = (out / "realism.md").read_text()
    assert "published weights on synthetic" in table and "synthetic-trained on real" in table
    assert table.strip() in printed
    assert (out / "realism.png").read_bytes()[:4] == b"\x89PNG"


def realism_pixel_size() -> float:
    from protloc.data.synth.field import PIXEL_SIZE_UM

    return PIXEL_SIZE_UM


@pytest.mark.parametrize("args, message", [
    ([], "nothing to measure"),
    (["--trained", "x.pt"], "give --real"),
    (["--published", "x.pt", "--fields", "1"], "--fields"),
    (["--published", "x.pt", "--network-pixel-size", "0"], "--network-pixel-size"),
])
def test_bad_options_are_one_line_errors(tmp_path: Path, capsys, args, message) -> None:
    assert main(["realism", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
