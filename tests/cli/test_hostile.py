"""The command line against what a hostile run tried (issue 23): kill -9 at any moment, full disks and
write errors, outputs that are not ours, inputs that all fail, formula ids and long thin images
(``tests/cells/test_hostile.py``: the same for ``--cells``). Each case asserts the exact outcome: what is printed, the exit status and
which files exist afterwards.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protloc.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")
FORMATS = [".csv", ".jsonl", ".parquet"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Six small four-channel samples (NPZ, [H, W, 4])."""
    folder = tmp_path_factory.mktemp("npz")
    rng = np.random.default_rng(0)
    for i in range(6):
        np.savez(folder / f"s{i}.npz", sample=rng.integers(0, 255, (40, 40, 4), dtype=np.uint8))
    return folder


def ids_in(path: Path) -> list[str]:
    if path.suffix == ".csv":
        return [row["id"] for row in csv.DictReader(io.StringIO(path.read_text()))]
    if path.suffix == ".jsonl":
        return [json.loads(line)["id"] for line in path.read_text().splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(path).column("id").to_pylist()


def predict(*args) -> list[str]:
    return ["predict", *map(str, args), "--workers", "0"]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- outputs: all or nothing, resumable, journal gone at the end ---------------------------------------

@pytest.mark.parametrize("suffix", FORMATS)
def test_a_finished_run_leaves_only_its_output_and_nothing_is_at_the_final_path_before(images, model_file, tmp_path,
                                                                                       suffix, monkeypatch, capsys):
    """A finished .parquet run left <out>.parquet.journal.jsonl; a CSV/JSONL run wrote under --out as it went."""
    from protloc.inference import batch

    out = tmp_path / f"o{suffix}"
    seen = []
    real_write = batch.RowWriter.write

    def watching(self, *args, **kwargs):
        seen.append(out.exists())
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(batch.RowWriter, "write", watching)
    assert main(predict(images, "--model", model_file, "--out", out)) == 0
    assert seen == [False] * 6  # nothing under --out while the run goes on
    assert sorted(ids_in(out)) == [f"s{i}" for i in range(6)]
    assert leftovers(tmp_path) == [out.name]


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG])
def test_a_write_error_stops_the_run_in_one_line_and_the_rerun_resumes(images, model_file, tmp_path, suffix, code,
                                                                       monkeypatch, capsys):
    out = tmp_path / f"o{suffix}"
    calls = {"n": 0}
    real_fsync = os.fsync

    def failing(fd):
        calls["n"] += 1
        if calls["n"] == 4:  # the header (CSV) or a row, then a few rows, then the disk refuses
            raise OSError(code, os.strerror(code))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing)
    assert main(predict(images, "--model", model_file, "--out", out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("protloc: error: cannot write ") and os.strerror(code) in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()  # nothing that looks finished
    journal = [p for p in tmp_path.iterdir() if ".journal." in p.name]
    assert len(journal) == 1 and journal[0].stat().st_size > 0
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(predict(images, "--model", model_file, "--out", out)) == 0
    done = int(capsys.readouterr().out.split(", ")[1].split()[0])
    assert done == (2 if suffix == ".csv" else 3)  # the rows before the failing fsync
    assert sorted(ids_in(out)) == [f"s{i}" for i in range(6)]
    assert leftovers(tmp_path) == [out.name]


def test_a_write_error_before_any_row_leaves_no_empty_file(images, model_file, tmp_path, monkeypatch, capsys):
    """A full disk left 0-byte o.csv / o.jsonl / journal files."""
    out = tmp_path / "o.csv"
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    assert main(predict(images, "--model", model_file, "--out", out)) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_real_file_size_limit_mid_run_is_one_line_and_resumable(images, model_file, tmp_path, suffix):
    """A real write error from the kernel (RLIMIT_FSIZE: EFBIG once the journal reaches 600 bytes)."""
    import resource

    out = tmp_path / f"o{suffix}"
    command = [sys.executable, "-m", "protloc", *predict(images, "--model", model_file, "--out", out)]
    env = {**os.environ, "PYTHONPATH": SRC}

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))

    first = subprocess.run(command, env=env, capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert first.returncode == 2, first.stderr
    assert first.stderr.strip().splitlines()[-1].startswith("protloc: error: cannot write ")
    assert "File too large" in first.stderr and "Traceback" not in first.stderr
    assert not out.exists()
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert int(second.stdout.split(", ")[1].split()[0]) >= 1
    assert sorted(ids_in(out)) == [f"s{i}" for i in range(6)] and leftovers(tmp_path) == [out.name]


def test_a_kill_during_the_parquet_conversion_keeps_the_journal(images, model_file, tmp_path, monkeypatch, capsys):
    import pyarrow.parquet as pq

    out = tmp_path / "o.parquet"

    def cut(table, where, **_):
        Path(where).write_bytes(b"PAR1 cut")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", cut)
    assert main(predict(images, "--model", model_file, "--out", out)) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["o.parquet.journal.jsonl"]
    monkeypatch.undo()
    assert main(predict(images, "--model", model_file, "--out", out)) == 0
    assert "0 image(s), 6 already done" in capsys.readouterr().out
    assert leftovers(tmp_path) == ["o.parquet"]


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_rerun_with_more_inputs_adds_to_a_finished_output(images, model_file, tmp_path, suffix, capsys):
    out = tmp_path / f"o{suffix}"
    first = [images / "s0.npz", images / "s1.npz"]
    assert main(predict(*first, "--model", model_file, "--out", out)) == 0
    assert main(predict(images, "--model", model_file, "--out", out)) == 0
    assert "predicted 4 image(s), 2 already done" in capsys.readouterr().out.splitlines()[-1]
    assert sorted(ids_in(out)) == [f"s{i}" for i in range(6)]
    assert leftovers(tmp_path) == [out.name]


# -- an existing --out: checked from its header, never read whole ----------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_huge_existing_out_is_refused_from_its_header(images, model_file, tmp_path, suffix, capsys):
    """_refuse_foreign_file read --out whole: 21.6 GB, OOM-killed. A sparse 1 GB file costs nothing on disk."""
    import tracemalloc

    out = tmp_path / f"o{suffix}"
    with open(out, "wb") as handle:
        handle.truncate(1 << 30)
    tracemalloc.start()
    try:
        assert main(predict(images, "--model", model_file, "--out", out)) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20, f"{peak / 2**20:.0f} MB traced"
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"protloc: error: {out} exists and is not a protloc prediction file") and len(err.splitlines()) == 1
    assert out.stat().st_size == 1 << 30


@pytest.mark.parametrize("suffix", FORMATS)
def test_an_out_linked_to_dev_full_is_refused(images, model_file, tmp_path, suffix, capsys):
    out = tmp_path / f"o{suffix}"
    out.symlink_to("/dev/full")
    assert main(predict(images, "--model", model_file, "--out", out)) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert out.is_symlink() and leftovers(tmp_path) == [out.name]


def test_an_existing_out_of_another_model_is_refused_before_anything_changes(images, model_file, tmp_path, capsys):
    out = tmp_path / "o.csv"
    out.write_text("id,Nucleus,predicted\nx,0.5,\n")
    assert main(predict(images, "--model", model_file, "--out", out)) == 2
    assert "other columns" in capsys.readouterr().err
    assert out.read_text() == "id,Nucleus,predicted\nx,0.5,\n" and leftovers(tmp_path) == ["o.csv"]


# -- exit status and the list of skipped inputs -----------------------------------------------------------

def _broken(folder: Path, names) -> None:
    for name in names:
        (folder / f"{name}.npz").write_bytes(b"PK\x03\x04 not a zip")


def test_nothing_predicted_is_an_error_with_the_list(model_file, tmp_path, capsys):
    """22 runs where every input was unreadable printed a reason and exited 0 with "predicted 0 image(s)"."""
    folder = tmp_path / "in"
    folder.mkdir()
    _broken(folder, ["b1", "b2"])
    out = tmp_path / "o.csv"
    assert main(predict(folder, "--model", model_file, "--out", out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("protloc: error: nothing was predicted: all 2 input(s) were skipped (first: b1: ")
    assert err[-1].endswith(f"every reason in {tmp_path / 'o.errors.csv'}")
    assert not out.exists() and leftovers(tmp_path) == ["in", "o.errors.csv"]
    rows = list(csv.DictReader((tmp_path / "o.errors.csv").open()))
    assert [r["id"] for r in rows] == ["b1", "b2"] and all(r["reason"] for r in rows)


@pytest.mark.parametrize("strict", [False, True])
def test_some_skipped_is_exit_0_with_a_summary_or_3_with_strict(images, model_file, tmp_path, strict, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("s0", "s1"):
        (folder / f"{name}.npz").write_bytes((images / f"{name}.npz").read_bytes())
    _broken(folder, ["bad"])
    out = tmp_path / "o.jsonl"
    assert main(predict(folder, "--model", model_file, "--out", out, *(["--strict"] if strict else []))) == (3 if strict else 0)
    captured = capsys.readouterr()
    assert "predicted 2 image(s), 0 already done" in captured.out
    assert f"skipped 1 unreadable image(s), every reason in {tmp_path / 'o.errors.csv'} (columns id, reason):" in captured.err
    assert ("--strict: 1 input(s) skipped" in captured.err) == strict
    assert sorted(ids_in(out)) == ["s0", "s1"]
    assert [r["id"] for r in csv.DictReader((tmp_path / "o.errors.csv").open())] == ["bad"]
    (folder / "bad.npz").unlink()
    assert main(predict(folder, "--model", model_file, "--out", out, *(["--strict"] if strict else []))) == 0
    assert not (tmp_path / "o.errors.csv").exists()  # the stale list goes once every input was read


# -- formula-leading ids ---------------------------------------------------------------------------------

FORMULA_IDS = ["=HYPERLINK(1)", "+cmd", "-2+3", "@SUM(A1)"]


def test_formula_ids_are_defused_in_the_csv_as_in_the_platforms_exports(images, model_file, tmp_path, capsys):
    from protloc.web.http.exports import spreadsheet_safe as platform_one
    from protloc.files import spreadsheet_safe

    assert platform_one is spreadsheet_safe  # one function for both
    folder = tmp_path / "in"
    folder.mkdir()
    for name in FORMULA_IDS:
        (folder / f"{name}.npz").write_bytes((images / "s0.npz").read_bytes())
    out = tmp_path / "o.csv"
    assert main(predict(folder, "--model", model_file, "--out", out)) == 0
    assert sorted(ids_in(out)) == sorted("'" + name for name in FORMULA_IDS)
    assert main(predict(folder, "--model", model_file, "--out", out)) == 0  # resumed: none redone, none doubled
    assert "predicted 0 image(s), 4 already done" in capsys.readouterr().out
    assert len(ids_in(out)) == 4
    jsonl = tmp_path / "o.jsonl"
    assert main(predict(folder, "--model", model_file, "--out", jsonl)) == 0
    assert sorted(ids_in(jsonl)) == sorted(FORMULA_IDS)  # JSON is not opened by spreadsheets: ids as they are


# -- resources -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_long_thin_image_costs_memory_in_proportion_to_its_pixels(model_file):
    """Four 1x100000 PNGs took 3.6 GB: the image was padded to a 1024-high copy and all its patches
    stacked at once. Here 1x40000 with 256-px patches: 160 patches of 1 MB, a 164 MB padded copy."""
    import tracemalloc

    import protloc

    predictor = protloc.load_model(model_file)
    predictor.patch_size = 256
    image = np.random.default_rng(0).random((4, 1, 40000), dtype=np.float32)
    expected = predictor.predict_proba(image[:, :, :1000])  # warm up (and a reference of the same kind)
    tracemalloc.start()
    try:
        probs = predictor.predict_proba(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, f"{peak / 2**20:.0f} MB traced"
    assert probs.shape == expected.shape and np.isfinite(probs).all()
