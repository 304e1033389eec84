"""The whole expert study on synthetic data through the CLI: select -> finetune-multiclass -> predict
-> export -> import (two simulated experts) -> report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from protloc.cli import main
from tests.expert.test_data import build_dataset

# Two shared CPU cores: torch's own threads only fight each other (and the other test runs) here.
torch.set_num_threads(1)


def make_run(run_dir: Path, seed: int = 0) -> Path:
    """A 'training run' with a GapNet-PL model file (untrained weights; the fine-tuning learns on its features)."""
    from protloc.model_file import save_model_file
    from protloc.labels import HPA13
    from protloc.models import create_model

    torch.manual_seed(seed)
    network = create_model("gapnet-pl")
    save_model_file(run_dir / "model.pt", network, model_name="gapnet-pl", classes=HPA13.classes,
                    label_set="hpa13", crop_size=32)
    return run_dir


def simulated_expert(truth: dict[str, str], classes: list[str], accuracy: float, seed: int) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    return {s: (label if rng.random() < accuracy else classes[rng.integers(len(classes))]) for s, label in truth.items()}


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    base = tmp_path_factory.mktemp("expert-workflow")
    data = build_dataset(base / "data", size=48)
    run = make_run(base / "run")
    return base, data, run


def test_workflow_select_to_report(workflow, capsys):
    from protloc.model_file import read_model_file
    from protloc.expert.study import load_study

    base, data, run = workflow
    study_dir = base / "study"
    assert main(["expert", "select", "--data", str(data), "--n", "24", "--seed", "7", "--out", str(study_dir)]) == 0
    study = load_study(study_dir)
    assert len(study.samples) == 24

    # Fine-tuning: only the last layer changes; the result is a 13-way softmax model.
    assert main(["finetune-multiclass", str(run), "--data", str(data), "--steps", "200"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuned on" in out
    base_payload = read_model_file(run / "model.pt")
    tuned = read_model_file(run / "multiclass" / "model.pt")
    assert tuned["task"] == "multiclass" and tuned["source"]["layer"] == "fc3"
    changed = {k for k in tuned["state_dict"] if not torch.equal(tuned["state_dict"][k], base_payload["state_dict"][k])}
    assert changed == {"fc3.weight", "fc3.bias"}
    # The synthetic classes differ in their protein texture: the softmax layer must learn them.
    assert tuned["source"]["train_accuracy"] > 0.6

    assert main(["expert", "predict", str(study_dir), "--model", str(run)]) == 0
    predictions = json.loads((study_dir / "predictions.json").read_text())
    assert predictions["task"] == "multiclass" and predictions["model"].endswith("multiclass/model.pt")
    assert predictions["training_overlap"] == []  # study from the test split, fine-tuning on the training split
    assert set(predictions["predictions"]) == set(study.sample_ids)
    for record in predictions["predictions"].values():
        assert record["label"] in study.classes and abs(sum(record["probabilities"]) - 1) < 1e-4
        assert record["label"] == study.classes[int(np.argmax(record["probabilities"]))]

    # Offline views: four full-resolution PNGs per sample.
    export = base / "export"
    assert main(["expert", "export", str(study_dir), "--out", str(export)]) == 0
    from PIL import Image

    rows = list(csv.DictReader(open(export / "samples.csv")))
    assert [r["id"] for r in rows] == study.sample_ids
    for view in ("protein", "protein+nucleus", "protein+microtubules", "protein+er"):
        with Image.open(export / rows[0][view]) as image:
            assert image.size == (48, 48) and image.mode == "RGB"
    with Image.open(export / rows[0]["protein"]) as image:
        pixels = np.asarray(image)
    assert pixels[..., 0].max() == 0 and pixels[..., 1].max() > 200  # protein alone: green only, stretched

    # Two simulated experts answer through a CSV.
    truth = {s["id"]: s["label"] for s in study.samples}
    good = simulated_expert(truth, study.classes, 0.8, seed=1)
    poor = simulated_expert(truth, study.classes, 0.4, seed=2)
    answers = base / "answers.csv"
    with open(answers, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "expert", "label"])
        for sample_id in study.sample_ids:
            writer.writerow([sample_id, "Dr Good", good[sample_id].lower()])  # names match case-insensitively
            writer.writerow([sample_id, "Dr Poor", poor[sample_id]])
    assert main(["expert", "import", str(study_dir), str(answers)]) == 0
    assert "24 answers of Dr Good" in capsys.readouterr().out

    assert main(["expert", "report", str(study_dir)]) == 0
    printed = capsys.readouterr().out
    assert "Table 3" in printed and "Table 4" in printed and "Cohen" in printed
    report = json.loads((study_dir / "report" / "report.json").read_text())
    t = [study.label_set.index(truth[s]) for s in study.sample_ids]
    for name, answers_of in (("Dr Good", good), ("Dr Poor", poor)):
        rater = report["raters"][name]
        expected = np.mean([answers_of[s] == truth[s] for s in study.sample_ids])
        assert rater["accuracy"] == pytest.approx(expected) and rater["answered"] == 24
        row = next(r for r in report["model_vs_expert"] if r["expert"] == name)
        model_ok = [predictions["predictions"][s]["label"] == truth[s] for s in study.sample_ids]
        expert_ok = [answers_of[s] == truth[s] for s in study.sample_ids]
        assert row["both_correct"] == sum(m and e for m, e in zip(model_ok, expert_ok))
        assert row["only_first"] == sum(m and not e for m, e in zip(model_ok, expert_ok))
        assert row["both_correct"] + row["only_first"] + row["only_second"] + row["both_wrong"] == 24
        assert 0 <= row["p_value"] <= 1
        assert (study_dir / "report" / rater["figure"]).read_bytes()[:4] == b"\x89PNG"
    assert report["raters"]["model"]["accuracy"] == pytest.approx(np.mean(model_ok))
    assert report["agreement"]["cohen"][0]["n"] == 24
    assert len(t) == 24
    markdown = (study_dir / "report" / "report.md").read_text()
    assert "confusion-model.png" in markdown and "| Dr Good | 24/24 |" in markdown


def test_import_bad_input_gives_one_line_errors(workflow, tmp_path, capsys):
    base, data, _ = workflow
    study_dir = tmp_path / "study"
    assert main(["expert", "select", "--data", str(data), "--n", "5", "--seed", "1", "--out", str(study_dir)]) == 0
    from protloc.expert.study import load_study

    sample = load_study(study_dir).sample_ids[0]
    capsys.readouterr()
    cases = {
        "unknown class": (f"id,expert,label\n{sample},A,Golgi apparatus\n{sample},B,Lysosome\n", "unknown class 'Lysosome'"),
        "unknown sample": ("id,expert,label\nnot-a-sample,A,Nucleus\n", "sample 'not-a-sample' is not in the study"),
        "missing column": ("id,who,label\nx,A,Nucleus\n", "needs columns id,expert,label"),
        "twice": (f"id,expert,label\n{sample},A,Nucleus\n{sample},A,Cytosol\n", "twice"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(text)
        assert main(["expert", "import", str(study_dir), str(path)]) == 2, name
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (name, err)
    # Nothing of a rejected file is stored: the first row of "unknown class" was valid but is not kept.
    from protloc.expert.db import AnswerStore

    study = load_study(study_dir)
    assert AnswerStore(study.default_db_url, study.study_id).all_answers() == {}
    for argv in (["expert", "report", str(tmp_path / "nope")], ["expert", "serve", str(tmp_path / "nope")],
                 ["expert", "import", str(study_dir), str(tmp_path / "none.csv")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("protloc: error:") and err.count("\n") == 1
    assert main(["expert", "report", str(study_dir)]) == 2  # nothing to report yet
    assert "nothing to report" in capsys.readouterr().err


def test_finetune_uses_the_runs_own_index_and_splits(workflow, tmp_path, capsys):
    """A training run folder carries index.json and splits.json: fine-tuning needs no --data then."""
    import shutil

    from protloc.model_file import read_model_file
    from protloc.data.index import default_index_path, default_splits_path, open_dataset
    from protloc.data.splits import load_splits, single_label_ids

    _, data, _ = workflow
    run = make_run(tmp_path / "run", seed=1)
    shutil.copy(default_index_path(data), run / "index.json")
    shutil.copy(default_splits_path(data), run / "splits.json")
    assert main(["finetune-multiclass", str(run), "--steps", "20"]) == 0
    source = read_model_file(run / "multiclass" / "model.pt")["source"]
    assert source["splits"] == str((run / "splits.json").resolve())
    index = open_dataset(run / "index.json")
    assert source["train_samples"] == len(single_label_ids(index, load_splits(run / "splits.json")["train"]))
    # Fine-tuning a fine-tuned model, or a folder without a model, is a one-line error.
    capsys.readouterr()
    assert main(["finetune-multiclass", str(run / "multiclass" / "model.pt")]) == 2
    assert "already a single-label" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["finetune-multiclass", str(tmp_path / "empty")]) == 2
    assert "without model.pt" in capsys.readouterr().err


def test_select_from_a_runs_splits_file(workflow, tmp_path):
    from protloc.data.index import default_splits_path
    from protloc.data.splits import load_splits
    from protloc.expert.study import load_study

    _, data, _ = workflow
    assert main(["expert", "select", "--data", str(data), "--n", "4", "--splits", str(default_splits_path(data)),
                 "--out", str(tmp_path / "s")]) == 0
    assert set(load_study(tmp_path / "s").sample_ids) <= set(load_splits(default_splits_path(data))["test"])
    assert main(["expert", "select", "--data", str(data), "--splits", str(tmp_path / "no.json"),
                 "--out", str(tmp_path / "t")]) == 2
