"""Localisation maps say where the evidence is (issue 11, defect 8): GapNet-PL's class activation map
peaks where a network built to look at the protein finds it; every other network's sliding-window
map is run and equals the window probabilities it paints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from protloc.model_file import save_model_file
from protloc.inference.maps import class_activation_maps, window_grid
from protloc.inference.normalization import normalize
from protloc.inference.predictor import load_model
from protloc.labels import HPA13
from protloc.models import create_model, list_models

HEIGHT, WIDTH = 96, 128


def protein_looking_gapnet() -> torch.nn.Module:
    """GapNet-PL whose every feature map is the normalised protein channel passed through SELUs, and
    whose class 0 logit grows with the features (class 1's shrinks): the evidence for class 0 is where
    the protein is bright, for class 1 where it is dark."""
    network = create_model("gapnet-pl").eval()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        network.conv1.weight[:, 3, 1, 1] = 1.0  # protein channel, centre tap
        for index in range(2, 9):
            conv = getattr(network, f"conv{index}")
            conv.weight[:, :, 1, 1] = 1.0 / conv.in_channels
        network.fc1.weight.fill_(0.01)
        network.fc2.weight.fill_(0.01)
        network.fc3.weight[0].fill_(0.01)
        network.fc3.weight[1].fill_(-0.01)
    return network


def quadrant_image(seed: int = 0) -> np.ndarray:
    """Noise everywhere; the protein channel bright in the top-left quadrant only."""
    rng = np.random.default_rng(seed)
    image = rng.random((4, HEIGHT, WIDTH)).astype(np.float32) * 100
    image[3, : HEIGHT // 2, : WIDTH // 2] += 1000
    return image


def quadrant_means(heat: np.ndarray) -> tuple[float, float]:
    inside = np.zeros(heat.shape, bool)
    inside[: HEIGHT // 2, : WIDTH // 2] = True
    return float(heat[inside].mean()), float(heat[~inside].mean())


def test_class_activation_map_peaks_where_the_evidence_is(tmp_path):
    network = protein_looking_gapnet()
    image = quadrant_image()
    bright, dark = class_activation_maps(network, image, [0, 1])
    assert bright.shape == dark.shape == (HEIGHT, WIDTH)
    inside, outside = quadrant_means(bright)
    assert inside > 0.5 and outside < 0.1, (inside, outside)
    y, x = np.unravel_index(np.argmax(bright), bright.shape)
    assert y < HEIGHT // 2 and x < WIDTH // 2
    inside, outside = quadrant_means(dark)  # the opposite evidence lies outside the quadrant
    assert inside < 0.1 and outside > 0.5, (inside, outside)
    # The bright quadrant moved: the map follows it.
    moved = np.ascontiguousarray(image[:, ::-1, ::-1])
    flipped = class_activation_maps(network, moved, [0])[0]
    np.testing.assert_allclose(flipped, bright[::-1, ::-1], atol=0.05)

    # Through a model file and the Predictor (the path of --maps, the web worker and napari).
    path = tmp_path / "looking.pt"
    save_model_file(path, network, model_name="gapnet-pl", classes=HPA13.classes, label_set="hpa13", crop_size=64)
    maps = load_model(path).localization_maps(image, [HPA13.classes[0]])
    np.testing.assert_allclose(maps[HPA13.classes[0]], bright, atol=1e-5)


def test_class_activation_maps_from_the_fast_block_maps_equal_the_plain_network_s():
    """The CAM's block maps come from GapNet-PL's fast path; the maps equal those of the plain
    ``network.blocks`` of the normalised image (a trained-like random network, odd image size)."""
    torch.manual_seed(3)
    network = create_model("gapnet-pl").eval()
    image = (np.random.default_rng(4).random((4, 150, 202)) * 3000 + 200).astype(np.float32)
    with torch.no_grad():
        plain_blocks = network.blocks(torch.from_numpy(normalize(image))[None])
    classes = [0, 5, 12]
    fast = class_activation_maps(network, image, classes)
    plain = class_activation_maps(network, image, classes, blocks=plain_blocks)
    for fast_map, plain_map in zip(fast, plain):
        assert fast_map.shape == (150, 202) and fast_map.max() > 0.5
        np.testing.assert_allclose(fast_map, plain_map, atol=1e-4)


WINDOW_NETWORKS = {  # every network but GapNet-PL; smallest input each accepts
    "densenet-121": {"size": 64, "options": {}},
    "m-cnn": {"size": 128, "options": {"input_size": 128}},
    "deeploc": {"size": 64, "options": {"input_size": 64}},
    "conv-mil": {"size": 64, "options": {"input_size": 64}},
}


def test_the_window_networks_are_the_other_four():
    assert set(WINDOW_NETWORKS) == set(list_models()) - {"gapnet-pl"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "densenet-121" else name
                                  for name in sorted(WINDOW_NETWORKS)])
def test_sliding_window_map_of_each_other_network(name, tmp_path):
    size, options = WINDOW_NETWORKS[name]["size"], WINDOW_NETWORKS[name]["options"]
    torch.manual_seed(0)
    network = create_model(name, **options).eval()
    path = tmp_path / f"{name}.pt"
    save_model_file(path, network, model_name=name, model_options=options, classes=HPA13.classes,
                    label_set="hpa13", crop_size=size)
    predictor = load_model(path)
    height, width = size + size // 2 + 8, 2 * size + 8  # several overlapping windows, odd borders
    image = np.random.default_rng(3).random((4, height, width)).astype(np.float32) * 500
    classes = [HPA13.classes[0], HPA13.classes[5]]
    maps = predictor.localization_maps(image, classes)
    assert set(maps) == set(classes)
    corners = window_grid(height, width, size)
    assert len(corners) >= 4
    with torch.no_grad():
        windows = np.stack([image[:, y : y + size, x : x + size] for y, x in corners])
        probs = torch.sigmoid(network(torch.from_numpy(normalize(windows)))).numpy()
    for k, cls in enumerate(classes):
        heat = maps[cls]
        assert heat.shape == (height, width) and heat.dtype == np.float32
        assert 0.0 <= heat.min() and heat.max() <= 1.0
        index = HPA13.classes.index(cls)
        # Each pixel is the mean probability of the windows that cover it.
        for y, x in [(0, 0), (height - 1, width - 1), (height // 2, width // 2), (size - 1, 3)]:
            covering = [i for i, (cy, cx) in enumerate(corners) if cy <= y < cy + size and cx <= x < cx + size]
            assert heat[y, x] == pytest.approx(float(probs[covering, index].mean()), abs=1e-5), (cls, y, x)
