"""Segmentation (protloc.cells.segmentation): touching nuclei split, dim nuclei kept, real fields
against hand-checked nucleus centres (tests/fixtures/real-nuclei), and the bench that reports it."""

from __future__ import annotations

import json

import numpy as np
import pytest

skimage = pytest.importorskip("skimage")  # under CI=true a skip fails: CI installs the cells extra

from protloc.bench import segmentation as bench  # noqa: E402
from protloc.cells.segmentation import estimate_nucleus_diameter, segment  # noqa: E402

from tests.conftest import shared_dir  # noqa: E402


def _disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.float32)


def _field(nuclei: list[tuple[tuple[int, int], int, float]], shape=(256, 256), seed=0) -> np.ndarray:
    """A canonical sample: each nucleus (centre, radius, brightness) with a cytoplasm twice as wide."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    image = np.zeros((4, *shape), np.float32)
    for centre, radius, brightness in nuclei:
        # Touching nuclei do not add up: the brighter one's signal wins where they overlap.
        image[0] = np.maximum(image[0], brightness * _disc(shape, centre, radius))
        image[1] = np.maximum(image[1], 300.0 * _disc(shape, centre, 2 * radius))
    image[0] = ndi.gaussian_filter(image[0], 1.5)
    image[1] = ndi.gaussian_filter(image[1], 2.0)
    image[2] = 0.5 * image[1]
    image[3] = 0.2 * image[1]
    return image + rng.normal(10.0, 2.0, image.shape).astype(np.float32)


LONE = [((40, 40), 14, 800.0), ((40, 200), 14, 800.0), ((210, 40), 14, 800.0), ((210, 210), 14, 800.0)]


def test_two_touching_nuclei_are_split():
    # Two nuclei whose discs overlap (centres 1.7 radii apart), with a dim seam where they touch, as
    # real touching nuclei have; the lone ones let the diameter be estimated.
    image = _field(LONE + [((128, 104), 14, 800.0), ((128, 128), 14, 800.0)])
    image[0, 118:139, 115:117] *= 0.4  # the seam
    result = segment(image)
    pair = {int(result.nuclei[128, 100]), int(result.nuclei[128, 132])}
    assert 0 not in pair and len(pair) == 2, pair
    assert result.count == 6
    assert 24 <= result.nucleus_diameter <= 34  # discs of 28 px


def test_touching_nuclei_without_a_seam_are_split_by_shape():
    image = _field(LONE + [((128, 100), 14, 800.0), ((128, 126), 14, 800.0)])
    result = segment(image)
    pair = {int(result.nuclei[128, 96]), int(result.nuclei[128, 130])}
    assert 0 not in pair and len(pair) == 2, pair


def test_a_small_nucleus_touching_a_big_one_is_its_own():
    # Radii 16 and 10, centres 26 px apart: the discs overlap, no seam; the small one's distance
    # maximum is shallow, but deeper than SEED_DEPTH above the saddle.
    image = _field(LONE + [((128, 104), 16, 800.0), ((128, 130), 10, 800.0)])
    result = segment(image)
    assert result.count == 6
    assert 0 != result.nuclei[128, 100] != result.nuclei[128, 132] != 0


def test_an_elongated_nucleus_stays_one():
    from scipy import ndimage as ndi

    image = _field(LONE)
    yy, xx = np.mgrid[:256, :256]
    ellipse = (((yy - 128) / 12.0) ** 2 + ((xx - 128) / 30.0) ** 2 <= 1).astype(np.float32)
    image[0] += ndi.gaussian_filter(800.0 * ellipse, 1.5)
    image[1] += ndi.gaussian_filter(300.0 * ((((yy - 128) / 24.0) ** 2 + ((xx - 128) / 50.0) ** 2) <= 1), 2.0)
    result = segment(image)
    assert result.count == 5
    assert result.nuclei[128, 105] == result.nuclei[128, 150] != 0


def test_a_dim_nucleus_beside_bright_ones_is_kept():
    # A nucleus at an eighth of its neighbours' brightness (out of focus, weakly stained): Otsu's
    # threshold of the field falls between the bright and the dim, so it needs the log threshold.
    image = _field(LONE + [((128, 128), 14, 100.0)])
    result = segment(image)
    assert result.nuclei[128, 128] != 0
    assert result.count == 5
    # ... and it is cut at its own edge, not at the bright ones' level: about its drawn area.
    area = int((result.nuclei == result.nuclei[128, 128]).sum())
    assert 0.6 * np.pi * 14**2 <= area <= 1.5 * np.pi * 14**2


def test_estimate_ignores_specks_and_clumps():
    image = _field(LONE + [((128, 110), 14, 800.0), ((128, 134), 14, 800.0)])
    rng = np.random.default_rng(1)
    for y, x in rng.integers(70, 180, size=(30, 2)):
        image[0, y, x] += 900.0  # single-pixel specks
    assert 24 <= estimate_nucleus_diameter(image[0]) <= 34


def test_point_matching_counts_merges_and_misses():
    nuclei = np.zeros((20, 20), np.int32)
    nuclei[0:10, 0:10] = 1  # holds two centres: a merge
    nuclei[12:18, 12:18] = 2  # holds one: matched
    nuclei[0:5, 15:20] = 3  # holds none: a false or split object
    points = np.array([[2, 2], [7, 7], [15, 15], [15, 2]], float)  # the last lies in no nucleus
    row = bench.point_matching(nuclei, points)
    assert row == {"reference": 4, "found": 3, "matched": 1, "merged": 2, "missed": 1, "precision": 1 / 3}


def _real_fields():
    if not (shared_dir() / "real-hpa").is_dir():
        pytest.skip("../shared/real-hpa is not beside the repository")
    return bench.load_reference(), shared_dir()


def test_reference_fixture_is_consistent():
    fields = json.loads(bench.REFERENCE.read_text())["fields"]
    assert len(fields) >= 12 and sum(len(f["points"]) for f in fields.values()) >= 600
    for name, field in fields.items():
        assert field["set"] in {"tuning", "held-out"}
        assert len(field["points"]) == field["candidates"] + field["added"] - field["removed"], name
        assert len({tuple(p) for p in field["points"]}) == len(field["points"]), name


@pytest.mark.slow
def test_real_fields_against_the_hand_checked_nuclei():
    """Held-out real fields (not looked at while tuning): at least 95% of the hand-checked nuclei
    matched (one found nucleus each); crowded ones counted within 10%. Measured 0.98 when frozen; the
    segmentation before this work matched 0.80."""
    fields, shared = _real_fields()
    held_out = {name: f for name, f in fields.items() if f["set"] == "held-out"}
    figures = bench.real_figures(segment, held_out, shared)
    assert figures["total"]["matched_fraction"] >= 0.95, figures["total"]
    assert figures["total"]["precision"] >= 0.9, figures["total"]
    for name in ("14b107e8", "4758031e", "207f9398", "1b3b40b4"):  # the crowded ones
        row = figures["fields"][name]
        assert abs(row["found"] - row["reference"]) <= 0.1 * row["reference"], (name, row)


def test_the_real_2048_field_finds_its_dim_nuclei():
    """The real 2048² field: 15 nuclei by eye; the two dim-nucleus cells on the left, missed before,
    are found, and the cells do not spill into the faint background."""
    fields, shared = _real_fields()
    field = fields["57639_1283_B2_10"]
    image = bench.field_image(field, shared)
    result = segment(image)
    row = bench.point_matching(result.nuclei, np.asarray(field["points"], float))
    assert row["matched"] == row["reference"] == 15
    assert 15 <= result.count <= 16  # 16: a nucleus cut by the top edge, too little of it for the reference
    # the dim-nucleus cell near the left edge (centre about y 1310, x 150) is a cell of a sane size
    cell = result.cells[1310, 150]
    assert cell != 0 and 0.5 * np.pi * 150**2 <= (result.cells == cell).sum() <= 4 * np.pi * 150**2
    assert 180 <= result.nucleus_diameter <= 280


@pytest.mark.slow
def test_bench_writes_its_tables(tmp_path):
    fields, shared = _real_fields()
    small = {name: fields[name] for name in ("458e8142", "57639_1283_B2_10")}
    reference = tmp_path / "points.json"
    reference.write_text(json.dumps({"fields": small}))
    out = tmp_path / "seg"
    assert bench.main(["--reference", str(reference), "--synthetic-samples", "2", "--rounds", "1",
                       "--out", str(out)]) == 0
    text = out.with_suffix(".md").read_text()
    assert "| 458e8142 | held-out | 41 |" in text and "Synthetic" in text and "2048" in text
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["versions"]["now"]["real"]["total"]["reference"] == 56
