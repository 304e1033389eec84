"""`protloc bench`: the quick run writes valid JSON with ratios; bad options are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protloc.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_inference_and_data_write_valid_json(tmp_path, capsys):
    out = tmp_path / "results.json"
    markdown = tmp_path / "tables.md"
    assert main(["bench", "--quick", "--sections", "inference,data", "--out", str(out),
                 "--markdown", str(markdown)]) == 0
    results = json.loads(out.read_text())
    assert results["quick"] is True and set(results["sections"]) == {"inference", "data"}
    assert results["machine"]["cores"] >= 1 and "torch" in results["machine"]
    inference = results["sections"]["inference"]
    rows = {(r["variant"], r["mode"]): r for r in inference["rows"]}
    baseline = rows[("eager NCHW fp32 (baseline)", "patches")]
    assert baseline["ratio_vs_baseline"] == 1.0 and baseline["max_logit_diff_rel"] == 0.0
    for (variant, mode), row in rows.items():
        assert row["best_s"] > 0 and row["best_s"] <= row["median_s"] and row["ratio_vs_baseline"] > 0
        # the fast fp32 path is exact; bf16 is close
        if "fp32" in variant and "bf16" not in variant:
            assert row["max_logit_diff_rel"] <= 1e-4, (variant, mode)
        else:
            assert row["max_logit_diff_rel"] <= 0.05, (variant, mode)
    assert inference["bf16_classes"]["samples"] > 0
    data = {r["variant"]: r for r in results["sections"]["data"]["rows"]}
    assert set(data) == {"decode TIFFs (baseline)", "prepared cache (memmap)"}
    assert all(r["crops_per_s"] > 0 for r in data.values())
    printed = capsys.readouterr().out
    assert "| fast fp32 | whole |" in printed and str(out) in printed
    assert "### Data path" in markdown.read_text()


@pytest.mark.slow
def test_quick_scaling_child_reports_time_and_memory(tmp_path):
    from protloc.bench.scaling import run_child

    row = run_child({"kind": "inference", "size": 64, "variant": "fast fp32", "rounds": 1})
    assert "error" not in row, row
    assert row["best_s"] > 0 and row["peak_rss_mib"] >= row["rss_before_mib"] * 0.5 > 0


@pytest.mark.slow
def test_tf_result_is_put_beside_the_baseline(tmp_path):
    tf = tmp_path / "tf.json"
    tf.write_text(json.dumps({"tensorflow_version": "x", "modes": {"patches": {
        "seconds_best": 0.5, "seconds_median": 0.6, "probabilities": [0.5] * 13}}}))
    out = tmp_path / "r.json"
    assert main(["bench", "--quick", "--sections", "inference", "--out", str(out), "--tf-result", str(tf),
                 "--repeats", "1"]) == 0
    tf_rows = json.loads(out.read_text())["sections"]["inference"]["tensorflow"]["rows"]
    assert tf_rows[0]["variant"] == "TensorFlow, authors' graph" and tf_rows[0]["best_s"] == 0.5
    assert tf_rows[0]["max_probability_diff_vs_torch"] is None  # quick size: not the same input as TF's


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sections", "inference,gpu"], "unknown section 'gpu'"),
        (["--sections", ","], "unknown section"),
        (["--repeats", "0"], "--repeats must be a positive integer"),
        (["--threads", "two"], "--threads must be a positive integer"),
        (["--out", "results.txt"], "--out must name a .json file"),
        (["--tf-result", "missing.json"], "no TensorFlow result file"),
        (["--model", "missing.pt"], "no model file"),
    ],
)
def test_bad_options_are_one_line_errors(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("protloc: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "bench-results.json").exists()


def test_benchmark_results_in_the_repository_are_valid():
    for path in sorted((REPO / "benchmarks" / "results").glob("*.json")):
        results = json.loads(path.read_text())
        if path.name.endswith("-arrangement.json"):  # cells-real's seeded mosaics: a list, one per mosaic
            assert all(m["tiles"] and m["half"] in ("selection", "report") for m in results), path.name
            continue
        if results.get("tool") == "tools/tf_benchmark.py":
            assert all(mode["seconds_best"] > 0 for mode in results["modes"].values()), path.name
        else:
            # a bench run's sections, or the segmentation bench's versions (before / now)
            assert "machine" in results and (results.get("sections") or results.get("versions")), path.name


@pytest.mark.slow
def test_quick_platform_runs_both_servers_and_measures_every_part(tmp_path, capsys):
    out = tmp_path / "platform.json"
    assert main(["bench", "--quick", "--sections", "platform", "--out", str(out)]) == 0
    platform = json.loads(out.read_text())["sections"]["platform"]
    assert "skipped" not in platform, platform
    variants = ["today (eager pictures, baseline)", "probabilities first", "probabilities first, no cells"]
    floor, *served = platform["field_rows"]
    assert floor["variant"].startswith("Predictor.predict_proba") and floor["probabilities_best_s"] > 0
    assert [row["variant"] for row in served] == variants
    assert all(row["pictures_on_page"] >= 6 and row["page_best_s"] >= row["probabilities_best_s"] > 0 for row in served)
    assert [(row["variant"], row["clients"]) for row in platform["throughput"]["rows"]] == [
        (v, n) for v in variants for n in (1, 2)]
    assert all(row["requests"] == 4 and row["per_s"] > 0 for row in platform["throughput"]["rows"])
    assert all(row["p95_s"] > 0 for row in platform["list"]["rows"])
    # memory: today's path only (the baseline's would take ten minutes in a full run)
    assert [(row["variant"], len(row["settled_mib"])) for row in platform["memory"]["rows"]] == [(variants[1], 2)]
    eager, first, no_cells = (platform["worker"][v] for v in variants)
    # the memory rounds after one warm-up round, settled once everything is drawn
    (memory,) = platform["memory"]["rows"]
    assert memory["warm_up_settled_mib"] > 0 and memory["spread_pct"] >= 0
    # warm-up + 2 field rounds + 2 x 4 uploads (+ 3 x 5 memory uploads on the new path), none failed
    assert eager["samples"] == no_cells["samples"] == 11 and first["samples"] == 26
    assert eager["failures"] == first["failures"] == no_cells["failures"] == 0
    # with cells, one whole-image pass per submission; without, the covering patches
    assert first["forward_passes"] == 26 and first["patches"] == 0 and no_cells["patches"] >= 11
    assert [platform["image_probabilities"][v].split(",")[0] for v in variants] == [
        "whole image", "whole image", "covering patches of the training crop size"]
    assert all(row["client_cpu_ms_per_request"] > 0 for row in platform["list"]["rows"])
    assert eager["rendered"] == 0 and first["rendered"] >= 1  # pictures after done only on the new path
    assert "Platform: probabilities first" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_runs_from_an_installed_package_without_the_source_tree(tmp_path):
    """The package copied alone (as pip installs it): no benchmarks/ or tools/ beside it."""
    import os
    import shutil
    import subprocess
    import sys

    import protloc

    site = tmp_path / "site-packages"
    shutil.copytree(Path(protloc.__file__).parent, site / "protloc", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import protloc; print(protloc.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site)
    completed = subprocess.run(
        [sys.executable, "-m", "protloc", "bench", "--quick", "--sections", "inference,scaling", "--repeats", "1",
         "--out", "r.json"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = json.loads((work / "r.json").read_text())
    assert results["sections"]["inference"]["rows"][0]["ratio_vs_baseline"] == 1.0
    assert all("error" not in row for row in results["sections"]["scaling"]["inference"]), results["sections"]["scaling"]
