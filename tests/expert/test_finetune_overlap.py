"""The fine-tuning overlap check says when it could not check, instead of answering "no overlap"."""

from __future__ import annotations

import json

from protloc.data.splits import assign_split
from protloc.expert.finetune import training_overlap

IDS = [f"s{i:03d}" for i in range(60)]


def write_splits(path, train):
    path.write_text(json.dumps({"protloc_splits": 1, "splits": {"train": train, "val": [], "test": []}}))
    return path


def test_overlap_found_and_none(tmp_path):
    splits = write_splits(tmp_path / "splits.json", ["s001", "s002", "x"])
    assert training_overlap({"source": {"splits": str(splits)}}, IDS) == (["s001", "s002"], None)
    assert training_overlap({"source": {"splits": str(splits)}}, ["s010"]) == ([], None)


def test_a_training_run_model_is_checked_against_its_run_split(tmp_path):
    write_splits(tmp_path / "splits.json", ["s005"])
    payload = {"source": {"kind": "training-run", "run_dir": str(tmp_path)}}
    assert training_overlap(payload, IDS) == (["s005"], None)


def test_a_recomputable_split_is_recomputed():
    overlap, unchecked = training_overlap({"source": {"splits": "make_splits(seed=0)"}}, IDS)
    assert unchecked is None and overlap == [i for i in IDS if assign_split(i, 0) == "train"] and overlap


def test_unknown_missing_or_broken_splits_are_unchecked_not_empty(tmp_path):
    overlap, why = training_overlap({"source": {"kind": "imported-tensorflow-checkpoint"}}, IDS)
    assert overlap is None and "does not say which samples it was trained on" in why
    overlap, why = training_overlap({"source": {"splits": str(tmp_path / "gone.json")}}, IDS)
    assert overlap is None and "gone.json is no longer there" in why
    (tmp_path / "bad.json").write_text("{not json")
    overlap, why = training_overlap({"source": {"splits": str(tmp_path / "bad.json")}}, IDS)
    assert overlap is None and "cannot be read" in why
