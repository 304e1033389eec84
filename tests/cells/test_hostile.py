"""``predict --cells`` / ``protloc cells`` against what a hostile run tried (issue 23): kill -9 at several
moments, a full disk, inputs that fail, formula ids, and a mask of 65,535 cells. Each case asserts
the exact outcome."""

from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from protloc.cli import main

pytest.importorskip("anndata", reason="--cells needs the cells extra")
pytest.importorskip("skimage", reason="--cells needs the cells extra")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def fields(tmp_path_factory) -> Path:
    """Synthetic fields with cells (segmentation finds them): the --cells runs."""
    from protloc.data.synth.dataset import generate_dataset

    folder = tmp_path_factory.mktemp("fields")
    generate_dataset(folder, samples=8, size=160, seed=3, workers=1)
    return folder


def test_per_cell_sums_and_geometry_are_vectorised_and_exact():
    """A mask of 65,535 small cells did not finish in 180 s (a loop over the cells); the vectorised
    sums equal the per-cell coverage formula on a small mask and take seconds on the large one."""
    import torch

    from protloc.cells import features
    from protloc.cells.pipeline import cell_geometry

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, (53, 71)).astype(np.int32)
    labels[labels == 4] = 0
    ids, boxes = features.cell_boxes(labels)
    maps = tuple(torch.from_numpy(rng.random((1, c, -(-53 // s), -(-71 // s)), dtype=np.float32))
                 for c, s in zip((3, 5, 6), features.BLOCK_STRIDES))
    sums, totals = features.masked_sums(maps, labels, ids, boxes)
    for row, cell_id in enumerate(ids):
        columns = 0
        for index, (block, stride) in enumerate(zip(maps, features.BLOCK_STRIDES)):
            gy0, gx0, weights = features.coverage(labels, int(cell_id), boxes[cell_id - 1], stride)
            plane = block[0].permute(1, 2, 0).numpy()[gy0 : gy0 + weights.shape[0], gx0 : gx0 + weights.shape[1]]
            expected = weights.reshape(-1) @ plane.reshape(-1, plane.shape[2])
            np.testing.assert_allclose(sums[row, columns : columns + plane.shape[2]], expected, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(totals[row, index], weights.sum(), rtol=1e-5)
            columns += plane.shape[2]
    centroids, areas, nucleus_areas = cell_geometry(labels, labels % 2, ids)
    for k, cell_id in enumerate(ids):
        ys, xs = np.nonzero(labels == cell_id)
        assert areas[k] == len(ys) and nucleus_areas[k] == int(cell_id) % 2 * len(ys)
        np.testing.assert_allclose(centroids[k], (ys.mean(), xs.mean()))

    grid = np.arange(256 * 256).reshape(256, 256) + 1
    large = np.kron(grid, np.ones((4, 4), np.int64))
    large[large > 65535] = 0
    large[(np.arange(1024) % 4 == 3)[:, None] | (np.arange(1024) % 4 == 3)[None, :]] = 0
    large = large.astype(np.int32)
    maps = tuple(torch.rand(1, c, 1024 // s, 1024 // s) for c, s in zip((32, 64, 128), features.BLOCK_STRIDES))
    started = time.perf_counter()
    ids, boxes = features.cell_boxes(large)
    sums, _ = features.masked_sums(maps, large, ids, boxes)
    _, areas, _ = cell_geometry(large, None, ids)
    elapsed = time.perf_counter() - started
    assert len(ids) == 65535 and (areas == 9).all() and sums.shape == (65535, 224)
    assert elapsed < 20, f"{elapsed:.1f} s"  # about 3 s on two busy cores; the loop took minutes


# -- predict --cells: kill -9 at any moment, full disks ----------------------------------------------------

def _cells_outputs(out: Path):
    import anndata
    import pandas as pd

    table = pd.read_csv(out)
    adata = anndata.read_h5ad(out.with_suffix(".h5ad"))
    return table, adata


@pytest.fixture(scope="module")
def reference(fields, model_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "ref.csv"
    assert main(["predict", "--cells", str(fields), "--model", str(model_file), "--out", str(out)]) == 0
    return _cells_outputs(out)


@pytest.mark.slow
@pytest.mark.parametrize("parts_before_kill", [0, 2, 5])
def test_predict_cells_resumes_after_kill_9(fields, model_file, reference, tmp_path, parts_before_kill, capsys):
    """`predict --cells` did not resume after kill -9: no table, the rerun redid every image."""
    out = tmp_path / "c.csv"
    parts = tmp_path / "c.csv.parts"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "protloc", "predict", "--cells", str(fields), "--model",
                             str(model_file), "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if parts.is_dir() and len(list(parts.glob("*.npz"))) >= parts_before_kill and (parts / "run.json").exists():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and not out.with_suffix(".h5ad").exists()  # nothing that looks finished
    finished = len(list(parts.glob("*.npz")))
    assert finished >= parts_before_kill
    assert main(["predict", "--cells", str(fields), "--model", str(model_file), "--out", str(out)]) == 0
    said = capsys.readouterr().out.splitlines()[0]
    assert said.endswith(f"in 8 image(s), {finished} already done -> {out}")
    table, adata = _cells_outputs(out)
    expected_table, expected_adata = reference
    keys = list(zip(table["image_id"], table["cell_id"]))
    assert len(keys) == len(set(keys)) == len(expected_table)  # no row lost or doubled
    assert keys == list(zip(expected_table["image_id"], expected_table["cell_id"]))
    np.testing.assert_allclose(table["Nucleus"], expected_table["Nucleus"], atol=1e-5)
    assert adata.n_obs == len(table) and list(adata.obs["cell_id"]) == list(table["cell_id"])
    np.testing.assert_allclose(adata.X, expected_adata.X, atol=1e-4)
    masks = sorted(p.name for p in (tmp_path / "c-masks").iterdir())
    assert masks == sorted(f"synth-{i:05d}_{kind}mask.png" for i in range(8) for kind in ("cell", "nuclei"))
    assert leftovers(tmp_path) == ["c-masks", "c.csv", "c.h5ad"]  # the parts went with the finished run


def test_predict_cells_on_a_full_disk_stops_in_one_line_and_resumes(fields, model_file, tmp_path, monkeypatch, capsys):
    """A full disk gave h5py tracebacks, then SIGSEGV, leaving a complete-looking x.parquet beside
    x.h5ad.partial. The AnnData file is now built in memory; a write error removes every temporary file."""
    from protloc.files import atomic_write as real

    out = tmp_path / "x.parquet"

    def full(path, write):
        if str(path).endswith(".h5ad"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write)

    monkeypatch.setattr("protloc.files.atomic_write", full)
    assert main(["predict", "--cells", str(fields), "--model", str(model_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"protloc: error: cannot write {tmp_path / 'x.h5ad'}: No space left on device; the finished "
                       "images are kept in the .parts folder: free space and rerun the same command")
    assert "x.parquet" not in leftovers(tmp_path) and not any(".incomplete" in n for n in leftovers(tmp_path))
    monkeypatch.undo()
    assert main(["predict", "--cells", str(fields), "--model", str(model_file), "--out", str(out)]) == 0
    assert "in 8 image(s), 8 already done" in capsys.readouterr().out
    assert sorted(n for n in leftovers(tmp_path) if not n.endswith(".tmp")) == ["x-masks", "x.h5ad", "x.parquet"]


def _copy_with_a_broken_one(fields: Path, folder: Path) -> None:
    folder.mkdir()
    for path in [*fields.glob("synth-00000_*.tif"), *fields.glob("synth-00001_*.tif")]:
        name = path.name.replace("synth-00001", "broken")
        data = path.read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2] if name == "broken_green.tif" else data)


def test_cells_exit_status_and_skipped_list(fields, model_file, tmp_path, capsys):
    folder = tmp_path / "in"
    _copy_with_a_broken_one(fields, folder)
    out = tmp_path / "c.csv"
    assert main(["cells", str(folder), "--model", str(model_file), "--out", str(out), "--strict"]) == 3
    err = capsys.readouterr().err
    assert f"skipped 1 image(s), every reason in {tmp_path / 'c.errors.csv'}" in err and "--strict" in err
    assert out.exists() and [r["id"] for r in csv.DictReader((tmp_path / "c.errors.csv").open())] == ["broken"]
    only_broken = tmp_path / "bad"
    _copy_with_a_broken_one(fields, only_broken)
    for path in only_broken.glob("synth-00000_*"):
        path.unlink()
    assert main(["cells", str(only_broken), "--model", str(model_file), "--out", str(tmp_path / "n.csv")]) == 2
    assert "no image could be analysed" in capsys.readouterr().err
    assert not (tmp_path / "n.csv").exists() and not (tmp_path / "n.h5ad").exists()


def test_cells_csv_defuses_formula_ids(fields, model_file, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in fields.glob("synth-00000_*.tif"):
        (folder / path.name.replace("synth-00000", "=SUM(A1)")).write_bytes(path.read_bytes())
    out = tmp_path / "c.csv"
    assert main(["cells", str(folder), "--model", str(model_file), "--out", str(out)]) == 0
    ids = {row["image_id"] for row in csv.DictReader(out.open())}
    assert ids == {"'=SUM(A1)"}
