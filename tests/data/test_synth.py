"""`protloc synth`: determinism, the labels file, label statistics, and that each class's protein
pattern sits where its compartment is."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from protloc.cli import main
from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL
from protloc.data.synth.compartments import COMPARTMENT_DRAWERS
from protloc.data.synth.dataset import CELLS_HEADER, draw_field, generate_dataset
from protloc.data.synth.field import PIXEL_SIZE_UM, make_field
from protloc.data.synth.labels import sample_labels
from protloc.data.synth.references import draw_references
from protloc.data.synth.render import render_sample
from protloc.errors import ProtlocError
from protloc.labels import HPA13

SIZE = 160


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_labels(folder: Path) -> list[dict[str, str]]:
    with open(folder / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    assert main(["synth", str(out), "--samples", "6", "--size", str(SIZE), "--seed", "3", "--workers", "2"]) == 0
    return out


def test_layout_and_labels_csv(small_set: Path) -> None:
    rows = read_labels(small_set)
    assert (small_set / "labels.csv").read_text().splitlines()[0] == "id,labels"
    assert [r["id"] for r in rows] == [f"synth-{i:05d}" for i in range(6)]
    for row in rows:
        indices = HPA13.parse(row["labels"])  # raises on an unknown class name
        assert 1 <= len(indices) <= 4
        assert row["labels"] == ";".join(HPA13.names(indices))
        for channel in CHANNELS:
            image = tifffile.imread(small_set / f"{row['id']}_{COLOUR_OF_CHANNEL[channel]}.tif")
            assert image.dtype == np.uint16 and image.shape == (SIZE, SIZE)
            assert image.std() > 0
    assert len(list(small_set.iterdir())) == 6 * 4 + 3  # labels.csv, cells.csv, masks/
    assert len(list((small_set / "masks").iterdir())) == 6 * 2


def test_tiffs_carry_no_varying_tags(small_set: Path) -> None:
    with tifffile.TiffFile(small_set / "synth-00000_green.tif") as tif:
        tags = {tag.name for tag in tif.pages[0].tags}
    assert not tags & {"DateTime", "Software", "ImageDescription"}


def test_same_seed_same_bytes_whatever_the_workers(small_set: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_dataset(again, 6, SIZE, 3, workers=1, progress=False)
    assert digest(again) == digest(small_set)


def test_different_seed_different_data(small_set: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate_dataset(other, 6, SIZE, 4, workers=1, progress=False)
    ours, theirs = digest(small_set), digest(other)
    assert ours.keys() == theirs.keys()
    assert all(ours[name] != theirs[name] for name in ours if name.endswith((".tif", "mask.png")))


def test_sample_does_not_depend_on_data_set_size(small_set: Path, tmp_path: Path) -> None:
    # sample i comes from its own generator: a shorter set repeats the first samples exactly
    fewer = tmp_path / "fewer"
    generate_dataset(fewer, 2, SIZE, 3, workers=1, progress=False)
    names = [p.relative_to(fewer) for p in fewer.rglob("*") if p.suffix in (".tif", ".png")]
    assert len(names) == 2 * 6
    for name in names:
        assert (fewer / name).read_bytes() == (small_set / name).read_bytes()
    assert read_cells(small_set)[:len(read_cells(fewer))] == read_cells(fewer)


def test_non_square(tmp_path: Path) -> None:
    out = tmp_path / "wide"
    assert main(["synth", str(out), "--samples", "2", "--height", "96", "--width", "176", "--seed", "0",
                 "--workers", "1"]) == 0
    for colour in COLOUR_OF_CHANNEL.values():
        image = tifffile.imread(out / f"synth-00001_{colour}.tif")
        assert image.dtype == np.uint16 and image.shape == (96, 176)


def test_label_statistics() -> None:
    draws = [sample_labels(np.random.default_rng([11, i])) for i in range(600)]
    multi = np.mean([len(d) > 1 for d in draws])
    assert 0.35 <= multi <= 0.65
    counts = np.zeros(len(HPA13))
    for d in draws:
        assert list(d) == sorted(set(d))
        counts[list(d)] += 1
    assert (counts > 0).all()
    # unbalanced the paper's way: the common classes clearly outnumber the rare ones
    count = dict(zip(HPA13.classes, counts))
    for common in ("Nucleus", "Cytosol", "Nucleoli"):
        for rare in ("Nuclear membrane", "Microtubules", "Actin filaments"):
            assert count[common] > 1.5 * count[rare]


# ---------------------------------------------------------------------------------------------------
# per-cell truth: masks and cells.csv agree with each other, with the image and with labels.csv


def read_cells(folder: Path) -> list[dict[str, str]]:
    with open(folder / "cells.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_cell_masks_and_cells_csv_agree(small_set: Path) -> None:
    from PIL import Image

    cells = read_cells(small_set)
    assert list(cells[0]) == CELLS_HEADER
    image_labels = {r["id"]: set(HPA13.parse(r["labels"])) for r in read_labels(small_set)}
    for sid, labels in image_labels.items():
        rows = [c for c in cells if c["image_id"] == sid]
        with Image.open(small_set / "masks" / f"{sid}_cellmask.png") as im:
            assert im.mode.startswith("I;16")
            mask = np.asarray(im)
        nuclei = np.asarray(Image.open(small_set / "masks" / f"{sid}_nucleimask.png"))
        assert mask.shape == nuclei.shape == (SIZE, SIZE)
        ids = np.unique(mask)
        # ids 1..N without gaps, one row per id, the area and border flag of each
        assert list(ids) == list(range(0 if (mask == 0).any() else 1, len(rows) + 1))
        assert [int(c["cell_id"]) for c in rows] == list(range(1, len(rows) + 1))
        border = set(np.unique(np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])))
        for c in rows:
            cid = int(c["cell_id"])
            assert int(c["area_px"]) == (mask == cid).sum()
            assert (c["touches_border"] == "yes") == (cid in border)
        # a nucleus lies inside its own cell
        assert (nuclei[nuclei > 0] == mask[nuclei > 0]).all() and (nuclei > 0).sum() > 0
        # each cell shows a subset of the field's classes, nothing when it does not express,
        # and together the cells show all of them
        shown = set()
        for c in rows:
            classes = set(HPA13.parse(c["labels"])) if c["labels"] else set()
            assert classes <= labels
            assert (c["expressing"] == "yes") == bool(classes)
            assert c["mitotic"] in ("yes", "no")
            shown |= classes
        assert shown == labels


def test_every_cell_is_one_piece_without_holes() -> None:
    from scipy import ndimage as ndi

    for index in range(4):
        _, field = draw_field(99, index, 320, 320)
        for cell in field.cells:
            mask = field.cell_mask == cell.cell_id
            assert ndi.label(mask)[1] == 1, (index, cell.cell_id)
            assert (ndi.binary_fill_holes(mask) & (field.cell_mask == 0)).sum() == 0, (index, cell.cell_id)


def test_cells_vary_expressing_mitotic_and_localisation() -> None:
    fields = [draw_field(21, i, 256, 256)[1] for i in range(24)]
    cells = [c for f in fields for c in f.cells]
    assert any(not c.expressing for c in cells) and sum(c.expressing for c in cells) > len(cells) / 2
    assert 0 < sum(c.mitotic for c in cells) < 0.15 * len(cells)
    multi = [f for f in fields if len({k for c in f.cells for k in c.classes}) > 1]
    assert any(len({c.classes for c in f.cells if c.expressing}) > 1 for f in multi)


def test_non_expressing_cells_are_dark_in_the_protein_channel() -> None:
    brighter = 0
    for index in range(12):
        _, field = draw_field(5, index, 256, 256)
        protein = field.image[3].astype(np.float64)
        on = [protein[field.cell_mask == c.cell_id].mean() for c in field.cells if c.expressing and c.area_px > 500]
        off = [protein[field.cell_mask == c.cell_id].mean() for c in field.cells if not c.expressing and c.area_px > 500]
        if on and off:
            brighter += min(on) > max(off) * 0.9 or np.median(on) > 1.2 * np.median(off)
    assert brighter >= 4


def test_mitotic_cells_have_condensed_bright_chromatin() -> None:
    ratios, contrasts = [], []
    for index in range(30):
        _, field = draw_field(8, index, 256, 256)
        nucleus = field.image[0].astype(np.float64)
        interphase = [nucleus[field.nuclei_mask == c.cell_id].mean() for c in field.cells
                      if not c.mitotic and not c.touches_border]
        for c in field.cells:
            if c.mitotic and not c.touches_border and interphase:
                plate = field.nuclei_mask == c.cell_id
                ys, xs = np.nonzero(plate)
                eig = np.linalg.eigvalsh(np.cov(np.vstack([ys, xs])))
                ratios.append(np.sqrt(eig[1] / max(eig[0], 1e-6)))
                contrasts.append(nucleus[plate].mean() / np.median(interphase))
    assert ratios, "no whole mitotic cell in 30 fields"
    assert np.median(ratios) > 2.0 and np.median(contrasts) > 1.2


def test_pixel_size_is_stated() -> None:
    assert 0.05 < PIXEL_SIZE_UM < 1.0


# ---------------------------------------------------------------------------------------------------
# morphology: the protein lies in the compartments its labels name


def noiseless(labels, seed=7, height=SIZE, width=SIZE):
    """Signal maps of one sample without camera noise: (field, references, protein, expression)."""
    rng = np.random.default_rng(seed)
    field = make_field(rng, height, width)
    refs = draw_references(rng, field)
    expr = np.ones(field.n)
    protein = sum(COMPARTMENT_DRAWERS[name](rng, field, refs, expr) for name in labels)
    return field, refs, protein


def rendered(labels, seed=5):
    image = render_sample(np.random.default_rng(seed), [HPA13.index(n) for n in labels], SIZE, SIZE)
    return image.astype(np.float64)


def corr(a, b) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_nucleus_protein_follows_nucleus_channel_unlike_plasma_membrane() -> None:
    for seed in (1, 2):
        nucleus = rendered(["Nucleus"], seed)
        membrane = rendered(["Plasma membrane"], seed)
        assert corr(nucleus[3], nucleus[0]) > 0.6
        assert corr(membrane[3], membrane[0]) < 0.2


def test_microtubule_and_er_proteins_follow_their_reference_channels() -> None:
    mt = rendered(["Microtubules"], 3)
    er = rendered(["Endoplasmic reticulum"], 3)
    assert corr(mt[3], mt[1]) > 0.5 and corr(mt[3], mt[1]) > corr(mt[3], mt[2])
    assert corr(er[3], er[2]) > 0.5 and corr(er[3], er[2]) > corr(er[3], er[1])


def test_nucleoli_are_sparse_spots_inside_nuclei() -> None:
    field, _, protein = noiseless(["Nucleoli"])
    nucleus = field.nucleus > 0.5
    assert protein[nucleus].sum() > 0.95 * protein.sum()
    bright = protein > 0.3 * protein.max()
    assert bright.mean() < 0.25 * nucleus.mean()


def test_cytosol_lies_outside_nuclei() -> None:
    field, _, protein = noiseless(["Cytosol"])
    nucleus = field.nucleus > 0.5
    assert protein[~nucleus].sum() > 0.9 * protein.sum()
    # diffuse: it fills most of the cytoplasm
    cytoplasm = (field.owner >= 0) & ~nucleus
    assert (protein[cytoplasm] > 0.3 * protein.max()).mean() > 0.8


def test_nuclear_membrane_is_a_rim_and_plasma_membrane_an_outline() -> None:
    field, _, rim = noiseless(["Nuclear membrane"])
    assert rim[np.abs(field.dn) < 2].mean() > 5 * rim[np.abs(field.dn) > 5].mean()
    field, _, outline = noiseless(["Plasma membrane"])
    inner = (field.owner >= 0) & (field.rc < 0.5)
    owner = field.owner
    edge = np.zeros(owner.shape, dtype=bool)
    edge[1:, :] |= owner[1:, :] != owner[:-1, :]
    edge[:, 1:] |= owner[:, 1:] != owner[:, :-1]
    # a bright line on the cells' outlines over a faint haze
    assert outline[edge & (owner >= 0)].mean() > 4 * outline[inner].mean()


def test_actin_has_a_cortical_rim_along_the_outline_and_fibres_inside() -> None:
    """The real-trained network reads actin from a bright cortical rim at the cell edge (issue 16);
    the stress fibres still cross the cell's interior."""
    field, _, actin = noiseless(["Actin filaments"], seed=8)
    owner = field.owner
    edge = np.zeros(owner.shape, dtype=bool)
    edge[1:, :] |= owner[1:, :] != owner[:-1, :]
    edge[:, 1:] |= owner[:, 1:] != owner[:, :-1]
    inner = (owner >= 0) & (field.rc < 0.7) & (field.dn > 2)
    assert actin[edge & (owner >= 0)].mean() > 2 * actin[inner].mean()
    # fibres: the interior is not uniform but streaked, bright lines over a dim haze
    assert np.percentile(actin[inner], 99) > 5 * np.median(actin[inner])


def test_centrosome_golgi_and_vesicles_are_dots_outside_the_nucleus() -> None:
    areas = {}
    for name in ("Centrosome", "Golgi apparatus", "Vesicles", "Mitochondria"):
        field, _, protein = noiseless([name])
        assert protein[field.dn < -2].sum() < 0.05 * protein.sum(), name
        areas[name] = (protein > 0.25 * protein.max()).sum()
    # one or two dots per cell, a cluster per cell, many dots per cell
    assert areas["Centrosome"] < areas["Golgi apparatus"] < areas["Vesicles"]


def test_filaments_differ_in_orientation() -> None:
    """Actin fibres within a cell run parallel; microtubules radiate in all directions (measured
    inside the cell, away from actin's cortical rim along the outline)."""

    def orientation_coherence(image, mask):
        gy, gx = np.gradient(image)
        jxx, jyy, jxy = (gx * gx)[mask].sum(), (gy * gy)[mask].sum(), (gx * gy)[mask].sum()
        return np.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy)

    field, _, actin = noiseless(["Actin filaments"], seed=8)
    _, _, tubules = noiseless(["Microtubules"], seed=8)
    cells = [i for i in range(field.n) if (field.owner == i).sum() > 2000]
    assert cells
    inner = field.rc < 0.8
    actin_coh = np.mean([orientation_coherence(actin, (field.owner == i) & inner) for i in cells])
    tubule_coh = np.mean([orientation_coherence(tubules, (field.owner == i) & inner) for i in cells])
    assert actin_coh > 0.5 > tubule_coh


def test_every_class_renders_a_distinct_protein_image() -> None:
    images = {name: rendered([name], 9)[3] for name in HPA13.classes}
    for name, image in images.items():
        assert image.dtype == np.float64 and image.max() > image.mean() * 2, name
    # the reference channels are the same for every label (same seed): only the protein differs
    base = rendered(["Nucleus"], 9)
    other = rendered(["Vesicles"], 9)
    assert corr(base[0], other[0]) > 0.95


# ---------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("argv, message", [
    (["--samples", "0"], "--samples"),
    (["--size", "8"], "height"),
    (["--width", "-3"], "width"),
    (["--seed", "-1"], "--seed"),
    (["--workers", "0"], "--workers"),
])
def test_bad_options_are_one_line_errors(tmp_path: Path, capsys, argv, message) -> None:
    assert main(["synth", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("protloc: error:") and message in err and "\n" not in err


def test_refuses_a_non_empty_folder_unless_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "set"
    generate_dataset(out, 2, 64, 0, workers=1, progress=False)
    assert main(["synth", str(out), "--samples", "1", "--size", "64"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["synth", str(out), "--samples", "1", "--size", "64", "--overwrite", "--workers", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cells.csv", "labels.csv", "masks"] + [
        f"synth-00000_{c}.tif" for c in sorted(COLOUR_OF_CHANNEL.values())]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["synth-00000_cellmask.png",
                                                                 "synth-00000_nucleimask.png"]
    # --overwrite never deletes files that are not a synthetic set
    (out / "notes.txt").write_text("mine")
    assert main(["synth", str(out), "--samples", "1", "--size", "64", "--overwrite"]) == 2
    assert (out / "notes.txt").exists()
    (out / "notes.txt").unlink()
    (out / "masks" / "mine.png").write_bytes(b"x")
    assert main(["synth", str(out), "--samples", "1", "--size", "64", "--overwrite"]) == 2
    assert (out / "masks" / "mine.png").exists() and (out / "cells.csv").exists()


def test_unknown_class_for_render_sample() -> None:
    with pytest.raises(ProtlocError):
        render_sample(0, ["Ribosomes"], 64, 64)
