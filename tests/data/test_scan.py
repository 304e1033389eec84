"""`protloc data scan` and the index: every format, every kind of broken sample, the files it writes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from protloc.cli import main
from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL
from protloc.data.formats.listing import detect_format
from protloc.data.index import DatasetIndex, default_index_path, open_dataset, scan_dataset
from protloc.data.splits import load_split_file
from protloc.errors import ProtlocError
from protloc.labels import HPA13, KAGGLE28

from tests.conftest import shared_dir

REAL_HPA = shared_dir() / "real-hpa"


def planes(shape, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype) for c in CHANNELS}


def write_channels(folder: Path, sample_id: str, arrays: dict, ext=".tif"):
    for channel, array in arrays.items():
        path = folder / f"{sample_id}_{COLOUR_OF_CHANNEL[channel]}{ext}"
        if ext == ".tif":
            tifffile.imwrite(path, array)
        else:
            Image.fromarray(array).save(path)


def truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def broken_channels_set(tmp_path):
    """Five good samples (mixed sizes and encodings) and one of each kind of bad one."""
    root = tmp_path / "data"
    root.mkdir()
    rows = {}
    write_channels(root, "good1", planes((48, 64), seed=1))
    write_channels(root, "good2", planes((48, 64), seed=2))
    write_channels(root, "good3", planes((64, 40), np.uint8, seed=3), ext=".png")
    rows.update(good1="Nucleus", good2="Nucleus;Cytosol", good3="10 9")  # names, or indices
    # a per-sample folder with RGB-encoded JPEG channel files
    folder = root / "good4"
    folder.mkdir()
    for i, channel in enumerate(CHANNELS):
        rgb = np.zeros((32, 32, 3), np.uint8)
        rgb[..., i % 3] = 120
        Image.fromarray(rgb).save(folder / f"plate1_{COLOUR_OF_CHANNEL[channel]}.jpg")
    rows["good4"] = "Golgi apparatus"
    write_channels(root, "good5", planes((48, 64), seed=5))
    rows["good5"] = "Vesicles; Plasma membrane ;Actin filaments"
    # broken ones
    write_channels(root, "truncated", planes((48, 64), seed=6))
    truncate(root / "truncated_green.tif")
    rows["truncated"] = "Nucleus"
    missing = planes((48, 64), seed=7)
    del missing["er"]
    write_channels(root, "missing", missing)
    rows["missing"] = "Nucleus"
    mismatched = planes((48, 64), seed=8)
    mismatched["microtubules"] = mismatched["microtubules"][:, :60]
    write_channels(root, "mismatched", mismatched)
    rows["mismatched"] = "Nucleus"
    write_channels(root, "unknownclass", planes((48, 64), seed=9))
    rows["unknownclass"] = "Nucleus;Mitochondrium"
    write_channels(root, "nolabel", planes((48, 64), seed=10))
    rows["imageless"] = "Cytosol"
    with (root / "labels.csv").open("w") as handle:
        handle.write("id,labels\n")
        for sample_id, cell in rows.items():
            handle.write(f"{sample_id},{cell}\n")
    (root / "notes.txt").write_text("not an image; ignored\n")
    return root


EXPECTED_EXCLUDED = {
    "truncated": "truncated_green.tif",
    "missing": "missing channel yellow (er)",
    "mismatched": "different shapes",
    "unknownclass": "unknown class name 'Mitochondrium'",
    "nolabel": "unlabeled",
    "imageless": "no image files",
}


def test_scan_lists_every_bad_sample_with_its_reason(broken_channels_set):
    index = scan_dataset(broken_channels_set)
    assert index.format == "channels"
    assert index.ids() == ["good1", "good2", "good3", "good4", "good5"]
    reasons = {item["id"]: item["reason"] for item in index.excluded}
    assert set(reasons) == set(EXPECTED_EXCLUDED)
    for sample_id, fragment in EXPECTED_EXCLUDED.items():
        assert fragment in reasons[sample_id], (sample_id, reasons[sample_id])
    entry = index.entry("good5")
    assert HPA13.names(entry.labels) == ["Actin filaments", "Plasma membrane", "Vesicles"]
    assert index.entry("good3").labels == (9, 10)
    assert (index.entry("good3").height, index.entry("good3").width) == (64, 40)

    summary = index.summary()
    assert set(summary) == {"valid", "excluded", "shapes", "class_counts", "multi_label_fraction"}
    assert summary["valid"] == 5
    assert summary["shapes"] == {"48x64": 3, "32x32": 1, "64x40": 1}
    assert summary["class_counts"]["Nucleus"] == 3 and summary["class_counts"]["Cytosol"] == 1
    assert list(summary["class_counts"]) == list(HPA13.classes)
    assert summary["multi_label_fraction"] == pytest.approx(3 / 5)


def test_index_loads_images_and_label_vectors(broken_channels_set):
    index = scan_dataset(broken_channels_set)
    image = index.load_image("good1")
    expected = planes((48, 64), seed=1)
    for i, channel in enumerate(CHANNELS):
        np.testing.assert_array_equal(image[i], expected[channel])
    rgb = index.load_image("good4")  # RGB-encoded JPEGs -> grayscale per channel
    assert rgb.shape == (4, 32, 32) and abs(float(rgb.mean()) - 120) < 3
    vector = index.label_vector("good2")
    assert vector.dtype == np.float32 and vector.sum() == 2 and vector[HPA13.index("Cytosol")] == 1


def test_index_save_load_roundtrip_and_moved_folder(broken_channels_set, tmp_path):
    index = scan_dataset(broken_channels_set)
    index.save(default_index_path(broken_channels_set))
    moved = tmp_path / "moved"
    shutil.move(str(broken_channels_set), moved)
    loaded = DatasetIndex.load(default_index_path(moved))
    assert loaded.summary() == index.summary()
    assert Path(loaded.root) == moved.resolve()
    expected = planes((48, 64), seed=2)
    np.testing.assert_array_equal(loaded.load_image("good2"), np.stack([expected[c] for c in CHANNELS]))
    with pytest.raises(ProtlocError, match="no sample"):
        loaded.entry("nope")


def test_open_dataset_scans_once_then_reuses_the_index(broken_channels_set):
    first = open_dataset(broken_channels_set)
    saved = default_index_path(broken_channels_set)
    assert saved.is_file()
    stamp = saved.stat().st_mtime_ns
    write_channels(broken_channels_set, "late", planes((48, 64), seed=11))
    again = open_dataset(broken_channels_set)
    assert again.ids() == first.ids() and saved.stat().st_mtime_ns == stamp
    refreshed = open_dataset(broken_channels_set, refresh=True)
    assert any(item["id"] == "late" for item in refreshed.excluded)  # no label row for it
    assert open_dataset(saved).ids() == first.ids()


def test_unlabelled_folder_keeps_every_readable_sample(tmp_path):
    write_channels(tmp_path, "a", planes((20, 30), seed=1))
    write_channels(tmp_path, "b", planes((20, 30), seed=2))
    index = scan_dataset(tmp_path)
    assert index.ids() == ["a", "b"] and index.excluded == []
    assert all(entry.labels is None for entry in index.samples)
    assert index.summary()["class_counts"] == {}
    with pytest.raises(ProtlocError, match="no labels"):
        index.label_vector("a")


def test_npz_format_detected_with_authors_labels_file(tmp_path):
    rng = np.random.default_rng(0)
    for key in ("k1", "k2", "k3"):
        np.savez_compressed(tmp_path / f"{key}.npz", sample=rng.integers(0, 255, (24, 32, 4), dtype=np.uint8))
    truncate(tmp_path / "k3.npz")
    (tmp_path / "labels.txt").write_text("k1, Nucleus, Nucleoli\nk2, Cytosol\nk3, Cytosol\n")
    assert detect_format(tmp_path) == "npz"
    index = scan_dataset(tmp_path)
    assert index.format == "npz" and index.ids() == ["k1", "k2"]
    assert HPA13.names(index.entry("k1").labels) == ["Nucleoli", "Nucleus"]
    assert [item["id"] for item in index.excluded] == ["k3"]
    assert index.load_image("k1").shape == (4, 24, 32)


def test_kaggle_format_detected_with_train_csv(tmp_path):
    (tmp_path / "train").mkdir()
    write_channels(tmp_path / "train", "id-1", planes((32, 32), np.uint8, seed=1), ext=".png")
    write_channels(tmp_path / "train", "id-2", planes((32, 32), np.uint8, seed=2), ext=".png")
    (tmp_path / "train.csv").write_text("Id,Target\nid-1,0 25\nid-2,27\nid-9,3\n")
    assert detect_format(tmp_path) == "kaggle-hpa"
    index = scan_dataset(tmp_path)
    assert index.label_set.classes == KAGGLE28.classes
    assert index.entry("id-1").labels == (0, 25) and index.entry("id-2").labels == (27,)
    assert index.excluded == [{"id": "id-9", "reason": "label row in train.csv but no image files"}]


def test_wrong_path_and_empty_folder_are_protloc_errors(tmp_path):
    with pytest.raises(ProtlocError, match="no such folder"):
        scan_dataset(tmp_path / "absent")
    with pytest.raises(ProtlocError, match="no samples"):
        scan_dataset(tmp_path)
    with pytest.raises(ProtlocError, match="no samples"):
        scan_dataset(tmp_path, format="npz")


# ---- the command ----------------------------------------------------------------------------------


def test_cli_json_summary_and_written_files(broken_channels_set, capsys):
    assert main(["data", "scan", str(broken_channels_set), "--json", "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["valid"] == 5
    assert {item["id"] for item in summary["excluded"]} == set(EXPECTED_EXCLUDED)
    index = DatasetIndex.load(broken_channels_set / ".protloc" / "index.json")
    assert index.summary() == summary
    splits = load_split_file(broken_channels_set / ".protloc" / "splits.json")
    assert splits["seed"] == 3
    assert sorted(sum(splits["splits"].values(), [])) == index.ids()
    for name, ids in splits["single_label"].items():
        assert set(ids) <= set(splits["splits"][name])
        assert all(len(index.entry(i).labels) == 1 for i in ids)


def test_cli_human_summary_with_out_dir(broken_channels_set, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    assert main(["data", "scan", str(broken_channels_set), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "valid samples: 5" in text and "excluded: 6" in text
    assert "truncated: " in text and "Nucleus" in text
    assert (out / "index.json").is_file() and (out / "splits.json").is_file()
    assert not (broken_channels_set / ".protloc").exists()


def test_cli_out_under_a_file_names_the_file(broken_channels_set, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert main(["data", "scan", str(broken_channels_set), "--out", str(a_file / "index")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.txt is a file, not a folder" in err[0]
    assert a_file.read_text() == "keep me"


def test_cli_read_only_folder_prints_summary_and_writes_nothing(tmp_path, capsys):
    write_channels(tmp_path, "a", planes((16, 16), seed=1))
    os.chmod(tmp_path, 0o555)
    try:
        assert main(["data", "scan", str(tmp_path)]) == 0
    finally:
        os.chmod(tmp_path, 0o755)
    captured = capsys.readouterr()
    assert "valid samples: 1" in captured.out
    assert "nothing was written" in captured.err
    assert not (tmp_path / ".protloc").exists()


def test_cli_label_set_and_format_options(tmp_path, capsys):
    write_channels(tmp_path, "a", planes((16, 16), seed=1))
    (tmp_path / "labels.csv").write_text("id,labels\na,Mitochondria;Nucleoplasm\n")
    label_set = tmp_path / "mine.json"
    label_set.write_text(json.dumps({"name": "mine", "classes": ["Nucleoplasm", "Mitochondria"]}))
    assert main(["data", "scan", str(tmp_path), "--format", "channels", "--label-set", str(label_set),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["class_counts"] == {"Nucleoplasm": 1, "Mitochondria": 1}
    assert main(["data", "scan", str(tmp_path), "--labels", str(tmp_path / "absent.csv")]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("make_target", ["absent", "empty"])
def test_cli_exit_code_2_for_wrong_path_or_empty_folder(tmp_path, make_target):
    target = tmp_path / make_target
    if make_target == "empty":
        target.mkdir()
    result = subprocess.run([sys.executable, "-m", "protloc", "data", "scan", str(target)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1  # one line, no traceback
    assert "Traceback" not in result.stderr and "protloc: error:" in result.stderr


@pytest.mark.skipif(not REAL_HPA.is_dir(), reason=f"real HPA images not present at {REAL_HPA}")
@pytest.mark.parametrize("folder,shape", [("hpa-download", "2048x2048"), ("kaggle-png", "512x512")])
def test_cli_scans_the_real_hpa_folders_without_labels(folder, shape, tmp_path, capsys):
    assert main(["data", "scan", str(REAL_HPA / folder), "--json", "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["valid"] == 1 and summary["excluded"] == [] and summary["shapes"] == {shape: 1}
    assert not (REAL_HPA / folder / ".protloc").exists()
    assert detect_format(REAL_HPA / folder) == "channels"  # no train.csv: id-suffix names are channels


def test_progress_bar_on_stderr_when_asked(tmp_path, capsys):
    write_channels(tmp_path, "a", planes((16, 16), seed=1))
    scan_dataset(tmp_path, progress=True)
    assert "scanning" in capsys.readouterr().err
    scan_dataset(tmp_path, progress=False)
    assert capsys.readouterr().err == ""


def test_open_dataset_rescans_for_another_label_set(tmp_path):
    write_channels(tmp_path, "a", planes((16, 16), seed=1))
    (tmp_path / "labels.csv").write_text("id,labels\na,0 1\n")
    assert open_dataset(tmp_path).label_set.name == "hpa13"
    other = open_dataset(tmp_path, label_set="kaggle28")
    assert other.label_set.classes == KAGGLE28.classes
    assert KAGGLE28.names(other.entry("a").labels) == list(KAGGLE28.classes[:2])
    assert DatasetIndex.load(default_index_path(tmp_path)).label_set.name == "kaggle28"
