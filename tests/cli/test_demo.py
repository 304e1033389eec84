"""`protloc demo` end to end at a tiny scale: data, training, evaluation, report, reuse, comparison."""

from __future__ import annotations

import json

import pytest

from protloc.cli import main

TINY = ["--samples", "40", "--size", "64", "--crop-size", "32", "--epochs", "2", "--batch-size", "8",
        "--device", "cpu"]


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_demo_trains_evaluates_reports_and_reuses(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, _ = run_cli(["demo", "--out", str(out), *TINY], capsys)
    assert code == 0
    run = out / "runs" / "gapnet-pl"
    report = run / "evaluation" / "test" / "report.md"
    for artefact in (out / "data" / "labels.csv", run / "model.pt", run / "metrics.csv", report,
                     run / "evaluation" / "test" / "roc_curves.png", run / "evaluation" / "test" / "f1_per_class.png"):
        assert artefact.is_file(), artefact
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 1 + 2  # header + two epochs
    metrics = json.loads((run / "evaluation" / "test" / "metrics.json").read_text())
    auc = metrics["summary"]["auc"]["mean"]
    # the printed summary is the evaluation's, not a second computation
    assert f"{auc:.3f}" in stdout and str(report) in stdout

    model_bytes = (run / "model.pt").read_bytes()
    code, stdout, _ = run_cli(["demo", "--out", str(out), *TINY], capsys)
    assert code == 0 and "finished earlier: reusing" in stdout
    assert (run / "model.pt").read_bytes() == model_bytes


@pytest.mark.slow
def test_demo_with_two_models_writes_the_comparison(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, _ = run_cli(["demo", "--out", str(out), "--models", "gapnet-pl,conv-mil", *TINY], capsys)
    assert code == 0
    comparison = (out / "comparison" / "comparison.md").read_text()
    assert "gapnet-pl" in comparison and "conv-mil" in comparison and "Wilcoxon" in comparison
    assert str(out / "comparison" / "comparison.md") in stdout


@pytest.mark.parametrize("args, needle", [
    (["--models", "resnet-5"], "unknown model 'resnet-5'"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--patience", "0"], "--patience must be at least 1"),
])
def test_demo_bad_options_are_one_line_errors(args, needle, tmp_path, capsys):
    code, _, err = run_cli(["demo", "--out", str(tmp_path / "demo"), *TINY, *args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "demo" / "runs").exists()


@pytest.mark.slow
def test_demo_data_same_seed_same_bytes(tmp_path):
    """The demo's data set is a function of its settings: two preparations give the same files, byte
    for byte (images, masks, labels.csv, cells.csv), and another seed gives other images."""
    import hashlib

    from protloc.demo import DemoSettings, prepare_data

    def digest(folder):
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    settings = DemoSettings(samples=6, size=64)
    first = digest(prepare_data(tmp_path / "a", settings, progress=False))
    assert any(name.endswith(".tif") for name in first) and "cells.csv" in first
    assert digest(prepare_data(tmp_path / "b", settings, progress=False)) == first
    other = digest(prepare_data(tmp_path / "c", DemoSettings(samples=6, size=64, seed=1), progress=False))
    assert other.keys() == first.keys() and other != first
