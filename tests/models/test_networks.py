"""The five networks of the comparison: sizes, shapes, gradients, determinism, input checks, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from protloc.cli import main
from protloc.errors import ProtlocError
from protloc.models import create_model, list_models
from protloc.models.base import count_parameters
from protloc.models.conv_mil import NoisyAnd, avg_pool_same, max_pool_same

ALL = ["gapnet-pl", "densenet-121", "m-cnn", "deeploc", "conv-mil"]
# The two large networks take seconds per case on a 2-core CPU: their cases are left to the full run.
ALL_MARKED = [pytest.param(name, marks=pytest.mark.slow) if name in ("densenet-121", "m-cnn") else name for name in ALL]



def conv(k: int, c_in: int, c_out: int) -> int:
    """Parameters of a k x k convolution with bias."""
    return k * k * c_in * c_out + c_out


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


# ../shared/reference/architectures.md, 4 input channels, 13 classes:
# DeepLoc: eight 3x3 convolutions 32, 32, pool, 64, 64, pool, 96, 96, 96, 96, pool; FC 128, FC 128, FC 13.
DEEPLOC_CONVS = (conv(3, 4, 32) + conv(3, 32, 32) + conv(3, 32, 64) + conv(3, 64, 64) + conv(3, 64, 96)
                 + 3 * conv(3, 96, 96))
DEEPLOC_TAIL = dense(128, 128) + dense(128, 13)


def deeploc_count(input_size: int) -> int:
    side = math.ceil(input_size / 8)  # three 2x2/2 max pools ('same' padding)
    return DEEPLOC_CONVS + dense(side * side * 96, 128) + DEEPLOC_TAIL


# Conv-MIL: conv 32, conv 64, conv 64, conv 128, conv 128 (3x3); 1x1 conv to 1000; 1x1 conv to 13 class
# maps; noisyAND with a learned threshold per class; the authors' dense 13 -> 13 on its output.
CONV_MIL_TO_NOISY_AND = (conv(3, 4, 32) + conv(3, 32, 64) + conv(3, 64, 64) + conv(3, 64, 128) + conv(3, 128, 128)
                         + conv(1, 128, 1000) + conv(1, 1000, 13) + 13)
CONV_MIL_COUNT = CONV_MIL_TO_NOISY_AND + dense(13, 13)

# 4 input channels, 13 outputs, 1024x1024 input
PAPER_COUNTS = {
    "gapnet-pl": 626_221,
    "densenet-121": 6_970_317,
    "m-cnn": 34_193_853,
    "deeploc": deeploc_count(1024),
    "conv-mil": CONV_MIL_COUNT,  # noisyAND -> dense 13->13 variant
}


@pytest.mark.slow
def test_counts_from_layer_shapes_are_the_documented_ones():
    # architectures.md: the authors' code gives 201,715,277 (DeepLoc; the paper prints 201,716,967)
    # and 420,256 (Conv-MIL; the paper prints 593,143 for its class-map variant, tested below).
    assert deeploc_count(1024) == 201_715_277
    assert CONV_MIL_COUNT == 420_256

SMALL = 128  # the smallest size M-CNN can be built for


def small_options(name: str, size: int = SMALL) -> dict:
    """Options that build a fixed-size network for a small test input."""
    return {"input_size": size} if name in ("m-cnn", "deeploc") else {}


def build(name: str, seed: int = 0, size: int = SMALL, **options) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, **small_options(name, size), **options)


def meta_count(name: str, **options) -> int:
    with torch.device("meta"):
        model = create_model(name, num_classes=13, in_channels=4, **options)
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing was allocated
    return count_parameters(model)


def test_registry_lists_the_five_networks():
    assert list_models()[:1] == ["gapnet-pl"]
    assert set(ALL) <= set(list_models())


@pytest.mark.parametrize("name", ALL_MARKED)
def test_parameter_count_matches_the_specification(name):
    assert meta_count(name) == PAPER_COUNTS[name]


def test_conv_mil_class_map_head_reproduces_the_papers_count():
    # The dense layer on the flattened 32x32x13 class maps of the authors' TF graph: the paper's 593,143.
    # the dense layer reads the 13 class maps at 1/32 of the input: 32x32 at 1024, 8x8 at 256
    assert meta_count("conv-mil", head="class-maps") == CONV_MIL_TO_NOISY_AND + dense(32 * 32 * 13, 13) == 593_143
    assert meta_count("conv-mil", head="class-maps", input_size=256) == CONV_MIL_TO_NOISY_AND + dense(8 * 8 * 13, 13)


def test_fixed_size_networks_scale_their_dense_layer_with_input_size():
    for size in (64, 100, 1024):
        assert meta_count("deeploc", input_size=size) == deeploc_count(size)
    mcnn_without_fc1 = PAPER_COUNTS["m-cnn"] - (8 * 8 * 1024 * 512 + 512)
    assert meta_count("m-cnn", input_size=256) == mcnn_without_fc1 + 2 * 2 * 1024 * 512 + 512


def test_parameter_count_depends_on_classes_and_channels():
    with torch.device("meta"):
        three_channels = count_parameters(create_model("densenet-121", in_channels=3))
        many_classes = count_parameters(create_model("conv-mil", num_classes=28))
    assert three_channels == PAPER_COUNTS["densenet-121"] - 64 * 7 * 7
    assert many_classes > PAPER_COUNTS["conv-mil"]


def test_densenet_has_121_layers_with_bn_and_no_conv_bias():
    with torch.device("meta"):
        model = create_model("densenet-121")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 121
    assert all(conv.bias is None for conv in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 1 + 2 * 58 + 3 + 1


@pytest.mark.parametrize("name", ALL_MARKED)
def test_paper_defaults_are_attached(name):
    with torch.device("meta"):
        paper = create_model(name).paper
    expected = {
        "gapnet-pl": (0.01, 40, 0.3, False),
        "densenet-121": (0.1, 3, 0.2, False),
        "m-cnn": (0.01, 22, 0.0, True),
        "deeploc": (0.001, 2, 0.3, True),
        "conv-mil": (0.01, 32, 0.2, False),
    }[name]
    assert (paper.learning_rate, paper.batch_size, paper.dropout, paper.fixed_input_size) == expected
    assert paper.input_size == 1024


@pytest.mark.parametrize("name", ALL_MARKED)
def test_output_shape_on_small_inputs(name):
    size = 96 if name != "m-cnn" else SMALL
    model = build(name, size=size).eval()
    with torch.no_grad():
        logits = model(torch.randn(3, 4, size, size))
    assert logits.shape == (3, 13)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("height,width", [(64, 64), (64, 96), (200, 136), (33, 47), (256, 128)])
def test_gapnet_pl_accepts_any_input_size(height, width):
    model = build("gapnet-pl").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 4, height, width)).shape == (2, 13)


@pytest.mark.parametrize("name", ["densenet-121", "conv-mil"])
def test_fully_convolutional_networks_accept_non_square_inputs(name):
    model = build(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 4, 96, 160)).shape == (1, 13)


def test_conv_mil_exposes_class_maps_and_noisy_and():
    model = build("conv-mil").eval()
    x = torch.randn(2, 4, 100, 70)
    with torch.no_grad():
        outputs = model.forward_with_aux(x)
        maps = model.class_maps(x)
    assert set(outputs) == {"logits", "noisy_and", "class_maps"}
    assert maps.shape == (2, 13, math.ceil(100 / 32), math.ceil(70 / 32))
    torch.testing.assert_close(outputs["class_maps"], maps)
    assert outputs["noisy_and"].shape == (2, 13)
    assert ((outputs["noisy_and"] >= 0) & (outputs["noisy_and"] <= 1)).all()
    torch.testing.assert_close(outputs["noisy_and"], model.noisy_and(maps))
    torch.testing.assert_close(outputs["logits"], model.fc1(outputs["noisy_and"]))
    torch.testing.assert_close(model(x), outputs["logits"])


def test_noisy_and_follows_its_formula_and_clips_the_threshold():
    pool = NoisyAnd(num_classes=3, slope=5.0)
    with torch.no_grad():
        pool.threshold.copy_(torch.tensor([0.3, -2.0, 7.0]))  # the last two are clipped to 0 and 1
    maps = torch.randn(2, 3, 4, 5)
    p = torch.sigmoid(maps).mean(dim=(2, 3))
    b = torch.tensor([0.3, 0.0, 1.0])
    a = 5.0
    expected = (torch.sigmoid(a * (p - b)) - torch.sigmoid(-a * b)) / (torch.sigmoid(a * (1 - b)) - torch.sigmoid(-a * b))
    torch.testing.assert_close(pool(maps), expected)
    # all locations certain -> bag certain, whatever the threshold
    torch.testing.assert_close(pool(torch.full((1, 3, 2, 2), 50.0)), torch.ones(1, 3))
    torch.testing.assert_close(pool(torch.full((1, 3, 2, 2), -50.0)), torch.zeros(1, 3))
    assert pool.slope.requires_grad is False
    assert [name for name, _ in pool.named_parameters()] == ["threshold"]


def test_conv_mil_loss_is_output_bce_plus_noisy_and_bce():
    model = build("conv-mil").eval()
    outputs = model.forward_with_aux(torch.randn(2, 4, 64, 64))
    targets = torch.tensor([[1.0, 0.0] * 6 + [1.0], [0.0, 1.0] * 6 + [0.0]])
    classes = targets.shape[1]
    # the authors' scale: per-class losses averaged over the batch, summed over the 13 classes
    expected = classes * (
        F.binary_cross_entropy_with_logits(outputs["logits"], targets) + F.binary_cross_entropy(outputs["noisy_and"], targets)
    )
    torch.testing.assert_close(model.loss(outputs, targets), expected)
    # the default loss of the other networks is the output BCE alone
    gapnet = build("gapnet-pl").eval()
    gap_outputs = gapnet.forward_with_aux(torch.randn(2, 4, 64, 64))
    torch.testing.assert_close(
        gapnet.loss(gap_outputs, targets), classes * F.binary_cross_entropy_with_logits(gap_outputs["logits"], targets)
    )


def test_same_pooling_matches_tensorflow_alignment():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # TF 'SAME' 3x3/2 on an even size pads only after: windows rows/cols [0:3] and [2:4]
    torch.testing.assert_close(max_pool_same(x), torch.tensor([[[[10.0, 11.0], [14.0, 15.0]]]]))
    expected_avg = torch.tensor([[[[5.0, 6.5], [11.0, 12.5]]]])  # padding excluded from the average
    torch.testing.assert_close(avg_pool_same(x), expected_avg)
    assert max_pool_same(torch.zeros(1, 1, 5, 7)).shape[-2:] == (3, 4)
    torch.testing.assert_close(avg_pool_same(torch.ones(1, 2, 5, 6)), torch.ones(1, 2, 3, 3))


@pytest.mark.parametrize("name", ALL_MARKED)
def test_gradients_reach_every_parameter(name):
    size = 64 if name != "m-cnn" else SMALL
    model = build(name, size=size).train()
    torch.manual_seed(1)
    x = torch.randn(2, 4, size, size)
    targets = torch.tensor([[1.0, 0.0] * 6 + [1.0], [0.0, 1.0] * 6 + [0.0]])
    model.loss(model.forward_with_aux(x), targets).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_conv_mil_class_map_head_trains_end_to_end():
    model = build("conv-mil", head="class-maps", input_size=64).train()
    x = torch.randn(2, 4, 64, 64)
    model.loss(model.forward_with_aux(x), torch.ones(2, 13)).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.fc1.in_features == 2 * 2 * 13
    with pytest.raises(ProtlocError, match="64x64"):
        model(torch.randn(1, 4, 96, 96))
    assert create_model("conv-mil").paper.fixed_input_size is False  # the instance override does not leak


@pytest.mark.parametrize("name", ALL_MARKED)
def test_same_seed_gives_same_initial_weights(name):
    first, second, other = build(name, seed=7), build(name, seed=7), build(name, seed=8)
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert any(not torch.equal(a[key], c[key]) for key in a)


@pytest.mark.parametrize("name", ALL_MARKED)
def test_eval_is_deterministic_and_training_uses_dropout(name):
    size = 64 if name != "m-cnn" else SMALL
    model = build(name, size=size)
    x = torch.randn(2, 4, size, size)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        model.train()
        first, second = model(x), model(x)
    if model.paper.dropout > 0:
        assert not torch.equal(first, second)
    else:  # M-CNN has no dropout: training mode is deterministic too
        assert torch.equal(first, second)


@pytest.mark.parametrize("name", ["m-cnn", "deeploc"])
def test_fixed_size_networks_refuse_other_sizes_clearly(name):
    model = build(name)
    with pytest.raises(ProtlocError) as excinfo:
        model(torch.randn(1, 4, 96, 96))
    message = str(excinfo.value)
    assert f"{SMALL}x{SMALL}" in message and "96x96" in message and name in message
    with pytest.raises(ProtlocError, match="128x128"):
        model(torch.randn(1, 4, SMALL, SMALL + 8))  # non-square


def test_fixed_size_networks_default_to_1024():
    with torch.device("meta"):
        assert create_model("deeploc").input_size == 1024
        mcnn = create_model("m-cnn")
    assert mcnn.input_size == 1024
    assert mcnn.fc1.in_features == 8 * 8 * 1024


@pytest.mark.parametrize("name", ALL_MARKED)
def test_wrong_channel_count_is_a_clear_error(name):
    model = build(name)
    with pytest.raises(ProtlocError, match="4, height, width"):
        model(torch.randn(1, 3, SMALL, SMALL))


def test_bad_options_are_clear_errors():
    with pytest.raises(ProtlocError, match="at least 128"):
        create_model("m-cnn", input_size=64)
    with pytest.raises(ProtlocError, match="head"):
        create_model("conv-mil", head="max")
    with pytest.raises(ProtlocError, match="unknown model"):
        create_model("resnet-50")
    with pytest.raises(ProtlocError, match="at least 32x32"):
        create_model("densenet-121").eval()(torch.randn(1, 4, 16, 40))


@pytest.mark.slow
def test_models_command_prints_all_five_with_counts(capsys):
    assert main(["models", "--crop", "64"]) == 0
    out = capsys.readouterr().out
    for name, count in PAPER_COUNTS.items():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert f"{count:,}" in line
    assert "m-cnn: skipped" in out  # 64 px is below M-CNN's smallest input
    assert "deeploc: dense layers built for 64x64" in out
    assert "ms" in next(line for line in out.splitlines() if line.startswith("gapnet-pl "))


def test_models_command_json(capsys):
    assert main(["models", "gapnet-pl", "deeploc", "--crop", "32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["crop"] == 32
    rows = {row["name"]: row for row in report["models"]}
    assert set(rows) == {"gapnet-pl", "deeploc"}
    assert rows["deeploc"]["parameters"] == PAPER_COUNTS["deeploc"]
    assert rows["deeploc"]["timed_parameters"] == meta_count("deeploc", input_size=32)
    assert rows["gapnet-pl"]["timed_parameters"] == PAPER_COUNTS["gapnet-pl"]
    assert all(row["forward_backward_seconds"] > 0 for row in rows.values())
    assert rows["deeploc"]["learning_rate"] == 0.001 and rows["deeploc"]["batch_size"] == 2


def test_models_command_without_timing_and_bad_input(capsys):
    assert main(["models", "--no-timing", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in report["models"]][:5] == ALL
    assert all(row["forward_backward_seconds"] is None for row in report["models"])
    assert main(["models", "--crop", "0"]) == 2
    assert main(["models", "alexnet"]) == 2
    err = capsys.readouterr().err
    assert "--crop" in err and "unknown model 'alexnet'" in err
