"""Training: the paper's protocol end to end on tiny synthetic data, resume, and the rules one by one."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from protloc.cli import main
from protloc.training.config import TrainConfig, load_config, resolve

EPOCHS = 2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from protloc.data.synth.dataset import generate_dataset

    out = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(out, samples=24, size=96, seed=3, workers=1, progress=False)
    return out


def tiny_config(data_dir: Path, out: Path, **changes) -> TrainConfig:
    values = dict(model="gapnet-pl", data=str(data_dir), out=str(out), epochs=EPOCHS, crop_size=64, batch_size=4,
                  workers=0, progress=False, device="cpu", cache=str(out.parent / f"{out.name}-cache"), seed=7)
    values.update(changes)
    return TrainConfig(**values)


def read_metrics(run: Path) -> list[dict]:
    with (run / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def network_state(checkpoint_path: Path) -> dict:
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    return {k: v for k, v in checkpoint["state_dict"].items()}


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
    from protloc.training.run import train

    out = tmp_path_factory.mktemp("runs") / "full"
    result = train(tiny_config(data_dir, out))
    return out, result


@pytest.mark.slow
def test_two_epoch_run_writes_every_artefact(full_run):
    from protloc.model_file import read_model_file

    run, result = full_run
    assert result.status == "completed" and result.epochs_completed == EPOCHS
    for name in ("config.yaml", "index.json", "splits.json", "environment.json", "metrics.csv", "model.pt",
                 "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    # resolved: the model's paper learning rate and dropout filled in, our overrides kept
    assert config["learning_rate"] == 0.01 and config["dropout"] == 0.3 and config["crop_size"] == 64
    assert config["precision"] == "32-true" and config["plateau_patience"] == 30
    env = json.loads((run / "environment.json").read_text())
    assert env["versions"]["torch"] == torch.__version__ and env["device"] == "cpu"
    rows = read_metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row in rows:
        for column in ("train_loss", "val_loss", "val_mean_f1", "lr", "epoch_seconds", "samples_per_second"):
            assert math.isfinite(float(row[column])), column
        assert 0 <= float(row["val_mean_f1"]) <= 1
    payload = read_model_file(run / "model.pt")
    assert payload["model"] == "gapnet-pl" and payload["crop_size"] == 64
    assert len(payload["classes"]) == 13 and len(payload["thresholds"]) == 13
    best_epoch = max(rows, key=lambda r: float(r["val_mean_f1"]))["epoch"]
    assert payload["source"]["epoch"] == int(best_epoch)
    best = network_state(run / "checkpoints" / "best.ckpt")
    for key, value in payload["state_dict"].items():
        assert torch.equal(value, best[f"network.{key}"])
    splits = json.loads((run / "splits.json").read_text())["splits"]
    assert splits["val"] and not set(splits["train"]) & set(splits["val"])
    # the prepared-data cache holds the 16-bit TIFFs in their native dtype
    cached = list(Path(f"{run}-cache").glob("*.npy"))
    assert len(cached) == len(splits["train"]) + len(splits["val"])
    assert np.load(cached[0], mmap_mode="r").dtype == np.uint16


@pytest.mark.slow
def test_evaluate_reads_the_run(full_run):
    from protloc.evaluation.evaluate import evaluate_run

    run, _ = full_run
    metrics = evaluate_run(run, split="test", device="cpu", progress=False)
    report = run / "evaluation" / "test"
    assert json.loads((report / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    test_ids = json.loads((run / "splits.json").read_text())["splits"]["test"]
    with (report / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["id"] for row in rows) == sorted(test_ids) and test_ids
    assert len(metrics["thresholds"]) == 13 and all(0 < t < 1 for t in metrics["thresholds"])
    for name in ("roc_curves.png", "f1_per_class.png"):
        assert (report / name).stat().st_size > 1000, name


@pytest.mark.slow
def test_resume_gives_the_uninterrupted_result(full_run, data_dir, tmp_path):
    from protloc.training.run import train
    from protloc.training.run import resume_config

    reference, _ = full_run
    run = tmp_path / "interrupted"
    first = train(tiny_config(data_dir, run, epochs=1))
    assert first.epochs_completed == 1 and len(read_metrics(run)) == 1
    resumed = train(resume_config(run, {"epochs": EPOCHS}), resume=True)
    assert resumed.status == "completed"
    for path in (reference / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt"):
        assert torch.load(path, map_location="cpu", weights_only=False)["global_step"] == 10  # 2 epochs x 5 steps
    expected, got = network_state(reference / "checkpoints" / "last.ckpt"), network_state(run / "checkpoints" / "last.ckpt")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=lambda m: f"{key}: {m}")
    ref_rows, rows = read_metrics(reference), read_metrics(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for column in ("train_loss", "val_loss", "val_mean_f1", "lr"):
        assert [float(r[column]) for r in rows] == pytest.approx([float(r[column]) for r in ref_rows], rel=1e-4)
    env = json.loads((run / "environment.json").read_text())
    assert len(env["resumes"]) == 1


def _python_env() -> dict:
    env = dict(os.environ)
    if env.get("PYTHONPATH"):  # a relative src/ must survive another working directory
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    return env


@pytest.mark.slow
def test_run_killed_before_its_first_checkpoint_resumes_from_epoch_1(full_run, data_dir, tmp_path, capsys):
    reference, _ = full_run
    run = tmp_path / "killed"
    command = [sys.executable, "-m", "protloc", "train", "--model", "gapnet-pl", "--data", str(data_dir),
               "--out", str(run), "--epochs", str(EPOCHS), "--crop-size", "64", "--batch-size", "4", "--workers", "0",
               "--device", "cpu", "--seed", "7", "--cache", str(tmp_path / "cache")]
    process = subprocess.Popen(command, env=_python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (run / "config.yaml").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()  # SIGKILL: nothing is cleaned up
    stderr = process.communicate()[1].decode()
    assert (run / "config.yaml").is_file(), stderr
    assert not (run / "checkpoints" / "last.ckpt").exists()  # killed before its first checkpoint

    # a new start is refused (the run exists) and points to --resume; --resume starts it from epoch 1
    code, err = run_cli(["train", "--model", "gapnet-pl", "--data", str(data_dir), "--out", str(run)], capsys)
    assert code == 2 and "use --resume to continue it" in err
    code, err = run_cli(["train", "--out", str(run), "--resume"], capsys)
    assert code == 0, err
    assert [int(r["epoch"]) for r in read_metrics(run)] == list(range(1, EPOCHS + 1))
    # the same training as the uninterrupted run with the same settings
    expected = network_state(reference / "checkpoints" / "last.ckpt")
    got = network_state(run / "checkpoints" / "last.ckpt")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=lambda m: f"{key}: {m}")
    assert len(json.loads((run / "environment.json").read_text())["resumes"]) == 1


def test_resume_of_a_run_that_never_started_says_what_to_do(tmp_path, capsys):
    run = tmp_path / "empty"
    run.mkdir()
    code, err = run_cli(["train", "--out", str(run), "--resume"], capsys)
    assert code == 2 and "the run never started; start it again without --resume" in err
    code, err = run_cli(["train", "--out", str(tmp_path / "absent"), "--resume"], capsys)
    assert code == 2 and "no run directory" in err


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


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_best(data_dir, tmp_path, monkeypatch):
    from protloc.models.gapnet_pl import GapNetPL
    from protloc.training.run import train

    original = GapNetPL.loss
    calls = {"n": 0}
    steps_per_epoch = 5  # 18 training samples / batch 4

    def loss_going_nan(self, outputs, targets):
        calls["n"] += 1
        value = original(self, outputs, targets)
        return value * float("nan") if calls["n"] > steps_per_epoch + 1 else value

    monkeypatch.setattr(GapNetPL, "loss", loss_going_nan)
    run = tmp_path / "nan"
    result = train(tiny_config(data_dir, run, epochs=3))
    assert result.status == "nan-loss"
    assert "loss became nan at epoch 2" in result.message and "best checkpoint kept (epoch 1" in result.message
    assert len(read_metrics(run)) == 1
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "model.pt").is_file()
    for value in network_state(run / "checkpoints" / "last.ckpt").values():
        assert torch.isfinite(value).all()


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


@pytest.mark.slow
def test_nan_validation_outputs_stop_the_run(data_dir, tmp_path, monkeypatch):
    from protloc.training.run import train
    from protloc.training.lightning_module import LocalizationModule

    original = LocalizationModule.validation_step

    def nan_in_epoch_2(self, batch, batch_idx):
        original(self, batch, batch_idx)
        if self.current_epoch == 1 and batch_idx == 0:
            position, probs, label = self._val_outputs[-1]
            self._val_outputs[-1] = (position, np.full_like(probs, np.nan), label)

    monkeypatch.setattr(LocalizationModule, "validation_step", nan_in_epoch_2)
    run = tmp_path / "nan-outputs"
    result = train(tiny_config(data_dir, run, epochs=3))
    assert result.status == "nan-loss"
    assert ("the network's outputs are NaN or infinite for 1 of 2 validation images at epoch 2" in result.message
            and "best checkpoint kept (epoch 1" in result.message), result.message
    assert [int(r["epoch"]) for r in read_metrics(run)] == [1]  # no row made of guessed outputs


@pytest.mark.slow
def test_undefined_f1_is_reported_as_undefined(data_dir, tmp_path, capsys):
    import shutil

    from protloc.data.splits import make_splits
    from protloc.training.run import train

    data = tmp_path / "data"
    shutil.copytree(data_dir, data, ignore=shutil.ignore_patterns(".protloc"))
    with (data / "labels.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    val_ids = set(make_splits([row[0] for row in rows[1:]], seed=0)["val"])
    assert val_ids
    with (data / "labels.csv").open("w", newline="") as handle:  # no validation image has a label
        csv.writer(handle).writerows([rows[0], *[[i, "" if i in val_ids else labels] for i, labels in rows[1:]]])
    run = tmp_path / "undefined"
    result = train(tiny_config(data, run, epochs=1, cache="none"))
    assert result.status == "completed" and "best val mean F1 undefined at epoch 1" in result.message
    assert read_metrics(run)[0]["val_mean_f1"] == "nan"
    err = capsys.readouterr().err
    assert "protloc: warning: validation mean F1 is undefined at epoch 1" in err


def run_cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


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
