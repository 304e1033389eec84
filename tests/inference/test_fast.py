"""The fast GapNet-PL inference path: equal to the plain forward in fp32, same classes in bf16.

The plain forward is ``network(normalize(x))``; the fast path takes the raw image, so every
comparison below starts from raw intensities (offsets and scales like a microscope's).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from protloc.model_file import network_from_model_file, read_model_file, save_model_file
from protloc.cli import main
from protloc.data.channels import CHANNELS
from protloc.errors import ProtlocError
from protloc.inference.inferer import Inferer
from protloc.inference.normalization import normalize
from protloc.labels import HPA13
from protloc.models import create_model
from protloc.inference.gapnet_pl_fast import FastGapNetPL, fast_network, gflop, image_moments

from tests.conftest import shared_dir

SHARED = shared_dir()
CHECKPOINT_DIR = SHARED / "pretrained" / "gapnet-pl"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHECKPOINT_CHANNEL_ORDER = ["nucleus", "protein", "microtubules", "er"]


def random_gapnet(seed: int = 0) -> torch.nn.Module:
    """GapNet-PL with random weights and non-zero biases (the initialisation zeroes them)."""
    torch.manual_seed(seed)
    network = create_model("gapnet-pl").eval()
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
    return network


def raw_images(shape, seed: int = 1) -> torch.Tensor:
    """Microscope-like raw intensities: per-channel offsets and gains, smooth structure plus noise."""
    generator = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    noise = torch.rand(shape, generator=generator)
    rows = torch.linspace(0, 3, h).reshape(1, 1, h, 1)
    cols = torch.linspace(0, 5, w).reshape(1, 1, 1, w)
    structure = torch.sin(rows * (torch.arange(c).reshape(1, c, 1, 1) + 1)) * torch.cos(cols)
    gain = torch.tensor([900.0, 300.0, 2000.0, 50.0])[:c].reshape(1, c, 1, 1)
    return 100.0 + gain * (noise**3 + 0.5 * structure + 0.5)


def predict_whole(network, image, precision=None):
    return Inferer(network, None, precision=precision)(image)


def predict_image(network, image, patch_size, batch_size=8, precision=None):
    return Inferer(network, patch_size, batch_size=batch_size, precision=precision)(image)


def plain_logits(network, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return network(normalize(x))


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize(
    "shape",
    [(1, 4, 64, 64), pytest.param((2, 4, 301, 457), marks=pytest.mark.slow), (3, 4, 97, 130), (1, 4, 130, 45), (2, 4, 5, 7)],
    ids=["square", "odd-non-square-batch2", "batch3", "tall", "tiny"],
)
def test_fp32_fast_path_equals_plain_forward(shape):
    network = random_gapnet()
    x = raw_images(shape)
    expected = plain_logits(network, x)
    assert expected.abs().max() > 0.1  # a comparison of real numbers, not of zeros
    for options in ({}, {"strip_rows": 4}, {"strip_rows": None}, {"channels_last": False}, {"pool_first": False}):
        logits = FastGapNetPL(network, **options)(x)
        assert logits.shape == expected.shape and logits.dtype == torch.float32
        assert relative_difference(logits, expected) <= 1e-5, options


def assert_selu_compiled() -> None:
    """Compiling SELU falls back to ATen on failure: equal logits alone would not show it compiled."""
    import protloc.inference.gapnet_pl_fast as fast_path

    assert fast_path.compiled_selu_error is None, f"SELU did not compile: {fast_path.compiled_selu_error}"
    assert fast_path._compiled_selu is not None, "the compiled SELU was never used"


@pytest.mark.slow
def test_compiled_selu_gives_the_same_logits():
    network = random_gapnet(2)
    x = raw_images((2, 4, 75, 62))
    logits = FastGapNetPL(network, compile_selu=True, strip_rows=8)(x)
    assert_selu_compiled()
    assert relative_difference(logits, plain_logits(network, x)) <= 1e-5


def test_a_failed_selu_compile_warns_once_and_falls_back(monkeypatch):
    import protloc.inference.gapnet_pl_fast as fast_path

    def no_compiler(*_args, **_kwargs):
        raise RuntimeError("no C++ compiler found\nsecond line")

    monkeypatch.setattr(fast_path, "_compiled_selu", None)
    monkeypatch.setattr(fast_path, "compiled_selu_error", None)
    monkeypatch.setattr(torch, "compile", no_compiler)
    network = random_gapnet(2)
    x = raw_images((1, 4, 40, 40))
    with pytest.warns(RuntimeWarning, match=r"compiling SELU failed \(RuntimeError: no C\+\+ compiler found\)") as caught:
        logits = FastGapNetPL(network, compile_selu=True, strip_rows=8)(x)
        FastGapNetPL(network, compile_selu=True, strip_rows=8)(x)
    assert len([w for w in caught if "SELU" in str(w.message)]) == 1
    assert fast_path.compiled_selu_error == "RuntimeError: no C++ compiler found"
    assert relative_difference(logits, plain_logits(network, x)) <= 1e-5


def test_strips_cover_every_row_once():
    """Strips of 2 conv rows on an odd height: each strip boundary and the bottom padding row."""
    network = random_gapnet(3)
    x = raw_images((1, 4, 41, 33), seed=5)
    fast = FastGapNetPL(network, strip_rows=2)
    expected_block1 = network.blocks(normalize(x))[0]
    mean, std = image_moments(x)
    block1, average = fast._block1(x, mean, 1.0 / (std + 1e-7))
    block1 = block1.clone()  # the result lives in a per-thread workspace reused by the next call
    torch.testing.assert_close(average, expected_block1.mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(block1, expected_block1, rtol=1e-5, atol=1e-5)
    # one perturbed input pixel changes exactly the pooled outputs whose window sees it
    y = x.clone()
    y[0, 2, 20, 16] += 5000.0
    changed = (fast._block1(y, mean, 1.0 / (std + 1e-7))[0] - block1).abs().amax(dim=1)[0] > 1e-6
    assert changed.any() and changed.sum() <= 4


def test_fast_path_follows_weight_changes_and_keeps_state_dict():
    network = random_gapnet()
    keys = list(network.state_dict())
    fast = fast_network(network)
    assert fast is fast_network(network)  # reused: converted weights are kept between calls
    assert fast_network(network, precision="bf16") is not fast
    x = raw_images((1, 4, 48, 40))
    before = fast(x)
    with torch.no_grad():
        network.conv5.weight.mul_(1.5)  # fine-tuning changes parameters in place
    after = fast(x)
    assert relative_difference(after, before) > 1e-3
    assert relative_difference(after, plain_logits(network, x)) <= 1e-5
    assert list(network.state_dict()) == keys


def test_normalisation_statistics_are_stable_on_large_offsets():
    rng = np.random.default_rng(0)
    image = 60000.0 + rng.normal(0.0, 3.0, size=(2, 4, 129, 77))
    mean, std = image_moments(torch.from_numpy(image.astype(np.float32)))
    np.testing.assert_allclose(mean.numpy().reshape(2, 4), image.astype(np.float32).mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std.numpy().reshape(2, 4), image.astype(np.float32).astype(np.float64).std(axis=(2, 3)),
                               rtol=1e-3)


def test_other_networks_and_bad_options():
    torch.manual_seed(0)
    assert fast_network(create_model("conv-mil")) is None
    with pytest.raises(ProtlocError, match="unknown precision 'fp8'"):
        fast_network(random_gapnet(), precision="fp8")
    with pytest.raises(ProtlocError, match="for GapNet-PL"):
        FastGapNetPL(create_model("conv-mil"))
    with pytest.raises(ProtlocError, match="even number"):
        FastGapNetPL(random_gapnet(), strip_rows=3)
    with pytest.raises(ProtlocError, match=r"expects input \[batch, 4"):
        FastGapNetPL(random_gapnet())(torch.zeros(1, 3, 8, 8))


def test_gflop_matches_the_issue():
    assert gflop(1024, 1024) == pytest.approx(7.85, abs=0.01)
    assert gflop(2048, 2048) == pytest.approx(31.4, abs=0.05)


@pytest.mark.slow
def test_inference_functions_take_a_precision():
    network = random_gapnet()
    image = raw_images((1, 4, 70, 90))[0].numpy()
    plain = predict_whole(network, image)
    np.testing.assert_allclose(predict_whole(network, image, precision="fp32"), plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predict_whole(network, image, precision="bf16"), plain, atol=0.05)
    patches = predict_image(network, image, 32, batch_size=3)
    np.testing.assert_allclose(predict_image(network, image, 32, batch_size=3, precision="fp32"), patches,
                               rtol=1e-5, atol=1e-6)
    # a network without a fast path runs the plain forward (bf16: under autocast)
    torch.manual_seed(0)
    other = create_model("conv-mil").eval()
    other_plain = predict_whole(other, image)
    np.testing.assert_allclose(predict_whole(other, image, precision="fp32"), other_plain, rtol=1e-6)
    assert np.abs(predict_whole(other, image, precision="bf16") - other_plain).max() < 0.05


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory) -> Path:
    if not CHECKPOINT_DIR.is_dir():
        pytest.skip("../shared/pretrained/gapnet-pl is not beside the repository")
    out = tmp_path_factory.mktemp("pretrained") / "gapnet-pl.pt"
    assert main(["pretrained", "import", str(CHECKPOINT_DIR), "--out", str(out)]) == 0
    return out


def test_fast_path_gives_tensorflow_logits_on_odd_sizes(pretrained_file):
    """The authors' graph (fixture written by tools/tf_reference_logits.py) at 301x457, through the fast path."""
    odd = json.loads((FIXTURES / "gapnet_pl_reference.json").read_text())["odd_size"]
    rng = np.random.default_rng(odd["seed"])
    height, width = odd["height"], odd["width"]
    u = rng.random((height, width, 4))
    i = np.arange(height, dtype=np.float64)[:, None, None]
    j = np.arange(width, dtype=np.float64)[None, :, None]
    c = np.arange(4, dtype=np.float64)[None, None, :]
    x = u**3 + 0.5 * (1.0 + np.sin(2 * np.pi * (c + 1) * i / height) * np.cos(2 * np.pi * (c + 2) * j / width))
    image = ((x - x.mean(axis=(0, 1))) / (x.std(axis=(0, 1)) + 1e-7)).astype(np.float32)
    assert hashlib.sha256(image.tobytes()).hexdigest() == odd["sha256_float32"]
    canonical = [CHECKPOINT_CHANNEL_ORDER.index(channel) for channel in CHANNELS]
    raw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[canonical]))[None] * 700.0 + 300.0
    network = network_from_model_file(read_model_file(pretrained_file)).eval()
    logits = FastGapNetPL(network, strip_rows=16)(raw)[0].double().numpy()
    expected = np.array(odd["logits"])
    assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()


def test_bf16_keeps_the_predicted_classes_on_synthetic_samples(pretrained_file, tmp_path):
    from protloc.data.synth.dataset import draw_sample
    from protloc.inference.predictor import load_model

    predictor = load_model(pretrained_file)
    for index in range(3):
        image = draw_sample(seed=11, index=index, height=256, width=256)[1]
        fp32 = predictor.predict_proba(image, whole_image=True)
        bf16 = predictor.predict_proba(image, whole_image=True, precision="bf16")
        assert int(np.argmax(bf16)) == int(np.argmax(fp32))
        assert predictor.predicted(bf16) == predictor.predicted(fp32)
        assert np.abs(bf16 - fp32).max() < 0.02
        plain = predict_whole(predictor.network, image)
        np.testing.assert_allclose(fp32, plain, rtol=0, atol=5e-5)  # logits within ~1e-6 relative


def test_predictor_and_cli_reject_unknown_precision(tmp_path, capsys):
    torch.manual_seed(0)
    model = tmp_path / "tiny.pt"
    save_model_file(model, random_gapnet(), model_name="gapnet-pl", classes=HPA13.classes, label_set="hpa13",
                    crop_size=32, thresholds=[0.5] * 13)
    from protloc.inference.predictor import load_model

    predictor = load_model(model)
    image = raw_images((1, 4, 40, 40))[0].numpy()
    with pytest.raises(ProtlocError, match="unknown precision"):
        predictor.predict_proba(image, precision="half")
    fp32 = predictor.predict_proba(image)  # patches, fast path
    np.testing.assert_allclose(fp32, predict_image(predictor.network, image, 32, batch_size=4), rtol=1e-5, atol=1e-6)
    folder = tmp_path / "in"
    folder.mkdir()
    np.savez(folder / "a.npz", sample=(image.transpose(1, 2, 0) % 256).astype(np.uint8))
    assert main(["predict", str(folder / "a.npz"), "--model", str(model), "--out", str(tmp_path / "p.csv"),
                 "--precision", "fp16", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    # fp16 is a precision, but not a CPU's: refused in one line before any work
    assert err.startswith("protloc: error: --precision fp16 is for CUDA devices") and err.count("\n") == 1
    assert main(["predict", str(folder / "a.npz"), "--model", str(model), "--out", str(tmp_path / "p.csv"),
                 "--precision", "bf16", "--workers", "0", "--whole-image"]) == 0


def test_predict_with_compiled_selu_gives_the_same_probabilities(tmp_path, monkeypatch):
    import protloc.inference.gapnet_pl_fast as fast_inference

    monkeypatch.setattr(fast_inference, "DEFAULT_OPTIONS", {})
    torch.manual_seed(0)
    model = tmp_path / "tiny.pt"
    save_model_file(model, random_gapnet(), model_name="gapnet-pl", classes=HPA13.classes, label_set="hpa13",
                    crop_size=32, thresholds=[0.5] * 13)
    image = raw_images((1, 4, 40, 40))[0].numpy()
    np.savez(tmp_path / "a.npz", sample=(image.transpose(1, 2, 0) % 256).astype(np.uint8))
    rows = {}
    for name, extra in (("plain", []), ("compiled", ["--compile-selu"])):
        out = tmp_path / f"{name}.csv"
        assert main(["predict", str(tmp_path / "a.npz"), "--model", str(model), "--out", str(out),
                     "--workers", "0", "--whole-image", *extra]) == 0
        rows[name] = np.array(out.read_text().splitlines()[1].split(",")[1:14], dtype=np.float64)
    assert fast_inference.DEFAULT_OPTIONS == {"compile_selu": True}
    assert_selu_compiled()
    np.testing.assert_allclose(rows["compiled"], rows["plain"], rtol=0, atol=1e-5)
