"""Evaluation: metrics against scikit-learn, threshold tuning, Wilcoxon against SciPy, reports,
``evaluate_run`` on a real (tiny) run directory, ``compare_runs`` and the CLI's error handling."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import wilcoxon
from sklearn.metrics import f1_score, precision_recall_curve, precision_score, recall_score, roc_auc_score

from protloc.model_file import read_model_file, save_model_file
from protloc.cli import main
from protloc.errors import ProtlocError
from protloc.evaluation.compare import compare_runs, wilcoxon_greater
from protloc.evaluation.metrics import NO_NEGATIVES, NO_POSITIVES, evaluate_predictions, tune_thresholds
from protloc.evaluation.report import FILES, load_metrics, write_report
from protloc.labels import HPA13
from protloc.models import create_model

CLASSES = list(HPA13.classes)

# The paper's Table 2 (per-class F1, 13 tasks) and the p-values its Table 1 reports for GapNet-PL
# against each method.
PAPER_F1 = {
    "GapNet-PL": "0.682 0.659 0.776 0.672 0.754 0.800 0.767 0.866 0.922 0.873 0.949 0.766 0.683",
    "M-CNN": "0.651 0.522 0.805 0.629 0.689 0.625 0.901 0.818 0.907 0.816 0.945 0.756 0.685",
    "DenseNet-121": "0.719 0.598 0.789 0.645 0.750 0.490 0.853 0.843 0.756 0.826 0.943 0.656 0.682",
    "DeepLoc": "0.125 0.039 0.784 0.538 0.428 0.000 0.696 0.758 0.675 0.613 0.925 0.597 0.551",
    "Convolutional MIL": "0.000 0.000 0.735 0.338 0.331 0.000 0.712 0.608 0.692 0.802 0.945 0.538 0.435",
}
PAPER_F1 = {k: [float(x) for x in v.split()] for k, v in PAPER_F1.items()}
PAPER_P = {"M-CNN": 0.0232, "DenseNet-121": 0.0434, "DeepLoc": 0.0009, "Convolutional MIL": 0.0007}


def random_predictions(seed: int, n: int = 120, c: int = 13):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.1, 0.5, size=c)).astype(np.int64)
    y[:, 2] = 0  # a class without positives
    y[:, 5] = 1  # a class without negatives
    signal = rng.uniform(0.0, 0.6, size=c)
    probs = np.clip(y * signal + rng.random((n, c)) * (1 - signal), 0, 1)
    return y, probs


# ------------------------------------------------------------------------------------------ metrics


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7])
def test_metrics_equal_scikit_learn_per_class(seed):
    y, probs = random_predictions(seed)
    thresholds = np.random.default_rng(seed + 100).uniform(0.2, 0.8, size=13)
    result = evaluate_predictions(y, probs, CLASSES, thresholds)
    defined = {m: [] for m in ("f1", "precision", "recall", "auc", "f1_tuned")}
    for c, name in enumerate(CLASSES):
        entry = result["per_class"][name]
        assert entry["positives"] == y[:, c].sum()
        if c == 2:
            for metric in ("f1", "precision", "recall", "auc", "f1_tuned"):
                assert entry[metric] is None
            assert entry["undefined"]["f1"] == NO_POSITIVES
            assert entry["undefined"]["auc"] == NO_POSITIVES
            assert entry["threshold"] == thresholds[c]
            continue
        at_half = (probs[:, c] >= 0.5).astype(int)
        at_tuned = (probs[:, c] >= thresholds[c]).astype(int)
        assert entry["f1"] == pytest.approx(f1_score(y[:, c], at_half, zero_division=0), abs=1e-12)
        assert entry["precision"] == pytest.approx(precision_score(y[:, c], at_half, zero_division=0), abs=1e-12)
        assert entry["recall"] == pytest.approx(recall_score(y[:, c], at_half, zero_division=0), abs=1e-12)
        assert entry["f1_tuned"] == pytest.approx(f1_score(y[:, c], at_tuned, zero_division=0), abs=1e-12)
        assert entry["precision_tuned"] == pytest.approx(precision_score(y[:, c], at_tuned, zero_division=0), abs=1e-12)
        if c == 5:
            assert entry["auc"] is None and entry["undefined"]["auc"] == NO_NEGATIVES
        else:
            assert entry["auc"] == pytest.approx(roc_auc_score(y[:, c], probs[:, c]), abs=1e-12)
            defined["auc"].append(entry["auc"])
        for metric in ("f1", "precision", "recall", "f1_tuned"):
            defined[metric].append(entry[metric])
    for metric, values in defined.items():
        summary = result["summary"][metric]
        assert summary["mean"] == pytest.approx(np.mean(values))
        assert summary["std"] == pytest.approx(np.std(values))
        assert summary["n_classes"] == len(values)
    assert result["summary"]["f1"]["excluded"] == [CLASSES[2]]
    assert result["summary"]["auc"]["excluded"] == [CLASSES[2], CLASSES[5]]
    json.dumps(result, allow_nan=False)  # no NaN anywhere


def test_summary_is_undefined_not_nan_when_no_class_is_measurable():
    y = np.zeros((5, 3), dtype=int)
    result = evaluate_predictions(y, np.full((5, 3), 0.3), ["a", "b", "c"])
    assert result["summary"]["f1"] == {"mean": None, "std": None, "n_classes": 0, "excluded": ["a", "b", "c"]}
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize(
    ("y", "probs", "message"),
    [
        (np.ones((3, 2)), np.ones((3, 3)), "samples, classes"),
        (np.full((3, 2), 2), np.ones((3, 2)) * 0.5, "0 or 1"),
        (np.ones((3, 2)), np.full((3, 2), np.nan), "finite"),
        (np.ones((3, 2)), np.full((3, 2), 1.5), "within"),
    ],
)
def test_metrics_reject_bad_inputs(y, probs, message):
    with pytest.raises(ProtlocError, match=message):
        evaluate_predictions(y, probs, ["a", "b"][: np.asarray(y).shape[1]])


@pytest.mark.parametrize("seed", [0, 4, 9])
def test_threshold_tuning_never_lowers_validation_f1(seed):
    y, probs = random_predictions(seed, n=80)
    thresholds = tune_thresholds(y, probs)
    assert thresholds[2] == 0.5  # no positives: nothing to tune on
    assert np.all((thresholds > 0) & (thresholds < 1))
    at_half = evaluate_predictions(y, probs, CLASSES)
    tuned = evaluate_predictions(y, probs, CLASSES, thresholds)
    for name in CLASSES:
        if at_half["per_class"][name]["f1"] is not None:
            assert tuned["per_class"][name]["f1_tuned"] >= at_half["per_class"][name]["f1"] - 1e-12
            # the chosen threshold is optimal among all cut points of the scores
            c = CLASSES.index(name)
            precision, recall, _ = precision_recall_curve(y[:, c], probs[:, c])
            best = np.max(np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0))
            assert tuned["per_class"][name]["f1_tuned"] == pytest.approx(best)
    # thresholds never sit exactly on a validation score (they are midpoints or grid values)
    for c in range(13):
        if y[:, c].any() and thresholds[c] != 0.5:
            assert not np.isclose(probs[:, c], thresholds[c], atol=0).any()


def test_threshold_tuning_finds_the_separating_threshold_and_keeps_half_when_optimal():
    y = np.array([[1, 1], [1, 0], [0, 1], [0, 0]])
    # class 0: positives score 0.30/0.25, negatives 0.10/0.05 -> F1 at 0.5 is 0, tuned 1
    # class 1: 0.5 already separates perfectly -> keep 0.5
    probs = np.array([[0.30, 0.9], [0.25, 0.2], [0.10, 0.8], [0.05, 0.1]])
    thresholds = tune_thresholds(y, probs)
    assert 0.10 < thresholds[0] <= 0.25
    assert thresholds[1] == 0.5
    tuned = evaluate_predictions(y, probs, ["a", "b"], thresholds)
    assert tuned["per_class"]["a"]["f1"] == 0.0
    assert tuned["per_class"]["a"]["f1_tuned"] == 1.0


# ----------------------------------------------------------------------------------------- Wilcoxon


def test_wilcoxon_equals_scipy_and_reproduces_the_papers_p_values():
    first = PAPER_F1["GapNet-PL"]
    for method, scores in PAPER_F1.items():
        if method == "GapNet-PL":
            continue
        result = wilcoxon_greater(first, scores)
        expected = wilcoxon(first, scores, alternative="greater", method="approx", correction=False)
        assert result["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
        assert result["statistic"] == expected.statistic
        assert round(result["p_value"], 4) == PAPER_P[method]  # the paper's Table 1
        exact = wilcoxon_greater(first, scores, method="exact")
        assert exact["p_value"] == pytest.approx(wilcoxon(first, scores, alternative="greater", method="exact").pvalue)
    # direction matters: the swapped test has a different p-value
    forward = wilcoxon_greater(first, PAPER_F1["M-CNN"])["p_value"]
    backward = wilcoxon_greater(PAPER_F1["M-CNN"], first)["p_value"]
    assert forward < 0.05 < backward
    assert backward == pytest.approx(
        wilcoxon(PAPER_F1["M-CNN"], first, alternative="greater", method="approx", correction=False).pvalue
    )


def test_wilcoxon_drops_ties_and_undefined_pairs_and_reports_n():
    a = [0.9, 0.8, 0.7, 0.6, 0.5, None, 0.4, 0.75]
    b = [0.7, 0.8, 0.6, 0.65, 0.3, 0.2, None, 0.5]
    result = wilcoxon_greater(a, b)
    assert result["n_pairs"] == 6 and result["zero_differences"] == 1 and result["n"] == 5
    kept = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and x != y]
    expected = wilcoxon([x for x, _ in kept], [y for _, y in kept], alternative="greater", method="approx",
                        correction=False)
    assert result["p_value"] == pytest.approx(expected.pvalue)
    same = wilcoxon_greater([0.5, 0.6], [0.5, 0.6])
    assert same["p_value"] is None and same["n"] == 0 and "non-zero" in same["note"]
    with pytest.raises(ProtlocError):
        wilcoxon_greater([0.5], [0.5, 0.6])


# ------------------------------------------------------------------------------------------ reports


def _assert_png(path: Path, min_bytes: int = 10_000):
    assert path.stat().st_size > min_bytes
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 300 and image.height > 200
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5  # something is drawn


def test_report_writes_json_markdown_images_and_predictions(tmp_path):
    y, probs = random_predictions(3, n=60)
    ids = [f"sample-{i:03d}" for i in range(60)]
    thresholds = tune_thresholds(y, probs)
    metrics = write_report(tmp_path / "out", ids, y, probs, CLASSES, thresholds,
                           {"run": "r", "split": "test", "model": "gapnet-pl"})
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    saved = load_metrics(out / "metrics.json")
    assert saved["per_class"] == json.loads(json.dumps(metrics["per_class"]))
    assert saved["split"] == "test" and saved["n_samples"] == 60
    markdown = (out / "report.md").read_text()
    assert "| Method | F1 Score | Precision | Recall | AUC | F1 (tuned thresholds) |" in markdown
    assert f"| {CLASSES[2]} | 0 | {NO_POSITIVES} |" in markdown
    assert f"{metrics['summary']['f1']['mean']:.2f} ± {metrics['summary']['f1']['std']:.2f}" in markdown
    _assert_png(out / "roc_curves.png")
    _assert_png(out / "f1_per_class.png")
    with (out / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["id", *CLASSES, "true_labels", "predicted_labels"]
    assert [r["id"] for r in rows] == ids
    read_back = np.array([[float(r[name]) for name in CLASSES] for r in rows])
    np.testing.assert_allclose(read_back, probs, atol=1e-6)
    for row, labels in zip(rows, y):
        assert HPA13.parse(row["true_labels"]) == tuple(np.flatnonzero(labels))


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
