"""Evaluation of run directories: ``evaluate_run`` on a real (tiny) run, ``compare_runs`` and its tables,
and the one-line errors of `protloc evaluate` and `protloc compare`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from protloc.model_file import read_model_file, save_model_file
from protloc.cli import main
from protloc.evaluation.compare import compare_runs, wilcoxon_greater
from protloc.evaluation.metrics import NO_POSITIVES
from protloc.evaluation.report import FILES, load_metrics, write_report
from protloc.labels import HPA13
from protloc.models import create_model

from tests.helpers.evaluation import CLASSES
from tests.helpers.evaluation import assert_png as _assert_png


# ------------------------------------------------------------------------------- run directories


def _make_dataset(root: Path, n: int = 18, size: int = 40, seed: int = 0):
    """A tiny npz data set (authors' format) whose 'protein' brightness encodes the labels."""
    from protloc.data.index import DatasetIndex, SampleEntry
    from protloc.data.splits import save_splits

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    samples = []
    for i in range(n):
        labels = tuple(sorted({int(i % 13), int((i * 5) % 13)}))
        sample = rng.integers(0, 60, size=(size, size, 4)).astype(np.uint8)
        sample[..., :] += np.uint8(10 * (labels[0] % 5))
        np.savez(root / f"s{i:02d}.npz", sample=sample)
        samples.append(SampleEntry(id=f"s{i:02d}", sources={"npz": f"s{i:02d}.npz"}, labels=labels,
                                   height=size, width=size))
    index = DatasetIndex(root=str(root), format="npz", label_set=HPA13, samples=samples)
    ids = index.ids()
    splits = {"train": ids[:6], "val": ids[6:12], "test": ids[12:]}
    return index, splits, save_splits


def _make_run(run: Path, data_root: Path, seed: int, epoch_seconds=(2.0, 4.0), with_data: bool = True):
    """A run directory as training leaves it: model.pt, config.yaml, index.json, splits.json, metrics.csv."""
    run.mkdir(parents=True)
    torch.manual_seed(seed)
    network = create_model("gapnet-pl", dropout=0.0)
    save_model_file(run / "model.pt", network, model_name="gapnet-pl", classes=CLASSES, label_set="hpa13",
                    model_options={"dropout": 0.0}, crop_size=32, source={"run": str(run), "seed": seed})
    (run / "config.yaml").write_text(f"model: gapnet-pl\ncrop_size: 32\nseed: {seed}\ndata: {data_root}\n")
    if with_data:
        if not data_root.exists():
            index, splits, save_splits = _make_dataset(data_root)
        else:
            from protloc.data.index import DatasetIndex
            from protloc.data.splits import load_splits, save_splits

            index = DatasetIndex.load(data_root / "index.json")
            splits = load_splits(data_root / "splits.json")
        index.save(data_root / "index.json")
        save_splits(splits, data_root / "splits.json", seed=0)
        index.save(run / "index.json")
        save_splits(splits, run / "splits.json", seed=0)
    with (run / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "train_loss", "val_loss", "val_mean_f1", "val_mean_auc", "lr", "epoch_seconds",
                         "samples_per_second"])
        for epoch, seconds in enumerate(epoch_seconds):
            writer.writerow([epoch, 0.5, 0.5, 0.3, 0.6, 0.01, seconds, 6 / seconds])
    return network


@pytest.mark.slow
def test_evaluate_run_tunes_stores_thresholds_and_reports(tmp_path, capsys):
    run = tmp_path / "run"
    _make_run(run, tmp_path / "data", seed=1)
    before = read_model_file(run / "model.pt")
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu", "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "Table 1 layout" in printed and "evaluation/test" in printed

    out = run / "evaluation" / "test"
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    metrics = load_metrics(out / "metrics.json")
    assert metrics["n_samples"] == 6 and metrics["model"] == "gapnet-pl"
    assert metrics["prediction"] == {"whole_image": False, "patch_size": 32, "device": "cpu"}

    # thresholds: in model.pt (everything else unchanged), thresholds.json and the report alike
    after = read_model_file(run / "model.pt")
    stored = json.loads((run / "thresholds.json").read_text())
    assert after["thresholds"] == stored["thresholds"] == metrics["thresholds"]
    assert stored["tuned_on"] == "val" and stored["n_samples"] == 6
    assert stored["val_mean_f1_tuned"] >= stored["val_mean_f1_at_0.5"]
    for key in before:
        if key == "state_dict":
            assert all(torch.equal(before[key][k], after[key][k]) for k in before[key])
        elif key != "thresholds":
            assert after[key] == before[key], key

    # the report's numbers are scikit-learn's on the written predictions
    with (out / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    probs = np.array([[float(r[name]) for name in CLASSES] for r in rows])
    y = np.array([HPA13.vector(HPA13.parse(r["true_labels"])) for r in rows]).astype(int)
    for c, name in enumerate(CLASSES):
        entry = metrics["per_class"][name]
        if y[:, c].sum() == 0:
            assert entry["f1"] is None and entry["undefined"]["f1"] == NO_POSITIVES
            continue
        assert entry["f1"] == pytest.approx(f1_score(y[:, c], probs[:, c] >= 0.5, zero_division=0))
        if y[:, c].sum() < len(y):
            assert entry["auc"] == pytest.approx(roc_auc_score(y[:, c], probs[:, c]), abs=1e-5)


@pytest.mark.slow
def test_evaluate_whole_image_and_val_split(tmp_path):
    from protloc.evaluation.evaluate import evaluate_run

    run = tmp_path / "run"
    _make_run(run, tmp_path / "data", seed=2)
    metrics = evaluate_run(run, split="val", device="cpu", whole_image=True, progress=False)
    assert metrics["split"] == "val" and metrics["prediction"]["whole_image"] is True
    assert (run / "evaluation" / "val" / "metrics.json").is_file()
    # on the split it was tuned on, tuned F1 is at least F1 at 0.5 for every class
    for entry in metrics["per_class"].values():
        if entry["f1"] is not None:
            assert entry["f1_tuned"] >= entry["f1"] - 1e-12


def _write_evaluation(run: Path, f1_targets: list[float], seed: int):
    """metrics.json etc. for a run whose per-class F1 at 0.5 is exactly ``f1_targets`` (k/10 values)."""
    rng = np.random.default_rng(seed)
    n = 20
    y = np.zeros((n, 13), dtype=int)
    probs = np.zeros((n, 13))
    for c, target in enumerate(f1_targets):
        # 10 positives; predict k of them (probability 0.9) and no false positives: F1 = 2k / (10 + k)
        y[:10, c] = 1
        k = int(round(target))
        probs[:k, c] = 0.9
        probs[k:, c] = rng.uniform(0.0, 0.4, size=n - k)
    ids = [f"t{i:02d}" for i in range(n)]
    write_report(run / "evaluation" / "test", ids, y, probs, CLASSES, None,
                 {"run": str(run), "split": "test", "model": "gapnet-pl"})
    return [2 * k / (10 + k) for k in (int(round(t)) for t in f1_targets)]


@pytest.mark.slow
def test_compare_runs_tables_winners_and_cli(tmp_path, capsys):
    runs = [tmp_path / name for name in ("alpha", "beta", "gamma")]
    hits = {
        "alpha": [9, 9, 9, 9, 9, 9, 9, 9, 9, 5, 5, 5, 7],
        "beta": [8, 8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 7],
        "gamma": [1, 2, 3, 4, 5, 6, 7, 8, 7, 2, 2, 2, 2],
    }
    seconds = {"alpha": (3.0, 5.0), "beta": (10.0, 12.0, 14.0), "gamma": (1.0,)}
    f1 = {}
    for i, run in enumerate(runs):
        _make_run(run, tmp_path / "data", seed=i, epoch_seconds=seconds[run.name], with_data=False)
        f1[run.name] = _write_evaluation(run, hits[run.name], seed=i)
    (runs[1] / "environment.json").write_text(json.dumps({"device": "cuda", "device_name": "NVIDIA H100", "world_size": 2}))

    tables = compare_runs(runs)
    methods = [row["method"] for row in tables["table1"]]
    assert methods == ["gapnet-pl (alpha)", "gapnet-pl (beta)", "gapnet-pl (gamma)"]
    assert tables["table1"][0]["wilcoxon"] is None
    for row, name in zip(tables["table1"][1:], ("beta", "gamma")):
        expected = wilcoxon_greater(f1["alpha"], f1[name])
        assert row["wilcoxon"] == expected
        assert row["f1_mean"] == pytest.approx(np.mean(f1[name]))
        assert row["f1_std"] == pytest.approx(np.std(f1[name]))
    assert tables["table1"][1]["wilcoxon"]["n"] == 12  # the tied class is dropped
    winners = tables["table2"]["winners"]
    assert all(winners[c] == ["gapnet-pl (alpha)"] for c in CLASSES[:9])
    assert all(winners[c] == ["gapnet-pl (beta)"] for c in CLASSES[9:12])
    assert winners[CLASSES[12]] == ["gapnet-pl (alpha)", "gapnet-pl (beta)"]  # a tie marks both
    assert [row["wins"] for row in tables["table2"]["rows"]] == [10, 4, 0]
    t7 = {row["method"]: row for row in tables["table7"]}
    assert t7["gapnet-pl (beta)"]["epoch_seconds_mean"] == pytest.approx(12.0)
    assert t7["gapnet-pl (beta)"]["epochs"] == 3
    assert t7["gapnet-pl (beta)"]["device"] == "cuda: NVIDIA H100 x2" and t7["gapnet-pl (alpha)"]["device"] is None
    expected_parameters = sum(p.numel() for p in create_model("gapnet-pl").parameters())
    assert all(row["parameters"] == expected_parameters for row in tables["table7"])

    out = tmp_path / "cmp"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "Table 2" in printed and "Table 7" in printed
    assert f"{tables['table1'][1]['wilcoxon']['p_value']:.4f} (n=12)" in printed
    assert "**0.947**" in printed  # alpha's winning 9/10 hits: F1 = 18/19
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["table2"]["winners"] == winners
    assert (out / "comparison.md").read_text().startswith("# Method comparison")
    _assert_png(out / "f1_per_class.png")


@pytest.mark.slow
def test_evaluate_then_compare_two_real_runs(tmp_path, capsys):
    runs = [tmp_path / "a", tmp_path / "b"]
    for seed, run in enumerate(runs):
        _make_run(run, tmp_path / "data", seed=seed + 10)
        assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    assert main(["compare", *map(str, runs)]) == 0
    assert (runs[0] / "comparison" / "comparison.json").is_file()
    assert "p-value" in capsys.readouterr().out


# -------------------------------------------------------------------------------------- bad input


def _one_line_error(capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("protloc: error:") and "\n" not in err and "Traceback" not in err
    assert fragment in err


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    _one_line_error(capsys, ["evaluate", str(plain)], "not a protloc run directory")
    _one_line_error(capsys, ["evaluate", str(tmp_path / "missing")], "not a directory")
    _one_line_error(capsys, ["compare", str(plain)], "not a protloc run directory")

    run = tmp_path / "run"
    _make_run(run, tmp_path / "data", seed=0)
    from protloc.data.splits import load_splits, save_splits

    splits = load_splits(run / "splits.json")
    save_splits({**splits, "test": []}, run / "splits.json", seed=0)
    _one_line_error(capsys, ["evaluate", str(run), "--split", "test"], "no samples in the test split")
    _one_line_error(capsys, ["compare", str(run)], "has no evaluation of the test split")
    _one_line_error(capsys, ["compare", str(run), str(run)], "given twice")
    _one_line_error(capsys, ["evaluate", str(run), "--split", "val", "--batch-size", "0"], "batch size")
    (run / "model.pt").write_bytes(b"not a model")
    _one_line_error(capsys, ["evaluate", str(run), "--split", "val"], "cannot read model file")
