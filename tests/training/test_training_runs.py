"""Training runs end to end on tiny synthetic data: the paper's protocol and its artefacts, evaluation of
the run, resume (in-process and after a SIGKILL), and the runs stopped by NaN losses or outputs."""

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

from protloc.training.config import TrainConfig

from tests.helpers.training import run_cli

EPOCHS = 2


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
