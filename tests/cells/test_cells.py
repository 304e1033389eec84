"""Single cells (protloc.cells): per-cell features, segmentation, masks, the command and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import protloc
from protloc.model_file import save_model_file
from protloc.cli import main
from protloc.data.synth.dataset import generate_dataset
from protloc.labels import HPA13
from protloc.inference import normalize
from protloc.models import create_model

# Under CI=true conftest turns these skips into failures: CI installs the dev extra, which has both.
anndata = pytest.importorskip("anndata")
skimage = pytest.importorskip("skimage")

from protloc.cells.evaluate import match_cells, per_cell_map  # noqa: E402
from protloc.cells.features import cell_crop, coverage, masked_averages, predict_cells  # noqa: E402
from protloc.inference.gapnet_pl_fast import block_maps  # noqa: E402
from protloc.cells.masks import read_label_image  # noqa: E402
from protloc.data.label_images import write_label_image  # noqa: E402
from protloc.cells.pipeline import analyse_image  # noqa: E402
from protloc.cells.segmentation import segment  # noqa: E402


@pytest.fixture(scope="module")
def predictor(model_file):
    return protloc.load_model(model_file)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, samples=3, size=192, seed=5, workers=1)
    return out


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((4, height, width), dtype=np.float32) * 1000


@pytest.mark.parametrize("shape", [(128, 128), (101, 157)])
def test_whole_image_mask_reproduces_image_probabilities(predictor, shape):
    image = _image(*shape)
    cells = predict_cells(predictor, image, np.ones(shape, np.int32))
    image_level = predictor.predict_proba(image, whole_image=True)
    assert cells.method == "masked-features" and cells.embeddings.shape == (1, 224)
    np.testing.assert_allclose(cells.probabilities[0], image_level, atol=1e-5)
    np.testing.assert_allclose(cells.image_probabilities, image_level, atol=1e-5)
    np.testing.assert_allclose(cells.embeddings[0], cells.image_embedding, rtol=1e-5, atol=1e-6)


def test_block_maps_equal_the_networks_blocks(predictor):
    raw = torch.from_numpy(_image(96, 80, seed=3))[None]
    with torch.no_grad():
        ours = block_maps(predictor.network.eval(), raw)
        reference = predictor.network.blocks(normalize(raw))
    for mine, theirs in zip(ours, reference):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine.contiguous(), theirs, atol=1e-4, rtol=1e-4)


def test_cell_embedding_is_the_mean_of_the_maps_over_the_cell(predictor):
    """A cell aligned to the 16-px grid: its features are plain means of each map over its footprint."""
    image = _image(128, 128, seed=4)
    labels = np.zeros((128, 128), np.int32)
    labels[16:64, 32:96] = 7  # gaps in ids are allowed: the cell keeps id 7
    labels[80:128, 0:48] = 3
    result = predict_cells(predictor, image, labels)
    assert result.cell_ids.tolist() == [3, 7]
    raw = torch.from_numpy(image)[None]
    with torch.no_grad():
        b1, b2, b3 = predictor.network.eval().blocks(normalize(raw))
    expected = torch.cat([b1[0, :, 4:16, 8:24].mean((1, 2)), b2[0, :, 1:4, 2:6].mean((1, 2)),
                          b3[0, :, 1:4, 2:6].mean((1, 2))]).numpy()
    np.testing.assert_allclose(result.embeddings[1], expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(result.probabilities[0], result.probabilities[1])


def test_cell_probabilities_read_the_cell_mixed_with_the_background(predictor):
    image = _image(96, 96, seed=8)
    labels = np.zeros((96, 96), np.int32)
    labels[8:40, 8:40] = 1
    labels[48:90, 40:90] = 2
    result = predict_cells(predictor, image, labels)
    raw = torch.from_numpy(image)[None]
    with torch.no_grad():
        maps = block_maps(predictor.network.eval(), raw)
        background = masked_averages(maps, (labels == 0).astype(np.int32), np.array([1]))
        share = float((labels == 0).mean())
        mixed = (1 - share) * torch.from_numpy(result.embeddings) + share * torch.from_numpy(background)
        expected = torch.sigmoid(predictor.network.head(mixed)).numpy()
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    combined = result.with_image_prior()
    np.testing.assert_allclose(combined, np.sqrt(result.probabilities * result.image_probabilities), rtol=1e-6)


def test_coverage_is_fractional_at_cut_edges():
    labels = np.zeros((6, 6), np.int32)
    labels[0:2, 0:2] = 1  # a quarter of the first 4x4 grid cell
    labels[4:6, 4:6] = 2  # the whole (cut) 2x2 corner grid cell
    assert coverage(labels, 1, (slice(0, 2), slice(0, 2)), 4) == (0, 0, pytest.approx(np.array([[0.25]])))
    gy0, gx0, weights = coverage(labels, 2, (slice(4, 6), slice(4, 6)), 4)
    assert (gy0, gx0) == (1, 1)
    np.testing.assert_allclose(weights, [[1.0]])


def test_one_pixel_cell_gets_a_defined_answer(predictor):
    image = _image(64, 64, seed=5)
    labels = np.zeros((64, 64), np.int32)
    labels[10, 20] = 1
    labels[30:64, 30:60] = 2
    result = analyse_image(predictor, image, "x", cells=labels)
    assert result.areas.tolist() == [1, 34 * 30]
    np.testing.assert_allclose(result.centroids, [[10.0, 20.0], [46.5, 44.5]])
    assert np.isfinite(result.predictions.probabilities).all()
    assert result.border.tolist() == [False, True]


def test_no_cells_gives_zero_rows(predictor):
    flat = np.full((4, 96, 96), 100.0, np.float32)
    result = analyse_image(predictor, flat, "flat")
    assert result.cells.max() == 0 and len(result.predictions.cell_ids) == 0
    assert result.predictions.embeddings.shape == (0, 224)
    assert result.predictions.image_probabilities.shape == (13,)


def test_other_networks_predict_masked_crops(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "mcnn.pt"
    save_model_file(path, create_model("m-cnn", input_size=128), model_name="m-cnn", classes=HPA13.classes,
                    label_set="hpa13", crop_size=128, thresholds=[0.5] * 13, model_options={"input_size": 128})
    predictor = protloc.load_model(path)
    image = _image(64, 80, seed=6)
    labels = np.zeros((64, 80), np.int32)
    labels[5:30, 5:40] = 1
    labels[35:60, 40:75] = 2
    result = predict_cells(predictor, image, labels)
    assert result.method == "masked-crops" and result.probabilities.shape == (2, 13)
    changed = image.copy()
    changed[:, (labels != 1) & (labels != 0)] = 0.0  # other cells' pixels do not reach cell 1's crop
    again = predict_cells(predictor, changed, labels)
    np.testing.assert_allclose(again.probabilities[0], result.probabilities[0], atol=1e-6)
    assert cell_crop(image, labels, 1, 128).shape == (4, 128, 128)


def test_segmentation_finds_the_synthetic_cells():
    from protloc.data.synth.dataset import draw_field

    ious, found, drawn = [], 0, 0
    for index in range(3):
        _, field = draw_field(11, index, 320, 320)
        segmentation = segment(field.image.astype(np.float32))
        matching = match_cells(field.cell_mask.astype(np.int32), segmentation.cells)
        ious.extend(matching.ious)
        found += matching.found_count
        drawn += matching.true_count
        assert segmentation.border().any()  # fields are cut by their edges: border cells are kept
    assert 0.8 * drawn <= found <= 1.2 * drawn
    assert len(ious) >= 0.75 * drawn and np.mean(ious) > 0.7


def test_segmentation_of_the_real_kaggle_field():
    from protloc.data.formats import discover, read

    from tests.conftest import shared_dir

    folder = shared_dir() / "real-hpa" / "kaggle-png"
    if not folder.is_dir():
        pytest.skip("../shared/real-hpa is not beside the repository")
    image = read(discover([folder])[0]).image
    segmentation = segment(image)
    # By eye (README): 13 cells found; 2 cells with very dim nuclei on the left are missed.
    assert 8 <= segmentation.count <= 18
    assert 30 <= segmentation.nucleus_diameter <= 80


def test_match_cells_and_map():
    truth = np.zeros((10, 10), np.int32)
    truth[:5] = 1
    truth[5:] = 2
    found = np.zeros((10, 10), np.int32)
    found[:4] = 9
    matching = match_cells(truth, found)
    assert matching.true_ids.tolist() == [1] and matching.found_ids.tolist() == [9]
    assert matching.ious[0] == pytest.approx(0.8)
    value, per_class = per_cell_map(np.array([[1, 0], [0, 0], [1, 1]]), np.array([[.9, .1], [.2, .8], [.8, .9]]),
                                    ["a", "b"])
    assert per_class == {"a": 1.0, "b": 1.0} and value == 1.0


def test_label_image_round_trip_and_bad_masks(tmp_path):
    labels = np.zeros((20, 30), np.int32)
    labels[2:5, 3:9] = 300
    path = write_label_image(tmp_path / "a_cellmask.png", labels)
    np.testing.assert_array_equal(read_label_image(path), labels)
    from PIL import Image

    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(protloc.errors.DataError, match="colour image"):
        read_label_image(tmp_path / "rgb.png")


@pytest.mark.slow
def test_cells_command_writes_table_anndata_masks_and_overlays(model_file, data_dir, tmp_path, capsys):
    out = tmp_path / "cells.parquet"
    code = main(["cells", str(data_dir), "--model", str(model_file), "--out", str(out), "--maps",
                 str(tmp_path / "maps"), "--embeddings"])
    assert code == 0
    import pandas as pd

    table = pd.read_parquet(out)
    assert set(table["image_id"]) == {"synth-00000", "synth-00001", "synth-00002"}
    assert {"cell_id", "centroid_y", "centroid_x", "area", "border", "Nucleus", "predicted", "top_class"} <= set(table)
    assert table["border"].any() and (~table["border"]).any()
    adata = anndata.read_h5ad(tmp_path / "cells.h5ad")
    assert adata.shape == (len(table), 224)
    assert adata.obs["cell_id"].tolist() == table["cell_id"].tolist()
    images = anndata.read_h5ad(tmp_path / "cells.images.h5ad")
    assert images.shape == (3, 224)
    overlays = sorted((tmp_path / "maps").glob("*_cells.png"))
    assert len(overlays) == 3
    # the written label images are the --masks layout: feeding them back gives the same cells
    again = tmp_path / "again.csv"
    assert main(["cells", str(data_dir), "--model", str(model_file), "--out", str(again),
                 "--masks", str(tmp_path / "cells-masks")]) == 0
    second = pd.read_csv(again)
    assert second["cell_id"].tolist() == table["cell_id"].tolist()
    np.testing.assert_allclose(second["Nucleus"], table["Nucleus"], atol=1e-5)
    assert {"expression"} <= set(table) and adata.uns["scoring"] == "combined"
    own, prior = tmp_path / "own.csv", tmp_path / "prior.csv"
    for path, flags in ((own, ["--per-cell", "own"]), (prior, ["--image-prior"])):
        assert main(["cells", str(data_dir), "--model", str(model_file), "--out", str(path), *flags,
                     "--masks", str(tmp_path / "cells-masks")]) == 0
    image_level = images.obs.set_index("image_id")["Nucleus"]
    expected = np.sqrt(pd.read_csv(own)["Nucleus"].to_numpy() * image_level.loc[table["image_id"]].to_numpy())
    np.testing.assert_allclose(pd.read_csv(prior)["Nucleus"], expected, rtol=1e-4, atol=1e-6)


def test_cells_command_bad_input(model_file, data_dir, tmp_path, capsys):
    assert main(["cells", str(data_dir), "--model", str(model_file), "--out", str(tmp_path / "x.txt")]) == 2
    assert "use .csv or .parquet" in capsys.readouterr().err
    assert main(["cells", str(data_dir), "--model", str(model_file), "--out", str(tmp_path / "x.csv"),
                 "--masks", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    masks = tmp_path / "masks"
    write_label_image(masks / "synth-00000_cellmask.png", np.ones((50, 50), np.int32))  # wrong size
    gappy = np.zeros((192, 192), np.int32)
    gappy[10:60, 10:60], gappy[100:101, 100:101] = 4, 9  # ids 4 and 9 only; cell 9 is one pixel
    write_label_image(masks / "synth-00001_cellmask.png", gappy)
    write_label_image(masks / "synth-00002_cellmask.png", np.zeros((192, 192), np.int32))  # no cells
    out = tmp_path / "masked.csv"
    assert main(["cells", str(data_dir), "--model", str(model_file), "--out", str(out), "--masks", str(masks)]) == 0
    captured = capsys.readouterr()
    assert "synth-00000_cellmask.png is 50x50 but the image is 192x192" in captured.err
    assert "synth-00002: no cells found" in captured.err
    assert "Traceback" not in captured.err
    import pandas as pd

    table = pd.read_csv(out)
    assert table["cell_id"].tolist() == [4, 9] and table["area"].tolist() == [2500, 1]
    assert main(["cells", str(data_dir), "--model", str(model_file), "--out", str(out),
                 "--nucleus-diameter", "-3"]) == 2
    assert "must be positive" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_cells_section_reports_the_ratio(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--sections", "cells", "--out", str(out)]) == 0
    import json

    section = json.loads(out.read_text())["sections"]["cells"]
    rows = {row["variant"]: row for row in section["rows"]}
    assert rows["image-level prediction (baseline)"]["ratio"] == pytest.approx(1.0)
    assert rows["cells: segmentation + per-cell prediction"]["ratio"] > 0
    assert "Single cells" in capsys.readouterr().out
