"""Training's rules one by one: the penalty, gradient clipping, the plateau schedule, validation metrics,
one-line errors of `protloc train`, configs, seeded crops, the sample cache and patch-averaged inference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protloc.training.config import TrainConfig, load_config, resolve

from tests.helpers.training import run_cli


def test_penalty_is_the_hand_computation():
    from protloc.training.lightning_module import regularization_penalty

    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]))
        layer.bias.copy_(torch.tensor([-4.0, 2.0]))
    # L1 1e-7 * sum|θ| + L2 1e-5 * sum θ² / 2, weights and biases: |θ| sums to 13.5, θ² to 35.25
    expected = 1e-7 * 13.5 + 1e-5 * 35.25 / 2
    assert float(regularization_penalty(layer, 1e-7, 1e-5).detach()) == pytest.approx(expected, rel=1e-6)
    layer.bias.requires_grad_(False)  # frozen parameters are not penalised
    assert float(regularization_penalty(layer, 1e-7, 1e-5).detach()) == pytest.approx(1e-7 * 7.5 + 1e-5 * 15.25 / 2, rel=1e-6)
    # its gradient is l1·sign(θ) + l2·θ (the authors' tf.nn.l2_loss convention = SGD weight decay l2)
    layer.bias.requires_grad_(True)
    regularization_penalty(layer, 1e-7, 1e-5).backward()
    torch.testing.assert_close(layer.bias.grad, 1e-7 * torch.sign(layer.bias) + 1e-5 * layer.bias.detach())


@pytest.mark.parametrize("scale, expected_norm", [(10.0, 5.0), (0.1, None)])
def test_clipping_rescales_large_gradients_only(scale, expected_norm):
    from lightning.pytorch.plugins.precision import Precision
    from lightning.pytorch.utilities.enums import GradClipAlgorithmType

    assert TrainConfig().grad_clip_norm == 5.0
    layer = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    torch.manual_seed(0)
    grads = [torch.randn_like(p) for p in layer.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    for p, g in zip(layer.parameters(), grads):
        p.grad = g / norm * scale  # global norm = scale
    before = [p.grad.clone() for p in layer.parameters()]
    # the call Lightning's Trainer(gradient_clip_val=5, gradient_clip_algorithm="norm") makes
    Precision().clip_gradients(optimizer, 5.0, GradClipAlgorithmType.NORM)
    after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in layer.parameters()]))
    if expected_norm is None:
        for p, g in zip(layer.parameters(), before):
            assert torch.equal(p.grad, g)
    else:
        assert float(after) == pytest.approx(expected_norm, rel=1e-4)
        # the direction is kept
        torch.testing.assert_close(list(layer.parameters())[0].grad, before[0] * (5.0 / scale), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode, scores, halved_after", [
    # relative (the authors'): 0.5 -> 0.504 is < 1 % better, so it counts as a bad epoch
    ("rel", [0.5, 0.504, 0.5045, 0.503], 4),
    ("rel", [0.5, 0.51, 0.52, 0.531, 0.54], None),  # each >1 % better: never halved
    # absolute: 0.5 -> 0.509 is < 0.01 better
    ("abs", [0.5, 0.509, 0.505, 0.508], 4),
    ("abs", [0.5, 0.511, 0.522, 0.533], None),
])
def test_plateau_halves_after_patience(mode, scores, halved_after):
    from protloc.training.lightning_module import LocalizationModule

    config = TrainConfig(plateau_patience=2, plateau_threshold=0.01, plateau_threshold_mode=mode,
                         learning_rate=0.01, momentum=0.9)
    module = LocalizationModule(torch.nn.Linear(2, 2), config, ["a", "b"])
    optimizer = module.configure_optimizers()
    lrs = []
    for score in scores:
        module.plateau.step(score)
        lrs.append(optimizer.param_groups[0]["lr"])
    if halved_after is None:
        assert lrs == [0.01] * len(scores)
    else:
        # epochs 2..k are bad; the rate halves once the bad count exceeds the patience (2)
        assert lrs[: halved_after - 1] == [0.01] * (halved_after - 1)
        assert lrs[halved_after - 1] == pytest.approx(0.005)


def test_validation_metrics_neither_guess_nan_outputs_nor_zero_an_undefined_f1():
    from protloc.training.lightning_module import NonFiniteOutputError, validation_metrics

    labels = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6]], np.float32)
    assert validation_metrics(labels, probs, ["a", "b"])["val_mean_f1"] == pytest.approx(1.0)
    probs[1, 0] = np.nan
    with pytest.raises(NonFiniteOutputError, match="NaN or infinite for 1 of 3 validation images"):
        validation_metrics(labels, probs, ["a", "b"])
    unlabelled = validation_metrics(np.zeros((3, 2), np.float32), np.full((3, 2), 0.2, np.float32), ["a", "b"])
    assert math.isnan(unlabelled["val_mean_f1"])  # undefined, not 0


@pytest.mark.parametrize("case", ["unknown-model", "missing-data", "crop-too-large", "bad-yaml", "unknown-option",
                                  "resume-nothing", "negative-epochs"])
def test_bad_inputs_are_one_line_errors(case, data_dir, tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["train", "--data", str(data_dir), "--out", out, "--device", "cpu", "--epochs", "1"]
    if case == "unknown-model":
        args, needle = base + ["--model", "resnet-5"], "unknown model 'resnet-5'"
    elif case == "missing-data":
        args = ["train", "--model", "gapnet-pl", "--data", str(tmp_path / "nope"), "--out", out]
        needle = "data folder not found"
    elif case == "crop-too-large":
        args, needle = base + ["--model", "deeploc", "--crop-size", "128"], "larger than every image"
    elif case == "bad-yaml":
        bad = tmp_path / "bad.yaml"
        bad.write_text("epochs: [1, 2\n")
        args, needle = base + ["--model", "gapnet-pl", "--config", str(bad)], "not valid YAML"
    elif case == "unknown-option":
        bad = tmp_path / "typo.yaml"
        bad.write_text("epochz: 3\n")
        args, needle = base + ["--model", "gapnet-pl", "--config", str(bad)], "unknown training option 'epochz'"
    elif case == "resume-nothing":
        args, needle = ["train", "--out", out, "--resume"], "nothing to resume"
    else:
        args, needle = base + ["--model", "gapnet-pl", "--epochs", "-1"], "epochs must be positive"
    code, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("protloc: error:") and needle in lines[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_existing_run_needs_resume(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: gapnet-pl\n")
    code, err = run_cli(["train", "--model", "gapnet-pl", "--data", str(data_dir), "--out", str(run)], capsys)
    assert code == 2 and "already holds a training run" in err


def test_config_precedence_and_shipped_configs(tmp_path):
    from protloc.training.config import SHIPPED_CONFIGS, paper_defaults

    for name in SHIPPED_CONFIGS:
        resolved = resolve(load_config(name), cuda_available=False)
        paper = paper_defaults(name)
        assert (resolved.model, resolved.learning_rate, resolved.batch_size) == (name, paper.learning_rate,
                                                                                  paper.batch_size)
        assert resolved.crop_size == 1024 and resolved.l1 == 1e-7 and resolved.l2 == 1e-5
    custom = tmp_path / "c.yaml"
    custom.write_text("model: deeploc\nbatch_size: 6\nepochs: 9\n")
    config = resolve(load_config(custom, {"epochs": 3, "lr": None}), cuda_available=False)
    assert (config.model, config.batch_size, config.epochs, config.learning_rate) == ("deeploc", 6, 3, 0.001)
    assert config.precision == "32-true" and config.channels_last is False


# ---------------------------------------------------------------- data pipeline and inference
def test_crops_are_seeded_by_seed_epoch_position(data_dir, tmp_path):
    from protloc.data.index import open_dataset
    from protloc.training.cache import SampleCache
    from protloc.training.datamodule import EpochSampler, TrainCrops

    index = open_dataset(data_dir)
    ids = index.ids()[:4]
    labels = np.stack([index.label_vector(i) for i in ids])
    cache = SampleCache(index, tmp_path / "cache")
    assert cache.build(ids, progress=False) == 4 and cache.build(ids, progress=False) == 0
    direct = TrainCrops(index.load_image, ids, labels, 64, seed=1)
    cached = TrainCrops(cache.open, ids, labels, 64, seed=1)
    a, b = direct[(0, 2)][0], cached[(0, 2)][0]
    assert a.shape == (4, 64, 64) and torch.equal(a, b)  # the cache changes nothing but speed
    assert not torch.equal(direct[(1, 2)][0], a)  # another epoch, another crop
    assert torch.equal(TrainCrops(index.load_image, ids, labels, 64, seed=1)[(1, 2)][0], direct[(1, 2)][0])
    torch.testing.assert_close(a.mean(dim=(1, 2)), torch.zeros(4), atol=1e-4, rtol=0)
    # DDP sharding: two ranks partition one seeded permutation, padded to equal length
    s0, s1 = EpochSampler(5, 3, rank=0, world_size=2), EpochSampler(5, 3, rank=1, world_size=2)
    for s in (s0, s1):
        s.set_epoch(4)
    keys0, keys1 = list(s0), list(s1)
    assert len(keys0) == len(keys1) == 3 and {p for _, p in keys0 + keys1} == set(range(5))
    assert all(epoch == 4 for epoch, _ in keys0 + keys1)


def test_cache_refreshes_changed_files(data_dir, tmp_path):
    import shutil

    from protloc.data.index import open_dataset
    from protloc.training.cache import SampleCache

    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy, ignore=shutil.ignore_patterns(".protloc"))
    index = open_dataset(copy)
    sample = index.ids()[0]
    cache = SampleCache(index, tmp_path / "cache")
    cache.build([sample], progress=False)
    before = cache.path(sample)
    source = index.resolve(index.entry(sample).sources["protein"])
    source.write_bytes(source.read_bytes())  # new modification time
    import os

    os.utime(source, ns=(before.stat().st_mtime_ns + 10**9, before.stat().st_mtime_ns + 10**9))
    assert cache.path(sample) != before and cache.missing([sample]) == [sample]


def test_predict_image_averages_patch_sigmoids():
    from protloc.data.patches import extract_patches
    from protloc.inference import Inferer, normalize, predict_dataset
    from protloc.models import create_model

    torch.manual_seed(0)
    network = create_model("gapnet-pl").train()
    rng = np.random.default_rng(0)
    image = (rng.random((4, 100, 150)) * 4000).astype(np.float32)
    probs = Inferer(network, 64, batch_size=2)(image)
    assert network.training  # mode restored
    patches = extract_patches(image, 64)
    assert patches.shape[0] == 2 * 3
    with torch.no_grad():
        manual = torch.sigmoid(network.eval()(torch.from_numpy(normalize(patches)))).mean(0).numpy()
    np.testing.assert_allclose(probs, manual, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(normalize(torch.from_numpy(patches)).numpy(), normalize(patches), atol=1e-4)
    whole = Inferer(network, None)(image)
    with torch.no_grad():
        expected = torch.sigmoid(network(torch.from_numpy(normalize(image))[None]))[0].numpy()
    np.testing.assert_allclose(whole, expected, rtol=1e-4, atol=1e-6)

    stacked = predict_dataset(Inferer(network, 64), ["0", "1"], lambda sample_id: image * (1 + int(sample_id)),
                              progress=False)
    assert stacked.shape == (2, 13)
    np.testing.assert_allclose(stacked[0], probs, rtol=1e-4, atol=1e-6)
