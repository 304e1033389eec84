"""The platform's speed work (docs/platform.md, "Where an upload's time goes") keeps every answer:
the faster fill_holes, coverage matrix and seed peaks give the same pixels and sums as the code
they replace, the real field's segmentation is the one recorded before (f59f8fb), a lane's forward
pass leaves the segmentation's core to it, and the platform's worker runs the compiled SELU."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

skimage = pytest.importorskip("skimage")  # under CI=true a skip fails: CI installs the cells extra

from scipy import ndimage as ndi  # noqa: E402

from protloc.cells import pixels  # noqa: E402
from protloc.cells.segmentation import fill_holes, segment  # noqa: E402

from tests.conftest import shared_dir  # noqa: E402

# sha256 (first 16 hex digits) of the cells and nuclei label images (int32 little-endian) of the
# real field 57639_1283_B2_10 and of its 1024² centre (the platform benchmark's upload), as f59f8fb
# segmented them: a change of any label fails here.
REAL_FIELD_LABELS = {
    "field": (16, "91adf7cc65f74af5", "02cc4a8eb834054f"),
    "centre": (4, "a74871999b320ca2", "98ee7f0d96a17746"),
}


def _digest(labels: np.ndarray) -> str:
    return hashlib.sha256(labels.astype("<i4").tobytes()).hexdigest()[:16]


def test_fill_holes_is_scipys_binary_fill_holes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = (int(rng.integers(1, 70)), int(rng.integers(1, 70)))
        mask = ndi.binary_dilation(rng.random(shape) < rng.random() * 0.5, iterations=int(rng.integers(0, 3)))
        assert np.array_equal(fill_holes(mask), ndi.binary_fill_holes(mask))
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False  # a hole
    ring[0, :] = True
    ring[1, 0] = True  # background enclosed by the edge row is still open background
    assert fill_holes(ring)[4, 4] and not fill_holes(ring)[1, 1]


def _sorting_coverage(labels, cell_ids, stride):
    """The coverage matrix as f59f8fb computed it (np.unique over the cells' pixels)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pixels, "BINCOUNT_LIMIT", -1)  # the fallback path is the old algorithm,
        patch.setattr(pixels, "index_of_ids", lambda labels, cell_ids: None)  # with its searchsorted
        return pixels.coverage_matrix(labels, cell_ids, stride)


@pytest.mark.parametrize("shape, cells", [((53, 71), 9), ((1100, 900), 40), ((700, 1030), 3000)])
def test_the_bincount_coverage_is_the_sorting_one_bit_for_bit(shape, cells, monkeypatch):
    rng = np.random.default_rng(cells)
    labels = ndi.zoom(rng.integers(0, cells + 1, (shape[0] // 8 + 1, shape[1] // 8 + 1)), 8, order=0)
    labels = labels[: shape[0], : shape[1]].astype(np.int32)
    monkeypatch.setattr(pixels, "BINCOUNT_LIMIT", 1 << 30)  # the fast path even for 3000 cells
    ids = np.unique(labels)[1:]
    for chosen in (ids, ids[::3]):  # all the cells, and some (ids not listed are nobody's)
        for stride in (4, 16):
            fast, sorting = pixels.coverage_matrix(labels, chosen, stride), _sorting_coverage(labels, chosen, stride)
            assert fast.shape == sorting.shape and fast.data.dtype == sorting.data.dtype
            assert np.array_equal(fast.indptr, sorting.indptr) and np.array_equal(fast.indices, sorting.indices)
            assert np.array_equal(fast.data, sorting.data)


def test_cell_geometry_by_lookup_is_the_searchsorted_one_bit_for_bit(monkeypatch):
    from protloc.cells.pipeline import cell_geometry

    rng = np.random.default_rng(3)
    labels = ndi.zoom(rng.integers(0, 60, (90, 70)), 9, order=0)[:800, :610].astype(np.int32)
    nuclei = np.where(rng.random(labels.shape) < 0.3, labels, 0)
    ids = np.unique(labels)[1:]
    for chosen in (ids, ids[::4]):
        fast = cell_geometry(labels, nuclei, chosen)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pixels, "index_of_ids", lambda labels, cell_ids: None)  # f59f8fb's searchsorted path
            sorting = cell_geometry(labels, nuclei, chosen)
        assert all(np.array_equal(a, b) for a, b in zip(fast, sorting))


def test_huge_ids_still_take_the_sorting_path():
    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:15], labels[20:30, 20:35] = 2_000_000_000, 7
    assert pixels.index_of_ids(labels, np.array([7, 2_000_000_000])) is None
    matrix = pixels.coverage_matrix(labels, np.array([7, 2_000_000_000]), 4)
    assert np.isclose(matrix.sum(axis=1).A1, [15 * 10 / 16, 100 / 16]).all()
    labels[0, 0] = -1  # a negative id is nobody's (a lookup table would wrap it round to the last id)
    assert pixels.index_of_ids(labels, np.array([7])) is None
    assert pixels.coverage_matrix(labels, np.array([7]), 4).sum() == pytest.approx(15 * 10 / 16)


def test_the_real_fields_segmentation_is_unchanged():
    from protloc.data.formats.channel_files import read_channel_file

    folder = shared_dir() / "real-hpa" / "hpa-download"
    if not folder.is_dir():
        pytest.skip("../shared (the real HPA field) is not beside the repository")
    # read as the benchmark and the command line read it (the HPA colour planes of each JPEG)
    field = np.stack([np.asarray(read_channel_file(folder / f"57639_1283_B2_10_{colour}.jpg", colour=colour), np.float32)
                      for colour in ("blue", "red", "yellow", "green")])
    for name, image in (("field", field), ("centre", field[:, 512:1536, 512:1536])):
        found = segment(image)
        assert (int(found.cells.max()), _digest(found.cells), _digest(found.nuclei)) == REAL_FIELD_LABELS[name], name


def test_a_lone_lane_leaves_the_segmentations_core_to_it(monkeypatch):
    import torch

    from protloc.web.queue.lanes import Lanes

    asked = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 0)  # always "changed": every choice is recorded
    for cores, expected in ((2, [1, 2, 1, 1]), (8, [7, 8, 4, 4])):
        lanes = Lanes(2)
        lanes._torch_threads = cores
        asked.clear()
        lanes.share_cores(0, waiting=False, beside=1)  # alone, cells on: the segmentation has a core
        lanes.share_cores(0, waiting=False)  # alone, no cells: every core
        lanes.share_cores(0, waiting=True, beside=1)  # submissions wait: its share
        lanes.hold(1, ["other"])
        lanes.share_cores(0, waiting=False, beside=1)  # another lane works: its share
        assert asked == expected, cores


def test_the_platforms_worker_runs_the_compiled_selu_beside_its_segmentation(model_file, tmp_path, monkeypatch):
    import torch.nn.functional as F

    from protloc.inference import gapnet_pl_fast
    from protloc.web.storage import db
    from protloc.web.settings import load_predictors
    from protloc.web.storage.store import BlobStore
    from protloc.web.queue.worker import PredictionWorker

    compiled = []

    def recorded(x, compiled_selu):  # the real kernel compiles for seconds: its use is what counts here
        compiled.append(compiled_selu)
        return F.selu(x, inplace=True)

    monkeypatch.setattr(gapnet_pl_fast, "_selu_", recorded)
    predictors = load_predictors([str(model_file)], "cpu", "fp32")
    worker = PredictionWorker(predictors, db.open_database(f"sqlite:///{tmp_path / 'p.db'}"),
                              BlobStore(tmp_path / "store"), lanes=2)
    shared = []
    monkeypatch.setattr(worker.lanes, "share_cores", lambda lane, waiting, beside=0: shared.append(beside))
    worker._process([], 0)
    assert shared == [1]  # cells on, GapNet-PL: the forward pass leaves a core to the segmentation
    from tests.helpers.web import cell_like_sample

    image = cell_like_sample(128, 128, seed=0).astype(np.float32)
    predictor = next(iter(predictors.values()))
    worker.cells.compute_with_probabilities(predictor, "s", image, predictor.pixel_size_um)
    worker.cells.close()
    assert compiled and all(compiled)


def test_the_upload_stages_bench_names_every_stage(model_file, tmp_path, capsys):
    import json

    from protloc.bench import upload_stages

    out = tmp_path / "stages.json"
    assert upload_stages.main(["--model", str(model_file), "--precision", "fp32", "--rounds", "1", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["results"][0]
    assert [s["stage"] for s in figures["stages"]] == list(upload_stages.STAGES)
    assert figures["precision"] == "fp32" and figures["total_core_s"] > 0 and all(s["core_s"] >= 0 for s in figures["stages"])
    assert "| **sum** |" in capsys.readouterr().out
    assert upload_stages.main(["--model", str(tmp_path / "missing.pt"), "--rounds", "1"]) == 1
    assert "protloc: no model" in capsys.readouterr().err
