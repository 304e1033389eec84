"""The default per-cell answer's relative term, and how its constants are chosen and written."""

from __future__ import annotations

import numpy as np
import pytest

from protloc.bench import cells as bench_cells
from protloc.cells import scoring
from protloc.cells.evaluate import CellRecords

CLASSES = ["Nucleus", "Microtubules"]


def test_relative_term_ranks_the_cell_with_stronger_own_evidence_higher():
    # the head's own probabilities are all low in absolute value (off-distribution) but differ
    own = np.array([[0.05, 0.02], [0.20, 0.02], [0.10, 0.02]])
    image = np.array([0.6, 0.3])
    expression = np.ones(3)
    plain = scoring.combine(own, image, expression, CLASSES, expression_full=None, weights=np.zeros(2),
                            relative=np.zeros(2))
    assert np.ptp(plain[:, 0]) == 0  # without it every cell gets its image's 0.6
    moved = scoring.combine(own, image, expression, CLASSES, expression_full=None, weights=np.zeros(2),
                            relative=np.ones(2))
    assert moved[1, 0] > moved[2, 0] > moved[0, 0]
    # a cell with the field's typical own evidence keeps the image's value; equal own: all keep it
    np.testing.assert_allclose(moved[:, 1], 0.3, rtol=1e-5)
    # in [0, 1], and the gate still multiplies it
    assert moved.min() > 0 and moved.max() < 1
    gated = scoring.combine(own, image, np.array([1.0, 0.0, 1.0]), CLASSES, expression_full=0.5,
                            weights=np.zeros(2), relative=np.ones(2))
    assert gated[1].max() == 0 and gated[2, 0] == pytest.approx(moved[2, 0], rel=1e-5)


def test_a_field_of_one_cell_keeps_the_image_level_value():
    own = np.array([[0.01, 0.99]])
    image = np.array([0.7, 0.2])
    for relative in (np.zeros(2), np.array([2.0, 0.5])):
        score = scoring.combine(own, image, np.ones(1), CLASSES, weights=np.zeros(2), relative=relative)
        np.testing.assert_allclose(score[0], image, rtol=1e-5)
    assert scoring.combine(np.zeros((0, 2)), image, np.zeros(0), CLASSES, relative=np.ones(2)).shape == (0, 2)
    # saturated probabilities (exact 0 and 1 in float32) stay finite
    hard = scoring.combine(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([1.0, 0.0]), np.ones(2), CLASSES,
                           weights=np.zeros(2), relative=np.ones(2))
    assert np.isfinite(hard).all() and hard[1, 0] > 0.99


def _records(seed: int = 0, fields: int = 30, cells: int = 8) -> CellRecords:
    """Fields where a cell's own probability is off by a per-field factor but ranks its field's
    cells right, and the image's probability says only whether the field holds the class."""
    rng = np.random.default_rng(seed)
    records = CellRecords()
    for field in range(fields):
        truth = (rng.random((cells, 2)) < 0.5).astype(np.int8)
        truth[0], truth[1] = 1, 0  # every field has labelled and unlabelled cells
        offset = rng.normal(0, 3, 2)  # per field: the absolute level says nothing
        logit = offset + 1.5 * truth + rng.normal(0, 0.5, truth.shape)
        own = 1 / (1 + np.exp(-logit))
        image = np.full(2, 0.6)
        for k in range(cells):
            records.truth.append(truth[k])
            records.own.append(own[k])
            records.image.append(image)
            records.expression.append(1.0)
            records.image_of.append(field)
    return records


def test_selection_gives_the_relative_term_weight_where_own_ranks_within_fields(monkeypatch):
    monkeypatch.setattr(bench_cells, "SELECT_EXPRESSION_FULL", (None,))
    monkeypatch.setattr(bench_cells, "SELECT_WEIGHTS", (0.0, 1.0))
    rows = bench_cells.select_constants(_records(), CLASSES)
    assert len(rows) == 2 * 2 * 5 * 5
    best = rows[0]
    assert best["relative_weight_filling"] > 0 and best["relative_weight_other"] > 0
    baseline = next(r for r in rows if r["own_weight_filling"] == r["own_weight_other"] == 0
                    and r["relative_weight_filling"] == r["relative_weight_other"] == 0)
    own_alone = next(r for r in rows if r["own_weight_filling"] == r["own_weight_other"] == 1
                     and r["relative_weight_filling"] == r["relative_weight_other"] == 0)
    assert best["map"] > own_alone["map"] + 0.05 and best["map"] > baseline["map"] + 0.2
    options = bench_cells.combine_options(best, CLASSES)
    assert options["relative"].tolist() == [best["relative_weight_filling"], best["relative_weight_other"]]


def test_write_constants_replaces_only_the_marked_block(tmp_path):
    target = tmp_path / "scoring.py"
    original = scoring.__file__
    text = open(original, encoding="utf-8").read()
    target.write_text(text)
    row = {"expression_full": 0.2, "own_weight_filling": 0.25, "own_weight_other": 0.0,
           "relative_weight_filling": 1.0, "relative_weight_other": 0.5, "map": 0.61234}
    bench_cells.write_constants(row, "s101", "m.pt", target)
    written = target.read_text()
    assert "RELATIVE_WEIGHT_FILLING = 1.0\n" in written and "EXPRESSION_FULL = 0.2\n" in written
    assert "# Chosen on s101 (drawn masks), model m.pt:\n# per-cell mAP 0.6123," in written
    namespace: dict = {}
    exec(compile(written, str(target), "exec"), namespace)
    assert namespace["RELATIVE_WEIGHT_OTHER"] == 0.5 and namespace["OWN_WEIGHT_FILLING"] == 0.25
    # everything outside the block unchanged
    begin, end = bench_cells.CONSTANTS_BEGIN, bench_cells.CONSTANTS_END
    assert written.split(begin)[0] == text.split(begin)[0] and written.split(end)[1] == text.split(end)[1]
    # a file without the markers is left as it was, with a clear message
    target.write_text("EXPRESSION_FULL = 0.3\n")
    with pytest.raises(SystemExit, match="markers are missing"):
        bench_cells.write_constants(row, "s101", "m.pt", target)
    assert target.read_text() == "EXPRESSION_FULL = 0.3\n"


@pytest.mark.slow
def test_select_and_accuracy_in_one_command(model_file, tmp_path, monkeypatch, capsys):
    pytest.importorskip("skimage")  # the accuracy half also segments; under CI=true a skip fails
    from protloc.data.synth.dataset import generate_dataset

    selection, report = tmp_path / "s101", tmp_path / "s102"
    generate_dataset(selection, samples=3, size=128, seed=101, workers=1)
    generate_dataset(report, samples=3, size=128, seed=102, workers=1)
    monkeypatch.setattr(bench_cells, "SELECT_EXPRESSION_FULL", (None, 0.3))
    monkeypatch.setattr(bench_cells, "SELECT_WEIGHTS", (0.0,))
    monkeypatch.setattr(bench_cells, "SELECT_RELATIVE", (0.0, 1.0))
    before = open(scoring.__file__, encoding="utf-8").read()
    assert bench_cells.main(["--select", str(selection), "--accuracy", str(report), "--model", str(model_file),
                             "--selection-out", str(tmp_path / "sel"), "--out", str(tmp_path / "acc")]) == 0
    grid = (tmp_path / "sel.md").read_text()
    assert f"Data: {selection}" in grid and grid.count("\n| ") == 1 + 2 * 4  # header + every grid point
    accuracy = (tmp_path / "acc.md").read_text()
    assert f"Data: {report}" in accuracy and f"(chosen on {selection}, not on this set)" in accuracy
    assert "per-cell mAP" in accuracy and "within-field AUC" in accuracy
    # without --write-constants the library's constants stay as they are
    assert open(scoring.__file__, encoding="utf-8").read() == before
    with pytest.raises(SystemExit):
        bench_cells.main(["--write-constants", "--model", str(model_file)])
    assert "go with --select" in capsys.readouterr().err
