"""Study selection on a tiny synthetic channels-layout data set (also the data builder for the other
expert tests)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile

from protloc.errors import ProtlocError
from protloc.labels import HPA13

COLOURS = {"blue": 0, "red": 1, "yellow": 2, "green": 3}  # file colour -> canonical channel index
# Classes of the synthetic set and how many single-label samples each gets; a few multi-label too.
CLASS_COUNTS = {"Nucleus": 40, "Cytosol": 30, "Mitochondria": 20, "Nucleoli": 12, "Vesicles": 6}
FRACTIONS = (0.5, 0.1, 0.4)  # a large test split so that a study of 20 has enough to draw from


def synthetic_image(class_index: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A [4, size, size] sample whose protein channel carries a class-specific texture."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = rng.normal(100, 10, (4, size, size)).astype(np.float32)
    image[0] += 400 * np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) / 0.02)  # nucleus blob
    frequency = 1 + class_index % 7
    image[3] += 300 * (0.5 + 0.5 * np.sin(2 * np.pi * frequency * (xx + (class_index % 3) * yy)))
    return np.clip(image, 0, 65535).astype(np.uint16)


def build_dataset(root: Path, seed: int = 0, size: int = 32) -> Path:
    """Write a channels-layout data set (id_blue.tif, ...; labels.csv) with its index and splits."""
    from protloc.data.index import default_splits_path, open_dataset
    from protloc.data.splits import make_splits, save_splits

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["id,labels"]
    number = 0
    samples = [(name,) for name, count in CLASS_COUNTS.items() for _ in range(count)]
    samples += [("Nucleus", "Cytosol")] * 8 + [("Mitochondria", "Vesicles")] * 4  # multi-label: never in a study
    for labels in samples:
        sample_id = f"s{number:04d}"
        number += 1
        image = synthetic_image(HPA13.index(labels[0]), rng, size)
        for colour, channel in COLOURS.items():
            tifffile.imwrite(root / f"{sample_id}_{colour}.tif", image[channel])
        rows.append(f"{sample_id},{';'.join(labels)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    index = open_dataset(root)
    save_splits(make_splits(index, seed=0, fractions=FRACTIONS), default_splits_path(root), seed=0,
                fractions=FRACTIONS, index=index)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("expert-data") / "data")


def test_select_draws_single_label_test_samples_stratified(dataset, tmp_path):
    from protloc.data.index import default_splits_path, open_dataset
    from protloc.data.splits import load_splits
    from protloc.expert.study import load_study, select_study

    study = select_study(dataset, tmp_path / "study", n=20, seed=3)
    index = open_dataset(dataset)
    test_ids = set(load_splits(default_splits_path(dataset))["test"])
    assert len(study.samples) == 20 and len(set(study.sample_ids)) == 20
    for sample in study.samples:
        assert sample["id"] in test_ids
        labels = index.entry(sample["id"]).labels
        assert len(labels) == 1 and HPA13.classes[labels[0]] == sample["label"]
    # Stratified: every class with single-label test samples is drawn, roughly in proportion.
    available = Counter(HPA13.classes[index.entry(i).labels[0]] for i in test_ids if len(index.entry(i).labels) == 1)
    drawn = Counter(s["label"] for s in study.samples)
    assert set(drawn) == set(available)
    for name, count in drawn.items():
        assert abs(count - 20 * available[name] / sum(available.values())) <= 1.5
    # The file is the study: reloading gives the same samples; same seed draws the same set.
    again = load_study(tmp_path / "study" / "study.json")
    assert again.samples == study.samples and again.study_id == study.study_id
    same_seed = select_study(dataset, tmp_path / "other", n=20, seed=3)
    assert same_seed.samples == study.samples
    assert select_study(dataset, tmp_path / "third", n=20, seed=4).samples != study.samples
    raw = json.loads((tmp_path / "study" / "study.json").read_text())
    assert raw["data"]["root"] == str(dataset.resolve()) and raw["selection"]["n_requested"] == 20


def test_select_takes_all_when_fewer_than_asked(dataset, tmp_path):
    from protloc.expert.study import select_study

    study = select_study(dataset, tmp_path / "s", n=10_000, seed=0)
    assert study.extra["test_single_label"] == len(study.samples)


def test_allocate_keeps_small_classes_and_caps():
    from protloc.expert.study import allocate

    take = allocate({0: 100, 1: 50, 2: 2, 3: 1}, 20)
    assert sum(take.values()) == 20 and take[2] >= 1 and take[3] == 1 and take[0] > take[1] > take[2]
    assert allocate({0: 3, 1: 2}, 4) in ({0: 2, 1: 2}, {0: 3, 1: 1})
    assert allocate({0: 5, 1: 5, 2: 5}, 2) in ({0: 1, 1: 1, 2: 0}, {0: 1, 1: 0, 2: 1}, {0: 0, 1: 1, 2: 1})


def test_select_bad_input(tmp_path, dataset):
    from protloc.expert.study import load_study, select_study

    with pytest.raises(ProtlocError, match="no study at"):
        load_study(tmp_path / "missing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "study.json").write_text("{not json")
    with pytest.raises(ProtlocError, match="not valid JSON"):
        load_study(tmp_path / "broken")
    with pytest.raises(ProtlocError, match="no data set"):
        select_study(tmp_path / "nowhere", tmp_path / "x", n=5)
    select_study(dataset, tmp_path / "once", n=5)
    with pytest.raises(ProtlocError, match="exists already"):
        select_study(dataset, tmp_path / "once", n=5)
