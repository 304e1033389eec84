"""Hash splits (determinism, stability, proportions) and crops / patches / normalisation."""

import math
import random

import numpy as np
import pytest
import torch

from protloc.data.index import DatasetIndex, SampleEntry
from protloc.data.patches import extract_patches, patch_grid, patch_starts, random_crop
from protloc.inference.normalization import normalize
from protloc.data.splits import (
    assign_split,
    load_split_file,
    load_splits,
    make_splits,
    save_splits,
    single_label_ids,
)
from protloc.errors import ProtlocError
from protloc.labels import HPA13

IDS = [f"sample-{i:05d}" for i in range(2000)]


def index_of(ids, labels=None):
    labels = labels or {}
    samples = [SampleEntry(i, {"npz": f"{i}.npz"}, labels.get(i, (0,)), 8, 8) for i in ids]
    return DatasetIndex(root="/nowhere", format="npz", label_set=HPA13, samples=samples, excluded=[])


# ---- splits ---------------------------------------------------------------------------------------


def test_split_does_not_depend_on_listing_order():
    shuffled = IDS[:]
    random.Random(1).shuffle(shuffled)
    assert make_splits(index_of(IDS), seed=7) == make_splits(index_of(shuffled), seed=7)


def test_adding_samples_never_moves_existing_ones():
    before = make_splits(index_of(IDS[:1500]), seed=0)
    after = make_splits(index_of(IDS + [f"new-{i}" for i in range(500)]), seed=0)
    for name in before:
        assert set(before[name]) <= set(after[name])


def test_proportions_near_80_10_10_and_seed_changes_assignment():
    splits = make_splits(index_of(IDS), seed=0)
    sizes = {name: len(ids) for name, ids in splits.items()}
    assert sum(sizes.values()) == 2000
    # binomial standard deviation for 2000 draws at p = 0.1 is about 13; allow ~4 sigma
    assert abs(sizes["train"] - 1600) < 60 and abs(sizes["val"] - 200) < 55 and abs(sizes["test"] - 200) < 55
    assert all(ids == sorted(ids) for ids in splits.values())
    other = make_splits(index_of(IDS), seed=1)
    assert other["test"] != splits["test"]
    assert assign_split("sample-00001", seed=0) == assign_split("sample-00001", seed=0)


def test_custom_fractions_and_invalid_ones():
    splits = make_splits(IDS, seed=0, fractions=(0.5, 0.0, 0.5))
    assert splits["val"] == [] and abs(len(splits["train"]) - 1000) < 100
    with pytest.raises(ProtlocError):
        assign_split("a", fractions=(0.8, 0.1, 0.2))
    with pytest.raises(ProtlocError):
        make_splits(IDS, fractions=(1.2, -0.1, -0.1))


def test_single_label_subsets_and_file_roundtrip(tmp_path):
    labels = {i: ((1,) if n % 3 == 0 else (1, 4)) for n, i in enumerate(IDS[:300])}
    index = index_of(IDS[:300], labels)
    splits = make_splits(index, seed=5)
    single = single_label_ids(index, splits["test"])
    assert single == [i for i in splits["test"] if len(labels[i]) == 1] and single
    path = tmp_path / "splits.json"
    save_splits(splits, path, seed=5, index=index)
    assert load_splits(path) == splits
    data = load_split_file(path)
    assert data["seed"] == 5 and data["fractions"] == [0.8, 0.1, 0.1]
    assert data["single_label"]["test"] == single
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ProtlocError, match="not a protloc splits file"):
        load_splits(tmp_path / "bad.json")


# ---- patches --------------------------------------------------------------------------------------


@pytest.mark.parametrize("length,patch", [(2048, 1024), (1728, 1024), (3072, 1024), (1000, 300),
                                          (1025, 1024), (512, 512), (100, 512), (7, 3)])
def test_patch_starts_follow_the_authors_formula(length, patch):
    starts = patch_starts(length, patch)
    n = math.ceil(length / patch)
    assert len(starts) == max(n, 1)
    assert starts[0] == 0
    if length >= patch:
        assert starts[-1] + patch == length  # last patch ends at the border
        if n > 1:
            step = patch - (patch * n - length) / (n - 1)
            assert starts == [round(i * step) for i in range(n)]
        assert all(b - a <= patch for a, b in zip(starts, starts[1:]))  # no gap between patches
    else:
        assert starts == [0]


def test_patch_starts_examples():
    assert patch_starts(1728, 1024) == [0, 704]
    assert patch_starts(3072, 1024) == [0, 1024, 2048]
    assert patch_starts(1000, 300) == [0, 233, 467, 700]


@pytest.mark.parametrize("height,width,patch", [(70, 45, 32), (64, 64, 32), (50, 20, 32), (10, 12, 16)])
def test_extract_patches_cover_every_pixel(height, width, patch):
    rng = np.random.default_rng(0)
    image = rng.random((4, height, width), dtype=np.float32) + 1.0  # strictly positive: padding is 0
    patches = extract_patches(image, patch)
    grid = patch_grid(height, width, patch)
    expected_count = math.ceil(height / patch) * math.ceil(width / patch)
    assert patches.shape == (expected_count, 4, patch, patch) and len(grid) == expected_count
    covered = np.zeros((max(height, patch), max(width, patch)), dtype=int)
    for (y, x), crop in zip(grid, patches):
        covered[y : y + patch, x : x + patch] += 1
        valid = crop[:, : min(patch, height - y), : min(patch, width - x)]
        np.testing.assert_array_equal(valid, image[:, y : y + patch, x : x + patch])
    assert (covered[:height, :width] >= 1).all()
    if height < patch or width < patch:  # zero padding beyond the image
        assert (patches[0][:, height:, :] == 0).all() and (patches[0][:, :, width:] == 0).all()


def test_extract_patches_torch_matches_numpy():
    image = np.random.default_rng(1).random((4, 40, 70), dtype=np.float32)
    np.testing.assert_array_equal(extract_patches(torch.from_numpy(image), 32).numpy(), extract_patches(image, 32))


def test_random_crop_position_varies_and_small_images_are_padded():
    image = np.arange(4 * 50 * 60, dtype=np.float32).reshape(4, 50, 60)
    rng = np.random.default_rng(0)
    crops = [random_crop(image, 16, rng) for _ in range(20)]
    assert all(c.shape == (4, 16, 16) for c in crops)
    assert len({float(c[0, 0, 0]) for c in crops}) > 5
    for crop in crops:  # each crop is a contiguous window of the image
        y, x = divmod(int(crop[0, 0, 0]), 60)
        np.testing.assert_array_equal(crop, image[:, y : y + 16, x : x + 16])
    small = np.ones((4, 10, 30), np.float32)
    padded = random_crop(small, 20, np.random.default_rng(0))
    assert padded.shape == (4, 20, 20)
    assert padded[:, :10].min() == 1 and (padded[:, 10:] == 0).all()
    t = random_crop(torch.ones(4, 10, 30), 20, np.random.default_rng(0))
    assert isinstance(t, torch.Tensor) and tuple(t.shape) == (4, 20, 20)


def test_normalize_per_channel_numpy_and_torch():
    rng = np.random.default_rng(2)
    image = np.stack([rng.normal(loc, scale, (33, 47)) for loc, scale in [(5, 2), (1000, 300), (0, 1), (7, 0.1)]])
    image = image.astype(np.float32)
    out = normalize(image)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1, atol=1e-4)
    expected = (image[1] - image[1].mean()) / (image[1].std() + 1e-7)
    np.testing.assert_allclose(out[1], expected, rtol=1e-4, atol=1e-4)
    flat = normalize(np.full((4, 8, 8), 3.0, np.float32))  # constant channel: zeros, not NaN
    assert np.isfinite(flat).all() and (flat == 0).all()
    batch = normalize(np.stack([image, image * 3 + 1]))
    np.testing.assert_allclose(batch[1], out, atol=1e-4)
    torch_out = normalize(torch.from_numpy(image))
    assert isinstance(torch_out, torch.Tensor)
    np.testing.assert_allclose(torch_out.numpy(), out, atol=1e-4)
