"""Single cells: the default per-cell answer, the input's pixel size, `predict --cells`, OME masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import protloc
from protloc.model_file import save_model_file
from protloc.cli import main
from protloc.labels import HPA13
from protloc.models import create_model

# Under CI=true conftest turns these skips into failures: CI installs the dev extra, which has them.
anndata = pytest.importorskip("anndata")
skimage = pytest.importorskip("skimage")
tifffile = pytest.importorskip("tifffile")

from protloc.cells import scoring  # noqa: E402
from protloc.cells.features import coverage, coverages, labels_on_grid, predict_cells  # noqa: E402
from protloc.data.label_images import write_label_image  # noqa: E402
from protloc.cells.pipeline import analyse_image  # noqa: E402


def _model(path: Path, pixel_size_um: float | None = None) -> Path:
    torch.manual_seed(0)
    save_model_file(path, create_model("gapnet-pl"), model_name="gapnet-pl", classes=HPA13.classes,
                    label_set="hpa13", crop_size=64, thresholds=[0.5] * 13, pixel_size_um=pixel_size_um,
                    pixel_size_source="test" if pixel_size_um else None)
    return path


@pytest.fixture(scope="module")
def predictor(model_file):
    return protloc.load_model(model_file)


def _field(seed: int = 0, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Three cells on empty slide: cell 1 expresses strongly, cell 5 weakly, cell 9 not at all."""
    rng = np.random.default_rng(seed)
    image = (rng.random((4, size, size), dtype=np.float32) * 50 + 100).astype(np.float32)
    labels = np.zeros((size, size), np.int32)
    labels[8:40, 8:40], labels[48:88, 8:40], labels[20:80, 52:88] = 1, 5, 9
    image[:3, labels > 0] += 400 * rng.random((3, int((labels > 0).sum())), dtype=np.float32)
    image[3, labels == 1] += 1000
    image[3, labels == 5] += 300
    return image, labels


@pytest.mark.slow
def test_relative_expression_and_the_gate():
    image, labels = _field()
    ids = np.array([1, 5, 9])
    expression = scoring.relative_expression(image[3], labels, ids)
    np.testing.assert_allclose(expression, [1.0, 0.3, 0.0], atol=0.02)
    own = np.full((3, 2), 0.8, np.float32)
    combined = scoring.combine(own, np.array([0.2, 0.6]), expression, ["Nucleus", "Microtubules"],
                               expression_full=0.5, weights=np.array([1.0, 0.0]))
    # gate: 1 for the strong cell, 0.3 / 0.5 for the weak one, about 0 for the one without protein
    gate = np.minimum(1.0, expression / 0.5)
    np.testing.assert_allclose(combined[:, 0], 0.8 * gate, rtol=1e-5)
    np.testing.assert_allclose(combined[:, 1], 0.6 * gate, rtol=1e-5)
    assert combined[2].max() < 0.01 < combined[1].min()
    # no protein above the background anywhere: nothing to tell the cells apart by, no gate
    flat = np.full((32, 32), 7.0)
    assert scoring.relative_expression(flat, np.ones((32, 32), np.int32), np.array([1])).tolist() == [1.0]


def test_scorings_of_the_predictions(predictor):
    image, labels = _field(1)
    cells = predict_cells(predictor, image, labels)
    classes = predictor.classes
    np.testing.assert_array_equal(cells.scores(classes, "own"), cells.probabilities)
    np.testing.assert_allclose(cells.scores(classes, "image"), np.tile(cells.image_probabilities, (3, 1)))
    np.testing.assert_allclose(cells.scores(classes, "geometric-mean"), cells.with_image_prior(), rtol=1e-6)
    default = cells.scores(classes)
    weights = scoring.own_weights(classes)
    gate = (np.minimum(1, cells.expression / scoring.EXPRESSION_FULL)
            * scoring.signal_gate(cells.signal_to_noise))[:, None]  # relative and absolute ("no signal")
    expected = gate * cells.probabilities**weights * cells.image_probabilities[None] ** (1 - weights)
    np.testing.assert_allclose(default, expected, rtol=1e-5, atol=1e-7)
    assert default[2].max() < 0.02 * default[0].max()  # the cell without protein says (almost) nothing
    with pytest.raises(protloc.errors.ProtlocError, match="unknown per-cell answer"):
        cells.scores(classes, "best")


def test_coverages_of_both_strides_equal_the_per_stride_coverage():
    labels = np.zeros((70, 90), np.int32)
    labels[3:41, 5:77] = 2
    labels[50:70, 60:90] = 3  # touches the cut bottom-right edge
    from scipy import ndimage as ndi

    boxes = ndi.find_objects(labels)
    for cell_id in (2, 3):
        both = coverages(labels, cell_id, boxes[cell_id - 1])
        for stride in (4, 16):
            gy0, gx0, weights = coverage(labels, cell_id, boxes[cell_id - 1], stride)
            gy, gx, mine = both[stride]
            dense_ref = np.zeros((-(-70 // stride), -(-90 // stride)))
            dense_ref[gy0 : gy0 + weights.shape[0], gx0 : gx0 + weights.shape[1]] = weights
            dense = np.zeros_like(dense_ref)
            dense[gy : gy + mine.shape[0], gx : gx + mine.shape[1]] = mine
            np.testing.assert_allclose(dense, dense_ref, atol=1e-6)


def test_pixel_size_rescales_to_the_model_and_keeps_the_input_grid(tmp_path):
    """The same field at half the pixel size (each pixel 2x2): rescaled to the model's 0.5 µm/px it is
    the original again, so the cells' answers equal the original's; masks and geometry stay on the
    input's finer grid."""
    predictor = protloc.load_model(_model(tmp_path / "half-um.pt", pixel_size_um=0.5))
    image, labels = _field(2)
    labels[60, 60] = 0
    labels[90, 90] = 12  # a one-pixel cell: 2x2 at the finer grid, one pixel again on the model's
    fine_image = np.kron(image, np.ones((1, 2, 2), np.float32))
    fine_labels = np.kron(labels, np.ones((2, 2), np.int32))
    original = analyse_image(predictor, image, cells=labels, pixel_size_um=0.5)
    fine = analyse_image(predictor, fine_image, cells=fine_labels, pixel_size_um=0.25)
    assert fine.predictions.scale == pytest.approx(0.5) and original.predictions.scale == 1.0
    np.testing.assert_allclose(fine.predictions.probabilities, original.predictions.probabilities, atol=1e-5)
    np.testing.assert_allclose(fine.predictions.image_probabilities, original.predictions.image_probabilities,
                               atol=1e-5)
    assert fine.cells is fine_labels
    np.testing.assert_array_equal(fine.areas, 4 * original.areas)
    np.testing.assert_allclose(fine.centroids, 2 * original.centroids + 0.5)
    # unknown pixel size: used as it is, so the finer field gives other answers
    as_is = analyse_image(predictor, fine_image, cells=fine_labels)
    assert as_is.predictions.scale == 1.0
    assert not np.allclose(as_is.predictions.probabilities, original.predictions.probabilities, atol=1e-3)


def test_labels_on_a_coarser_grid_keep_every_cell():
    labels = np.zeros((40, 40), np.int32)
    labels[0:20, 0:40], labels[30, 31] = 1, 7  # cell 7: one pixel, lost by plain nearest-neighbour
    coarse = labels_on_grid(labels, (10, 10), np.array([1, 7]))
    assert set(np.unique(coarse)) == {0, 1, 7} and (coarse == 7).sum() == 1
    assert (coarse[:5] == 1).all()


def _write_channels(folder: Path, image: np.ndarray, sample_id: str, resolution_um: float | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for channel, colour in enumerate(("blue", "red", "yellow", "green")):
        kwargs = {}
        if resolution_um is not None:
            kwargs = {"resolution": (1e4 / resolution_um, 1e4 / resolution_um), "resolutionunit": 3}
        tifffile.imwrite(folder / f"{sample_id}_{colour}.tif", image[channel].astype(np.uint16), **kwargs)


def test_predict_cells_is_the_cells_command(model_file, tmp_path, capsys):
    import pandas as pd

    image, labels = _field(3)
    _write_channels(tmp_path / "data", image, "f1")
    write_label_image(tmp_path / "masks" / "f1_cellmask.png", labels)
    common = ["--model", str(model_file), "--masks", str(tmp_path / "masks")]
    assert main(["cells", str(tmp_path / "data"), *common, "--out", str(tmp_path / "a.csv")]) == 0
    assert main(["predict", str(tmp_path / "data"), "--cells", *common, "--out", str(tmp_path / "b.parquet"),
                 "--maps", str(tmp_path / "maps")]) == 0
    first, second = pd.read_csv(tmp_path / "a.csv"), pd.read_parquet(tmp_path / "b.parquet")
    assert second["cell_id"].tolist() == [1, 5, 9] == first["cell_id"].tolist()
    np.testing.assert_allclose(second[list(HPA13.classes)], first[list(HPA13.classes)], atol=1e-5)
    assert second.loc[2, "expression"] < 0.01 and second.loc[2, "predicted"] in ("", None)  # no protein, no class
    assert anndata.read_h5ad(tmp_path / "b.h5ad").uns["scoring"] == "combined"
    assert (tmp_path / "maps" / "f1_cells.png").is_file()
    # the other answers stay measurable
    assert main(["predict", str(tmp_path / "data"), "--cells", *common, "--per-cell", "image",
                 "--out", str(tmp_path / "c.csv")]) == 0
    baseline = pd.read_csv(tmp_path / "c.csv")
    assert np.allclose(baseline[list(HPA13.classes)].to_numpy(), baseline[list(HPA13.classes)].to_numpy()[0])
    capsys.readouterr()
    # per-cell options need --cells; image-level ones are refused with it
    assert main(["predict", str(tmp_path / "data"), *common, "--out", str(tmp_path / "d.csv")]) == 2
    assert "--masks is a per-cell option: add --cells" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "data"), "--cells", "--tta", *common, "--out", str(tmp_path / "e.csv")]) == 2
    assert "--tta is an image-level option" in capsys.readouterr().err
    assert main(["cells", str(tmp_path / "data"), *common, "--per-cell", "own", "--image-prior",
                 "--out", str(tmp_path / "f.csv")]) == 2
    err = capsys.readouterr().err
    assert "contradicts" in err and "Traceback" not in err
    assert not (tmp_path / "d.csv").exists() and not (tmp_path / "e.csv").exists()


def test_cells_command_reads_the_pixel_size_of_the_files(tmp_path, capsys):
    import pandas as pd

    model = _model(tmp_path / "half-um.pt", pixel_size_um=0.5)
    image, labels = _field(4)
    _write_channels(tmp_path / "coarse", image, "f1", resolution_um=0.5)
    _write_channels(tmp_path / "fine", np.kron(image, np.ones((1, 2, 2), np.float32)), "f1", resolution_um=0.25)
    write_label_image(tmp_path / "m1" / "f1_cellmask.png", labels)
    write_label_image(tmp_path / "m2" / "f1_cellmask.png", np.kron(labels, np.ones((2, 2), np.int32)))
    assert main(["cells", str(tmp_path / "coarse"), "--model", str(model), "--masks", str(tmp_path / "m1"),
                 "--per-cell", "own", "--out", str(tmp_path / "coarse.csv")]) == 0
    assert main(["cells", str(tmp_path / "fine"), "--model", str(model), "--masks", str(tmp_path / "m2"),
                 "--per-cell", "own", "--out", str(tmp_path / "fine.csv")]) == 0
    assert "inputs rescaled 0.5x before the network" in capsys.readouterr().err
    coarse, fine = pd.read_csv(tmp_path / "coarse.csv"), pd.read_csv(tmp_path / "fine.csv")
    np.testing.assert_allclose(fine[list(HPA13.classes)], coarse[list(HPA13.classes)], atol=1e-4)
    assert fine["area"].tolist() == [4 * a for a in coarse["area"]]
    np.testing.assert_allclose(fine["expression"], coarse["expression"], atol=0.01)
    # --pixel-size overrides the files: told 0.5, the fine field goes in unscaled and answers differently
    assert main(["cells", str(tmp_path / "fine"), "--model", str(model), "--masks", str(tmp_path / "m2"),
                 "--pixel-size", "0.5", "--per-cell", "own", "--out", str(tmp_path / "told.csv")]) == 0
    told = pd.read_csv(tmp_path / "told.csv")
    assert not np.allclose(told[list(HPA13.classes)], coarse[list(HPA13.classes)], atol=1e-3)
    assert main(["cells", str(tmp_path / "fine"), "--model", str(model), "--pixel-size", "-1",
                 "--out", str(tmp_path / "bad.csv")]) == 2
    assert "--pixel-size must be between" in capsys.readouterr().err


def _omero(names) -> dict:
    window = {"start": 0, "end": 4000, "min": 0, "max": 65535}
    return {"channels": [{"label": n, "color": "FFFFFF", "window": window} for n in names]}


def test_masks_from_ome_zarr_labels_and_next_to_ome_tiff(model_file, tmp_path, capsys):
    import pandas as pd
    import zarr
    from ome_zarr import writer as ome_writer

    from protloc.data.formats.ome_zarr import write_label_image as write_ngff_labels

    image, labels = _field(5)
    names = ["DAPI", "Tubulin", "Calreticulin", "GFP"]
    store = tmp_path / "field.ome.zarr"
    root = zarr.open_group(str(store), mode="w")
    ome_writer.write_image(image.astype(np.uint16), root, axes="cyx", scale_factors=(),
                           omero=_omero(names))
    capsys.readouterr()
    assert main(["cells", str(store), "--model", str(model_file), "--masks", str(store),
                 "--out", str(tmp_path / "none.csv")]) == 2
    assert "no image of the store has NGFF labels" in capsys.readouterr().err
    write_ngff_labels(store, "", "cells", labels.astype(np.uint16))
    nuclei = np.where(labels > 0, labels, 0).astype(np.uint16)
    nuclei[:, ::2] = 0
    write_ngff_labels(store, "", "nuclei", nuclei)
    assert main(["cells", str(store), "--model", str(model_file), "--masks", str(store),
                 "--out", str(tmp_path / "zarr.csv")]) == 0
    table = pd.read_csv(tmp_path / "zarr.csv")
    assert table["cell_id"].tolist() == [1, 5, 9]
    assert table["area"].tolist() == [int((labels == i).sum()) for i in (1, 5, 9)]
    assert table["nucleus_area"].tolist() == [float(((labels == i) & (nuclei > 0)).sum()) for i in (1, 5, 9)]
    # the same masks, as a TIFF label image next to an OME-TIFF of the field
    ome_tiff = tmp_path / "tiffs" / "field.ome.tif"
    ome_tiff.parent.mkdir()
    tifffile.imwrite(ome_tiff, image.astype(np.uint16), ome=True, metadata={"axes": "CYX", "Channel": {"Name": names}})
    tifffile.imwrite(ome_tiff.parent / "field_cellmask.tif", labels.astype(np.uint16))
    assert main(["cells", str(ome_tiff), "--model", str(model_file), "--masks", str(ome_tiff.parent),
                 "--out", str(tmp_path / "tiff.csv")]) == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "tiff.csv")[list(HPA13.classes)],
                               table[list(HPA13.classes)], atol=1e-5)
    # the folder itself as the input: its label image lies beside the OME-TIFF and is no sample
    assert main(["cells", str(ome_tiff.parent), "--model", str(model_file), "--masks", str(ome_tiff.parent),
                 "--out", str(tmp_path / "folder.csv")]) == 0
    from_folder = pd.read_csv(tmp_path / "folder.csv")
    assert set(from_folder["image_id"]) == {"field"}
    np.testing.assert_allclose(from_folder[list(HPA13.classes)], table[list(HPA13.classes)], atol=1e-5)
    # wrong-size labels in the store: that image is skipped with its reason, nothing else written
    small = tmp_path / "small.ome.zarr"
    small_root = zarr.open_group(str(small), mode="w")
    ome_writer.write_image(image.astype(np.uint16), small_root, axes="cyx", scale_factors=(),
                           omero=_omero(names))
    ome_writer.write_labels(np.ones((48, 48), np.uint16), small_root, name="cells", axes="yx", scale_factors=())
    capsys.readouterr()
    assert main(["cells", str(store), "--model", str(model_file), "--masks", str(small),
                 "--out", str(tmp_path / "small.csv")]) == 2
    err = capsys.readouterr().err
    assert "is 48x48 but the image is 96x96" in err and "Traceback" not in err
    assert not (tmp_path / "small.csv").exists()
