"""Per-cell answers on real cells: the mosaic builder, the benchmark's metrics, the default answer on
a small real mosaic with the published weights, and the "no signal" rule."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import shared_dir

import protloc
from protloc.cli import main
from protloc.errors import ProtlocError

# Under CI=true conftest turns these skips into failures: CI installs the dev extra, which has them.
skimage = pytest.importorskip("skimage")
sklearn = pytest.importorskip("sklearn")

from protloc.bench.cells_real_report import cell_accuracy, distinct_answers, metrics, top_classes  # noqa: E402
from protloc.cells import scoring  # noqa: E402
from protloc.cells.features import cell_boxes, predict_cells  # noqa: E402
from protloc.bench.mosaics import Field, arrange_mosaics, build_mosaic, cell_tiles, tile_labels  # noqa: E402

REAL_FIELDS = shared_dir() / "real-hpa" / "kaggle2018-train-101"
CHECKPOINT_DIR = shared_dir() / "pretrained" / "gapnet-pl"


def test_build_mosaic_and_tile_labels_put_each_tile_in_its_place():
    tiles = [np.full((4, 6, 8), k, np.float32) for k in range(4)]
    mosaic = build_mosaic(tiles, 2)
    assert mosaic.shape == (4, 12, 16)
    assert mosaic[0, 0, 0] == 0 and mosaic[0, 0, 8] == 1 and mosaic[0, 6, 0] == 2 and mosaic[0, 11, 15] == 3
    masks = [np.zeros((6, 8), np.int32) for _ in range(4)]
    masks[0][1:3, 1:3] = 1
    masks[1][1:3, 1:3] = 1
    masks[1][4:6, 4:6] = 2
    masks[3][2:4, 2:4] = 1
    labels = tile_labels(masks, 2)
    # ids made distinct: tile 0 keeps 1, tile 1's follow (2, 3), tile 3's after them (4)
    assert labels[1, 1] == 1 and labels[1, 9] == 2 and labels[4, 12] == 3 and labels[8, 10] == 4
    with pytest.raises(ProtlocError):
        build_mosaic(tiles[:3], 2)


def test_cells_on_a_seam_are_left_out_and_the_others_keep_their_tile():
    cells = np.zeros((20, 20), np.int32)
    cells[2:6, 2:6] = 1  # well inside tile 0
    cells[8:12, 4:7] = 2  # crosses the horizontal seam at 10
    cells[3:6, 7:9] = 3  # ends 2 px before the vertical seam: within a 3-px margin
    cells[14:18, 13:17] = 4  # inside tile 3
    cells[0:3, 15:19] = 5  # touches the mosaic's outer edge: no seam, kept (tile 1)
    ids, boxes = cell_boxes(cells)
    tiles = cell_tiles(cells, ids, boxes, grid=2, margin=3)
    assert tiles.tolist() == [0, -1, -1, 3, 1]
    assert cell_tiles(cells, ids, boxes, grid=2, margin=1).tolist() == [0, -1, 0, 3, 1]


def test_arrangement_is_seeded_and_tiles_differ():
    fields = [Field(f"f{k}", labels, 0.32, (512, 512)) for k, labels in enumerate(
        [("Nucleus",), ("Nucleus",), ("Cytosol",), ("Mitochondria",), ("Golgi apparatus",), ("Nucleoli",),
         ("Cytosol", "Nucleus"), ("Plasma membrane",), ("Microtubules",), ("Vesicles",), ("Nucleus",)])]
    first = arrange_mosaics(fields, 6, seed=3)
    assert first == arrange_mosaics(fields, 6, seed=3)
    assert first != arrange_mosaics(fields, 6, seed=4)
    assert [m["grid"] for m in first] == [2, 3, 2, 3, 2, 3]
    assert sorted(m["half"] for m in first) == ["report"] * 3 + ["selection"] * 3
    for m in first:
        assert len(m["tiles"]) == m["grid"] ** 2 == len(set(m["tiles"]))
        assert len({tuple(labels) for labels in m["labels"]}) == len(m["labels"])  # label sets pairwise different
    with pytest.raises(Exception, match="different label sets"):
        arrange_mosaics(fields[:4], 2, grids=(3,))


def test_metrics_on_a_hand_made_case():
    classes = ["A", "B", "C"]
    truth = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 1]], np.int8)
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.3], [0.0, 0.0, 0.0]], np.float32)
    assert top_classes(scores).tolist() == [0, 1, 1, -1]  # the last cell: no signal, no answer
    assert cell_accuracy(truth, scores) == 0.5  # cells 1 and 3 right; cell 4's no answer counts as wrong
    mosaic_of = np.array([0, 0, 1, 1])
    assert distinct_answers(scores, mosaic_of) == {0: 2, 1: 2}
    mosaics = [{"labels": [["A"], ["B"]]}, {"labels": [["B"], ["B", "C"]]}]
    result = metrics(truth, scores, mosaic_of, classes, mosaics)
    # AP of A: cells ranked 0.9 (A), 0.2 (A), ... -> 1.0; B: 0.8 (B), 0.7 (not), 0.1 (not), 0.0 (B) -> (1 + 2/4) / 2;
    # C: 0.3 (not), 0.1 (not), then 0.0 twice (the C cell tied with a non-C cell) -> precision 1/4 at recall 1
    assert result["map"] == pytest.approx((1.0 + 0.75 + 0.25) / 3)
    assert result["per_class_ap"]["C"] == pytest.approx(0.25)
    assert result["mosaics_one_answer"] == 0
    same = scores.copy()
    same[:, :] = [0.1, 0.9, 0.0]
    assert metrics(truth, same, mosaic_of, classes, mosaics)["mosaics_one_answer"] == 2


def _blank_protein(image: np.ndarray, cells: np.ndarray, seed: int = 0) -> np.ndarray:
    """The field with its protein channel replaced by its own slide background (no cell expresses)."""
    rng = np.random.default_rng(seed)
    blank = image.copy()
    background = image[3][cells == 0]
    blank[3] = rng.choice(background, size=image.shape[1:])
    return blank


def test_a_field_without_protein_signal_is_not_called_localised(model_file):
    from protloc.data.synth.dataset import draw_field

    predictor = protloc.load_model(model_file)
    _, field = draw_field(14, 0, 192, 192)  # four cells, all expressing
    image, cells = field.image.astype(np.float32), field.cell_mask.astype(np.int32)
    expressing = predict_cells(predictor, image, cells)
    blank = predict_cells(predictor, _blank_protein(image, cells), cells)
    # the relative gate alone cannot tell: a blank field still has a "strongest" cell at expression 1
    assert blank.expression.max() == pytest.approx(1.0)
    assert np.all(blank.signal_to_noise < scoring.SIGNAL_FLOOR)
    assert np.all(blank.scores(predictor.classes) == 0)  # the default answer: no class for any cell
    assert np.any(blank.scores(predictor.classes, "own") > 0.5)  # (the cell's own would still answer)
    assert np.all(expressing.signal_to_noise >= scoring.SIGNAL_FULL)
    assert expressing.scores(predictor.classes).max() > 0


def test_signal_gate_is_absolute():
    assert scoring.signal_gate([0.0, 1.0, 2.0, 3.0, 50.0], 1.0, 3.0).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert scoring.signal_gate([0.0, 9.0], None).tolist() == [1.0, 1.0]
    # the same cell gets the same gate whatever the other cells of its field (unlike the relative gate)
    protein = np.full((40, 40), 10.0, np.float32) + np.random.default_rng(0).normal(0, 1, (40, 40)).astype(np.float32)
    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:15], labels[25:35, 25:35] = 1, 2
    protein[labels == 1] += 2.0
    alone = scoring.protein_signal(protein, labels, np.array([1, 2]))
    protein[labels == 2] += 200.0
    beside = scoring.protein_signal(protein, labels, np.array([1, 2]))
    assert alone[0][0] / alone[2] == pytest.approx(beside[0][0] / beside[2], rel=1e-6)


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory):
    if not CHECKPOINT_DIR.is_dir() or not REAL_FIELDS.is_dir():
        pytest.skip("../shared (published weights, real HPA fields) is not beside the repository")
    out = tmp_path_factory.mktemp("pretrained") / "gapnet-pl.pt"
    assert main(["pretrained", "import", str(CHECKPOINT_DIR), "--out", str(out)]) == 0
    return out


# Four real Kaggle 2018 fields of different labels, each answered right by its cells' own evidence in
# the benchmark (mapped labels: Nucleoli; Mitochondria; Nucleus (nuclear speckles); Cytosol and
# Centrosome); their top-left 256² quarters here, at the Kaggle layout's 0.32 µm/px.
REAL_TILES = {
    "29b2d9e4-bbba-11e8-b2ba-ac1f6b6435d0": "Nucleoli",
    "0d8a5134-bb9c-11e8-b2b9-ac1f6b6435d0": "Mitochondria",
    "055b1084-bbab-11e8-b2ba-ac1f6b6435d0": "Nucleus",
    "2ae73aec-bba8-11e8-b2ba-ac1f6b6435d0": "Cytosol",
}


@pytest.mark.slow
def test_default_answer_differs_between_the_tiles_of_a_real_mosaic(pretrained_file):
    from PIL import Image

    predictor = protloc.load_model(pretrained_file)
    # the canonical channel order: nucleus (blue), microtubules (red), ER (yellow), protein (green)
    crops = [np.stack([np.asarray(Image.open(REAL_FIELDS / "train" / f"{field_id}_{colour}.png"), np.float32)
                       for colour in ("blue", "red", "yellow", "green")])[:, :256, :256] for field_id in REAL_TILES]
    image = build_mosaic(crops, 2)
    from protloc.cells.segmentation import segment

    cells = segment(image).cells
    predictions = predict_cells(predictor, image, cells, pixel_size_um=0.32)
    tiles = cell_tiles(cells, predictions.cell_ids, predictions.boxes, 2, margin=4)
    scores = predictions.scores(predictor.classes)
    tops = top_classes(scores)
    kept = tiles >= 0
    answers = {int(t): {predictor.classes[c] for c in tops[kept & (tiles == t)] if c >= 0} for t in np.unique(tiles[kept])}
    assert len(set().union(*answers.values())) >= 3  # not one answer for the whole mosaic
    assert len(answers) >= 3  # (a quarter's cells may all lie on its seams)
    for tile, label in enumerate(REAL_TILES.values()):
        if tile in answers:
            assert label in answers[tile], (tile, label, answers)


def test_bench_cells_real_without_data_is_a_one_line_error(tmp_path, capsys):
    code = main(["bench", "--sections", "cells-real", "--data", str(tmp_path / "none"), "--out",
                 str(tmp_path / "b.json")])
    assert code != 0
    assert "no data folder" in capsys.readouterr().err
